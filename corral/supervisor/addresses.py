"""Whether a listen address is reachable from this host only: the one rule behind the
HTTP server's TLS requirement, the gateway's, what `metrics_public` may open, and the
gateways an egress = "gateways" sandbox is relayed to."""

from __future__ import annotations

import ipaddress


def loopback(host: str) -> bool:
    """A loopback IP, or `localhost`; a name that may resolve to anything is not."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def local_listen(listen: str | None) -> bool:
    """A listen address (`HOST:PORT` or `unix:PATH`) only this host reaches."""
    if listen is None:
        return False
    if listen.startswith("unix:"):
        return True
    return loopback(listen.rpartition(":")[0].strip("[]"))
