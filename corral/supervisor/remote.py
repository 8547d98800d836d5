"""A remote MCP server (`url = ...`) supervised like a local one: a connection (mcp/http.py)
takes the process's place in the same lifecycle; connecting and the handshake are
Starting, a session that ends is an exit. aiohttp is imported only when one starts.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from .. import redact
from ..text import plural
from .config import MIB, ConfigError, McpServerSpec, expand
from .lifecycle import Cause
from .mcpserver import McpHost, McpServerReplica

if TYPE_CHECKING:
    from ..mcp.http import HttpTransport
    from ..mcp.oauth import OAuthSettings


class RemoteMcpServer(McpServerReplica):
    handshake = "the MCP handshake"
    garbage_is = "a message"

    def __init__(self, host: McpHost, spec: McpServerSpec, name: str, index: int,
                 owner: str | None = None) -> None:
        super().__init__(host, spec, name, index, owner)
        self.transport: HttpTransport | None = None
        self._ended: asyncio.Future[str] | None = None

    async def _lifetime(self) -> None:
        spec = self.spec
        assert spec.url is not None
        loop = asyncio.get_running_loop()
        ended: asyncio.Future[str] = loop.create_future()
        self._ended = ended
        try:
            transport = self._connect(spec.url, ended)
        except ConfigError as exc:
            self._end_life(f"cannot connect: {exc}", None, clean=False, uptime=0.0,
                           told=False)
            return
        self.spawned_at = time.monotonic()
        if self.machine.leaving:  # stopped while setting up
            _end(ended, self.machine.down_reason or "stopped")
        init = asyncio.ensure_future(self._initialize())
        try:
            reason = await asyncio.shield(ended)
        finally:
            init.cancel()
        await transport.close()
        self.transport = None
        self._end_life(reason, None, clean=False, uptime=self._uptime_now())

    def _connect(self, url: str, ended: asyncio.Future[str]) -> HttpTransport:
        from ..mcp.http import HttpTransport  # aiohttp: only when a remote server runs
        spec = self.spec
        headers = {}
        for key, value in spec.headers.items():
            try:
                headers[key] = expand(value)
            except ConfigError as exc:
                raise ConfigError(f"headers.{key}: {exc}") from None
        auth = None
        if spec.auth == "oauth":
            from ..mcp.oauth import OAuth

            if self.host.state_dir is None:
                raise ConfigError('auth = "oauth" needs a state directory for its tokens')
            auth = OAuth.for_server(spec.name, url, oauth_settings(spec), self.host.state_dir)
        client = self.client = self._new_client()

        def lost(reason: str) -> None:
            self.executor.fire(Cause.UNHEALTHY, reason)
            _end(ended, reason)

        transport = HttpTransport(self.label, url, feed=self._feed, on_lost=lost,
                                  headers=headers, auth=auth,
                                  connect_timeout=spec.start_timeout,
                                  sse_only=spec.transport == "sse",
                                  max_message=spec.max_message_mb * MIB,
                                  param_headers=client.param_headers)
        self.transport = transport
        self.peer = client.make_peer(transport.send, on_garbage=self._on_garbage)
        client.network = "tcp"
        return transport

    def _feed(self, data: bytes) -> None:
        self._heard = True  # any message is a sign of life, as a process's line is
        if self.peer is not None:
            self.peer.feed_line(data)

    def _shut_down(self, reason: str, *, graceful: bool) -> None:
        if self._ended is not None:
            _end(self._ended, reason)

    def exit_message(self, reason: str) -> str:
        return f"MCP server {self.label} disconnected: {reason}"

    @property
    def pings(self) -> bool:
        # a stateless server is asked too (server/discover): a remote one that went away
        # is otherwise seen only at the next call, and `corral status` would say ready
        return True

    async def _handshake(self) -> str:
        await super()._handshake()
        t = self.transport
        kind = "HTTP+SSE" if t is not None and t.legacy else "Streamable HTTP"
        where = redact.url(self.spec.url or "")  # its password is the operator's
        return (f"connected to {where} ({kind}, MCP {self.client.version}, "
                f"{plural(len(self.client.tools), 'tool')})")


def oauth_settings(spec: McpServerSpec) -> OAuthSettings:
    from ..mcp.oauth import OAuthSettings

    secret = spec.oauth_client_secret
    return OAuthSettings(client_id=spec.oauth_client_id,
                         client_secret=expand(secret) if secret is not None else None,
                         scopes=list(spec.oauth_scopes), grant=spec.oauth_grant)


def _end(fut: asyncio.Future[str], reason: str) -> None:
    if not fut.done():
        fut.set_result(reason)
