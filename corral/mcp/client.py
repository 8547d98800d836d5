"""An MCP client on corral's JSON-RPC layer, over any transport.

The transport seam: the client speaks through a `jsonrpc.Peer` (`make_peer`) whose `send`
is the transport's write and whose `feed_line` the transport calls with every message from
the server. For a supervised stdio server that is the process's stdin/stdout
(supervisor/mcpserver.py); for a remote server it is `mcp/http.py` (Streamable HTTP or the
legacy HTTP+SSE transport), which also needs the negotiated revision for its
`MCP-Protocol-Version` header: `on_version` tells it.

Lifecycle, per revision:
- 2026-07-28 (stateless): `server/discover` first; every request then carries
  `_meta` with the protocol version and client capabilities; there is no ping.
- 2024-11-05 … 2025-11-25: `initialize` with version negotiation, then
  `notifications/initialized`.
A server that errors on `server/discover`, or does not answer it in time, is spoken to
with `initialize`, as the 2026-07-28 revision prescribes for stdio. A server that answers
with a version corral does not speak is refused with a clear error.

Tool results are returned as the server sent them (`content`, `isError`,
`structuredContent`, …).
"""

from __future__ import annotations

import itertools
import logging
import re
from collections.abc import Callable
from typing import Any

from .. import __version__, jsonrpc
from ..jsonrpc import Peer, RpcError

log = logging.getLogger("corral.mcp")

STATELESS = "2026-07-28"
LEGACY = ("2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05")  # newest first
SUPPORTED = (STATELESS, *LEGACY)
META_VERSION = "io.modelcontextprotocol/protocolVersion"
META_CAPABILITIES = "io.modelcontextprotocol/clientCapabilities"
META_CLIENT = "io.modelcontextprotocol/clientInfo"
CLIENT_INFO = {"name": "corral", "version": __version__}
DISCOVER_TIMEOUT = 2.0
MAX_PAGES = 1000
# the spec's tool-name rule; "__" is refused too, as corral's SERVER__TOOL separator
TOOL_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,128}$")

ProgressCallback = Callable[[dict[str, Any]], None]


class UnsupportedVersion(RpcError):
    def __init__(self, message: str) -> None:
        super().__init__(jsonrpc.UNSUPPORTED_VERSION, message)


def cancel_params(rid: jsonrpc.Id) -> dict[str, Any]:
    return {"requestId": rid, "reason": "timed out or cancelled by corral"}


