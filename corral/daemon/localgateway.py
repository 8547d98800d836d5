"""The MCP gateway's local site: `/mcp` on a unix socket beside the control socket,
`corral mcp serve`'s way in (decision 1580). A caller is identified as the control
socket identifies one, by its peer credentials: whoever may use the control socket may
use this one, as the same caller, and nobody else; a token or an agent it names only
narrows what it sees. aiohttp is imported at the first connection, not at the daemon's
start (a daemon no `corral mcp serve` reaches never pays its import).
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import msgspec

from .. import jsonrpc
from ..jsonrpc import RpcError
from .caller import Caller

if TYPE_CHECKING:
    from .control import ControlServer
    from .gatewayaccess import GatewayService, Identity
    from .handoff import Listeners

NAME = "gateway-local"  # its socket's name among those `corral upgrade` hands over
BACKLOG = 128


class Site(Protocol):
    """What serves the socket once a client comes (http/mcp.py's HttpGateway)."""

    async def serve_local(self, sock: socket.socket, local: LocalGateway) -> None: ...


def local_socket(control: Path) -> Path:
    """The local site's socket, beside the control socket (`corral mcp serve` finds it
    from the control socket's path alone)."""
    return Path(f"{control}.mcp")


class LocalGateway:
    """The socket, bound at start; served by an HttpGateway (`made`: the daemon's own,
    or one made for it alone) once a client first connects."""

    def __init__(self, path: Path, control: ControlServer, service: GatewayService,
                 listeners: Listeners, made: Callable[[], Site]) -> None:
        self.path = path
        self.control = control
        self.service = service
        self.listeners = listeners
        self.made = made
        self.sock: socket.socket | None = None
        self._serving: asyncio.Task[None] | None = None

    async def start(self) -> None:
        sock = self.listeners.take(NAME, str(self.path))
        if sock is None:
            # the control socket's lock is held: a socket file here is stale
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            old_umask = os.umask(0o117)  # born 0660, never briefly wider
            try:
                self.path.unlink(missing_ok=True)
                sock.bind(str(self.path))
            except OSError:
                sock.close()
                raise
            finally:
                os.umask(old_umask)
            sock.listen(BACKLOG)
            sock.setblocking(False)
        self.sock = sock
        self.control.share(self.path)
        asyncio.get_running_loop().add_reader(sock.fileno(), self._first)

    def _first(self) -> None:
        assert self.sock is not None
        asyncio.get_running_loop().remove_reader(self.sock.fileno())
        self._serving = asyncio.ensure_future(self._serve(self.sock))

    async def _serve(self, sock: socket.socket) -> None:
        await self.made().serve_local(sock, self)

    async def close(self) -> None:
        if self._serving is not None:
            await self._serving
        elif self.sock is not None:
            asyncio.get_running_loop().remove_reader(self.sock.fileno())
            self.sock.close()
            self.path.unlink(missing_ok=True)

    def identify(self, transport: Any, agent: str | None, token: str | None) -> Identity:
        """The client of a request on this socket: its peer's caller (refused as the
        control socket refuses it), as itself (the operator), as one of the agents it
        sees, or as a gateway token; a tenant's peer is one of its agents."""
        sock = transport.get_extra_info("socket")
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        pid, uid, gid = struct.unpack("3i", creds)
        tenant = self.control.tenant_of(uid, gid)  # (two tenants' peer: refused)
        if not self.control.authorized(uid, gid):
            self.control.report(f"refused gateway connection from uid {uid} pid {pid}",
                                "audit")
            raise RpcError(jsonrpc.UNAUTHORIZED, f"unauthorized: uid {uid} may not use "
                                                 f"this socket")
        caller = Caller(via="socket", uid=uid, gid=gid, pid=pid, tenant=tenant)
        if tenant is not None and (agent is None or token is not None):
            raise RpcError(jsonrpc.FORBIDDEN, f"forbidden: {caller.who} is a caller of "
                                              f"tenant {tenant}: a gateway client of its "
                                              "own is one of its agents (agent, not token)")
        if tenant is not None:  # (its words name no other tenant's agents)
            own = self.service.agents.get(agent or "")
            if own is None or own.spec.tenant != tenant:
                raise jsonrpc.not_found("agent", agent or "")
        ident = self.service.identify(agent=agent, token=token)
        return msgspec.structs.replace(ident, who=(uid, pid))

