"""The daemon's HTTP server: one aiohttp runner, a site per listen address, mounting the
REST API (`/api/v1`), Prometheus (`/metrics`), the dashboard (`/ui`), `/healthz` and
`/readyz`. Every route that runs a control method calls the one Dispatcher (daemon/api.py).
"""
