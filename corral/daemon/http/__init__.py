"""The daemon's HTTP server: the REST API (`/api/v1`), `/metrics`, the dashboard (`/ui`),
`/healthz` and `/readyz`, every control method called on the one Dispatcher."""
