"""`egress_allow` on `[mcp_servers.NAME]` (issue 88): the addresses a server whose egress
is "none" may reach besides nothing, each `IP:PORT` (`[IPv6]:PORT`). An address, not a
name: its sandbox has no resolver, and the daemon listens at that very address in the
server's namespace (egressdoors.py), passing each connection on to it."""

from __future__ import annotations

import ipaddress


def allowed(entries: list[str]) -> list[tuple[str, int]]:
    """(address, port) of each entry; ValueError naming the first that is not one."""
    out: list[tuple[str, int]] = []
    for entry in entries:
        host, _, port = entry.rpartition(":")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        try:
            address = ipaddress.ip_address(host)
            number = int(port)
            fits = 0 < number < 65536 and (address.version == 6) == entry.startswith("[")
        except ValueError:
            fits = False
        if not fits:
            raise ValueError(f"egress_allow: {entry!r} is not IP:PORT (an address, not a "
                             "name: the sandbox has no resolver; [IPv6]:PORT)")
        out.append((str(address), number))
    return out