class McpClient:
    """Speaks MCP to one server over a Peer the owner feeds with the server's stdout.

    Create the Peer with `dispatch=client.on_request`,
    `on_notification=client.on_notification`, `cancel_method="notifications/cancelled"`
    and `cancel_params=cancel_params` (see `make_peer`)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.peer: Peer | None = None
        self.version: str | None = None
        self.capabilities: dict[str, Any] = {}
        self.server_info: dict[str, Any] = {}
        self.tools: list[dict[str, Any]] = []
        self.rejected_tools: list[str] = []
        self.calls = 0
        self.errors = 0
        self._tokens = itertools.count(1)
        self._progress: dict[Any, ProgressCallback] = {}
        self.on_tools_changed: Callable[[], None] | None = None
        self.on_log: Callable[[str], None] | None = None
        # told the negotiated protocol version (an HTTP transport sends it as a header)
        self.on_version: Callable[[str], None] | None = None

    def make_peer(self, send: Callable[[bytes], None], **kw: Any) -> Peer:
        self.peer = Peer(
            f"MCP server {self.name}", send, dispatch=self.on_request,
            on_notification=self.on_notification, cancel_method="notifications/cancelled",
            cancel_params=cancel_params, **kw)
        return self.peer

    @property
    def stateless(self) -> bool:
        return self.version == STATELESS

    def _meta(self) -> dict[str, Any]:
        return {META_VERSION: STATELESS, META_CAPABILITIES: {}, META_CLIENT: CLIENT_INFO}

    def _with_meta(self, params: dict[str, Any]) -> dict[str, Any]:
        if self.stateless:
            meta = dict(params.get("_meta") or {})
            meta.update(self._meta())
            params = {**params, "_meta": meta}
        return params

    # -- lifecycle ------------------------------------------------------------------------
    async def connect(self, timeout: float) -> str:
        """Negotiate a protocol version; returns it."""
        assert self.peer is not None
        try:
            found = await self.peer.request("server/discover", {"_meta": self._meta()},
                                            timeout=min(timeout, DISCOVER_TIMEOUT))
        except RpcError as exc:
            if exc.code == jsonrpc.PEER_CLOSED:
                raise
            found = None  # a legacy server: fall back to initialize
        if isinstance(found, dict) and isinstance(found.get("supportedVersions"), list):
            offered = [v for v in found["supportedVersions"] if isinstance(v, str)]
            if STATELESS in offered:
                self._negotiated(STATELESS)
                self.capabilities = found.get("capabilities") or {}
                self.server_info = (found.get("serverInfo")
                                    or (found.get("_meta") or {}).get(
                                        "io.modelcontextprotocol/serverInfo") or {})
                return STATELESS
            common = [v for v in LEGACY if v in offered]
            if not common:
                raise UnsupportedVersion(
                    f"MCP server {self.name} supports protocol versions {offered}, none of "
                    f"which corral speaks ({', '.join(SUPPORTED)})")
            return await self._initialize(common[0], timeout)
        return await self._initialize(LEGACY[0], timeout)

    async def _initialize(self, proposed: str, timeout: float) -> str:
        assert self.peer is not None
        result = await self.peer.request(
            "initialize",
            {"protocolVersion": proposed, "capabilities": {}, "clientInfo": CLIENT_INFO},
            timeout=timeout)
        answered = result.get("protocolVersion") if isinstance(result, dict) else None
        if answered not in LEGACY:
            raise UnsupportedVersion(
                f"MCP server {self.name} answered initialize with protocol version "
                f"{answered!r}, which corral does not speak ({', '.join(SUPPORTED)})")
        version: str = answered
        self._negotiated(version)
        self.capabilities = result.get("capabilities") or {}
        self.server_info = result.get("serverInfo") or {}
        self.peer.notify("notifications/initialized")
        return version

    def _negotiated(self, version: str) -> None:
        self.version = version
        if self.on_version is not None:
            self.on_version(version)

    async def ping(self, timeout: float) -> None:
        if self.stateless:
            return  # the stateless revision has no ping
        assert self.peer is not None
        await self.peer.request("ping", timeout=timeout)

    # -- tools ----------------------------------------------------------------------------
    async def list_tools(self, timeout: float) -> list[dict[str, Any]]:
        """All pages of tools/list; tools with names outside the spec are left out."""
        assert self.peer is not None
        tools: list[dict[str, Any]] = []
        rejected: list[str] = []
        cursor: str | None = None
        for _ in range(MAX_PAGES):
            params: dict[str, Any] = {} if cursor is None else {"cursor": cursor}
            page = await self.peer.request("tools/list", self._with_meta(params),
                                           timeout=timeout)
            if not isinstance(page, dict) or not isinstance(page.get("tools"), list):
                raise RpcError(jsonrpc.INVALID_REQUEST,
                               f"MCP server {self.name}: malformed tools/list result")
            for tool in page["tools"]:
                name = tool.get("name") if isinstance(tool, dict) else None
                if not isinstance(name, str) or not TOOL_NAME.match(name) or "__" in name:
                    rejected.append(repr(name))
                    continue
                tools.append(tool)
            cursor = page.get("nextCursor")
            if not cursor:
                break
        if rejected and self.on_log is not None:
            self.on_log(f"left out tools whose names break the MCP naming rule or contain "
                        f"'__': {', '.join(rejected)}")
        self.tools = tools
        self.rejected_tools = rejected
        return tools

    async def call_tool(self, name: str, arguments: dict[str, Any], *, timeout: float,
                        on_progress: ProgressCallback | None = None) -> Any:
        """tools/call; on timeout or cancellation `notifications/cancelled` is sent."""
        assert self.peer is not None
        token = next(self._tokens)
        params: dict[str, Any] = {"name": name, "arguments": arguments,
                                  "_meta": {"progressToken": token}}
        if on_progress is not None:
            self._progress[token] = on_progress
        self.calls += 1
        try:
            return await self.peer.request("tools/call", self._with_meta(params),
                                           timeout=timeout)
        except RpcError:
            self.errors += 1
            raise
        finally:
            self._progress.pop(token, None)

    # -- from the server ------------------------------------------------------------------
    def on_notification(self, method: str, raw: Any, peer: Peer) -> None:
        import msgspec

        try:
            params = msgspec.json.decode(raw) if raw is not msgspec.UNSET else {}
        except msgspec.DecodeError:
            return
        if method == "notifications/progress" and isinstance(params, dict):
            cb = self._progress.get(params.get("progressToken"))
            if cb is not None:
                cb({k: v for k, v in params.items() if k != "progressToken"})
        elif method == "notifications/tools/list_changed":
            if self.on_tools_changed is not None:
                self.on_tools_changed()
        elif method == "notifications/message" and self.on_log is not None:
            self.on_log(f"log {params.get('level', '')}: {params.get('data')!r}")

    def on_request(self, method: str, raw: Any, peer: Peer) -> Any:
        if method == "ping":
            return {}
        if method == "roots/list":
            return {"roots": []}
        raise RpcError(jsonrpc.METHOD_NOT_FOUND, f"method not found: {method}")

