"""Remote A2A agents as gateway tools: `[a2a_agents.NAME]` is the tool `a2a__NAME`.

One stdio MCP server (`python -m corral.mcp.a2atool`, spoken by the gateway's own session:
mcp/server.py) that the pool supervises like any other, so a call of a remote agent is
judged, journaled, budgeted and replayed as every tool call is (DESIGN 29): nothing here
decides who may call what. A call sends one A2A message (JSON-RPC binding, spec v1.0) and
waits for the remote task to settle.

A call's idempotency key (its `_meta`, mcp/client.py) is the message's `messageId` and
names its context: a retried attempt finds the task the first one started (ListTasks of
that context) and waits for it, rather than sending the message again.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from ..jsonrpc import METHOD_NOT_FOUND, RpcError
from ..timeouts import within
from .client import IDEMPOTENCY_META
from .logrelay import LogRelay
from .server import GatewaySession, Progress, StdioTransport

VERSION = "1.0"
TERMINAL = {"TASK_STATE_COMPLETED", "TASK_STATE_FAILED", "TASK_STATE_CANCELED",
            "TASK_STATE_REJECTED"}
# the remote waits for its caller: the tool call ends and says what it waits for
INTERRUPTED = {"TASK_STATE_INPUT_REQUIRED", "TASK_STATE_AUTH_REQUIRED"}
FAILED = {"TASK_STATE_FAILED", "TASK_STATE_CANCELED", "TASK_STATE_REJECTED"}
# a remote task not settled when a blocking send returns: asked again after these waits
POLL_WAITS = (0.2, 0.5, 1.0, 2.0, 5.0)
CARD_TIMEOUT = 10.0  # seconds: a card is one small GET; a listing waits for no more
MAX_ANSWER = 16 << 20  # bytes of a remote's answer (the gateway's bound on a server's line)
INPUT_SCHEMA = {
    "type": "object",
    "properties": {
        "message": {"type": "string", "description": "the text sent to the agent"},
        "data": {"type": "object", "description": "structured input, sent as a data part"},
        "task_id": {"type": "string",
                    "description": "the remote task to continue (one that asked for input)"},
        "context_id": {"type": "string", "description": "the remote conversation to join"},
    },
    "required": ["message"],
    "additionalProperties": False,
}


class RemoteError(Exception):
    """The remote agent's answer is no answer: said to the caller as the tool's error."""


class RemoteAgent:
    """One `[a2a_agents.NAME]`: its card read once, its JSON-RPC interface called."""

    def __init__(self, name: str, url: str, token_file: str | None, timeout: float,
                 description: str) -> None:
        self.name = name
        self.url = url.rstrip("/")
        self.token_file = token_file
        self.timeout = timeout
        self.description = description
        self._endpoint: str | None = None

    def _headers(self) -> dict[str, str]:
        headers = {"A2A-Version": VERSION, "Content-Type": "application/json"}
        if self.token_file:
            # read at each call: a rotated token is used without a restart
            headers["Authorization"] = "Bearer " + Path(self.token_file).read_text().strip()
        return headers

    async def card(self, http: aiohttp.ClientSession) -> dict[str, Any]:
        async with http.get(f"{self.url}/.well-known/agent-card.json",
                            headers=self._headers(), allow_redirects=False,
                            timeout=aiohttp.ClientTimeout(total=CARD_TIMEOUT)) as resp:
            if resp.status != 200:
                raise RemoteError(f"{self.name}: its agent card answered HTTP {resp.status}")
            card: dict[str, Any] = json.loads(await self._read(resp, "its agent card"))
        return card

    async def _read(self, resp: aiohttp.ClientResponse, what: str) -> str:
        """The answer's text; RemoteError past MAX_ANSWER, the rest unread."""
        if resp.content_length is not None and resp.content_length > MAX_ANSWER:
            raise RemoteError(f"{self.name}: {what} answered more than {MAX_ANSWER} bytes")
        chunks: list[bytes] = []
        size = 0
        async for chunk in resp.content.iter_any():
            size += len(chunk)
            if size > MAX_ANSWER:
                raise RemoteError(f"{self.name}: {what} answered more than {MAX_ANSWER} "
                                  "bytes")
            chunks.append(chunk)
        return b"".join(chunks).decode("utf-8", "replace")

    async def endpoint(self, http: aiohttp.ClientSession) -> str:
        if self._endpoint is None:
            card = await self.card(http)
            for face in card.get("supportedInterfaces") or []:
                if isinstance(face, dict) and face.get("protocolBinding") == "JSONRPC":
                    url = str(face.get("url") or self.url)
                    if _origin(url) != _origin(self.url):
                        # (the card is the remote's word: no way to another host, or a
                        # service of the daemon's own network, with the remote's token)
                        raise RemoteError(f"{self.name}: its agent card names its JSONRPC "
                                          f"interface at {url[:200]!r}, not at {self.url}, "
                                          "the origin its [a2a_agents] url names: not "
                                          "called")
                    self._endpoint = url
                    break
            else:
                raise RemoteError(f"{self.name}: its agent card declares no JSONRPC "
                                  f"interface")
        return self._endpoint

    async def rpc(self, http: aiohttp.ClientSession, method: str,
                  params: dict[str, Any]) -> Any:
        body = {"jsonrpc": "2.0", "id": uuid.uuid4().hex, "method": method, "params": params}
        async with http.post(await self.endpoint(http), data=json.dumps(body),
                             headers=self._headers(), allow_redirects=False) as resp:
            text = await self._read(resp, method)
            try:
                answer = json.loads(text)
            except ValueError:
                raise RemoteError(f"{self.name}: {method} answered HTTP {resp.status}, not "
                                  f"JSON-RPC: {text[:200]!r}") from None
        if not isinstance(answer, dict):
            raise RemoteError(f"{self.name}: {method} answered {text[:200]!r}")
        if "error" in answer:
            err = answer["error"] if isinstance(answer["error"], dict) else {}
            raise RemoteError(f"{self.name}: {method}: {err.get('message', answer['error'])} "
                              f"(code {err.get('code')})")
        return answer.get("result")

    async def find(self, http: aiohttp.ClientSession, context: str,
                   key: str) -> dict[str, Any] | None:
        """The task an earlier attempt of this call started, if the remote has it."""
        try:
            listed = await self.rpc(http, "ListTasks", {"contextId": context, "historyLength": 1})
        except RemoteError:
            # a remote that lists no tasks: an attempt cannot be told from a first one
            return None
        for task in (listed or {}).get("tasks") or []:
            history = task.get("history") or []
            if not history or history[0].get("messageId") == key:
                # whole (a listing may leave the artifacts out)
                found: dict[str, Any] = await self.rpc(http, "GetTask", {"id": task["id"]})
                return found
        return None

    async def call(self, http: aiohttp.ClientSession, arguments: dict[str, Any],
                   key: str | None) -> dict[str, Any]:
        message_id = key or uuid.uuid4().hex
        context = arguments.get("context_id")
        if context is None and key is not None:
            context = "corral-" + hashlib.sha256(key.encode()).hexdigest()[:32]
        task = await self.find(http, context, message_id) if key and context else None
        if task is None:
            parts: list[dict[str, Any]] = [{"text": str(arguments.get("message", ""))}]
            if isinstance(arguments.get("data"), dict):
                parts.append({"data": arguments["data"], "mediaType": "application/json"})
            message: dict[str, Any] = {"messageId": message_id, "role": "ROLE_USER",
                                       "parts": parts}
            if context:
                message["contextId"] = context
            if arguments.get("task_id"):
                message["taskId"] = arguments["task_id"]
            result = await self.rpc(http, "SendMessage", {"message": message})
            if isinstance(result, dict) and "message" in result:
                return {"message": result["message"]}
            task = (result or {}).get("task")
            if not isinstance(task, dict):
                raise RemoteError(f"{self.name}: SendMessage answered neither a task nor a "
                                  f"message")
        return {"task": await self._settled(http, task)}

    async def _settled(self, http: aiohttp.ClientSession,
                       task: dict[str, Any]) -> dict[str, Any]:
        waits = iter(POLL_WAITS)
        while _state(task) not in TERMINAL | INTERRUPTED:
            # a blocking send may return early (the remote's own limit), and a found task
            # may still run: its state asked again, at growing intervals
            await asyncio.sleep(next(waits, POLL_WAITS[-1]))
            task = await self.rpc(http, "GetTask", {"id": task["id"]})
        return task


def _origin(url: str) -> tuple[str, str, int | None]:
    """A URL's scheme, host and port (its scheme's default where it names none)."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:  # (a port out of range: no origin's)
        return scheme, "", None
    return scheme, (parts.hostname or "").lower(), port or {"http": 80, "https": 443}.get(
        scheme)


def _state(task: dict[str, Any]) -> str:
    return str((task.get("status") or {}).get("state", ""))


def _text(parts: list[dict[str, Any]]) -> list[str]:
    return [p["text"] if "text" in p else json.dumps(p["data"]) if "data" in p
            else str(p.get("url", "")) for p in parts if isinstance(p, dict)]


def tool_result(got: dict[str, Any]) -> dict[str, Any]:
    """An A2A answer as an MCP tool result: the text of its parts, and the whole of it."""
    if "message" in got:
        texts = _text(got["message"].get("parts") or [])
        return {"content": [{"type": "text", "text": t} for t in texts],
                "structuredContent": {"message": got["message"]}, "isError": False}
    task = got["task"]
    texts = [t for art in task.get("artifacts") or [] for t in _text(art.get("parts") or [])]
    status = task.get("status") or {}
    state = _state(task)
    if state in INTERRUPTED or state in FAILED or not texts:
        said = _text((status.get("message") or {}).get("parts") or [])
        texts += [f"{state}: {' '.join(said)}".strip()]
    return {"content": [{"type": "text", "text": t} for t in texts],
            "structuredContent": {"task_id": task.get("id"), "context_id":
                                  task.get("contextId"), "state": state,
                                  "artifacts": task.get("artifacts") or []},
            "isError": state in FAILED}


class Server:
    """The MCP side: mcp/server.py's session over this process's stdio (`serve`), whose
    backend this is; its one feature the remote agents' tools."""

    features = frozenset({"tools"})

    def __init__(self, agents: dict[str, RemoteAgent]) -> None:
        self.agents = agents
        self.http: aiohttp.ClientSession | None = None

    async def list_items(self, kind: str) -> list[dict[str, Any]]:
        assert self.http is not None
        listed = []
        for name, agent in self.agents.items():
            description = agent.description
            if not description:
                try:
                    card = await agent.card(self.http)
                    description = str(card.get("description") or card.get("name") or "")
                except (TimeoutError, RemoteError, aiohttp.ClientError, ValueError):
                    description = ""
            listed.append({"name": name, "description": description or
                           f"the remote A2A agent {name} at {agent.url}",
                           "inputSchema": INPUT_SCHEMA})
        return listed

    async def forward(self, method: str, params: dict[str, Any], on_progress: Progress | None,
                      on_log: LogRelay | None = None) -> dict[str, Any]:
        """A tools/call (the one request the session forwards for "tools")."""
        assert self.http is not None
        name = params.get("name")
        agent = self.agents.get(name) if isinstance(name, str) else None
        try:
            if agent is None:
                raise RemoteError(f"no remote A2A agent named {name!r}")
            meta = params.get("_meta") or {}
            key = meta.get(IDEMPOTENCY_META) if isinstance(meta, dict) else None
            arguments = params.get("arguments") or {}
            got = await within(agent.call(self.http, arguments,
                                          key if isinstance(key, str) else None),
                               agent.timeout)
            return tool_result(got)
        except (RemoteError, aiohttp.ClientError, OSError, ValueError) as exc:
            return {"content": [{"type": "text", "text": str(exc) or type(exc).__name__}],
                    "isError": True}
        except (KeyError, TypeError, AttributeError, IndexError) as exc:
            # an answer read as A2A's that is not: said at once (uncaught, the call was
            # never answered, its agent waiting out its tool's timeout)
            return {"content": [{"type": "text", "text": f"{name}: it answered what A2A "
                                 f"does not ({type(exc).__name__}: {exc})"}],
                    "isError": True}
        except TimeoutError:
            return {"content": [{"type": "text", "text": f"{name}: no answer within "
                                 f"{agent.timeout if agent else 0:g} s"}], "isError": True}

    # (no "tasks" nor "subscriptions" feature: the session asks none of these)
    async def task(self, method: str, params: dict[str, Any]) -> Any:
        raise RpcError(METHOD_NOT_FOUND, f"method not found: {method}")

    async def subscribe(self, uri: str, on_update: Callable[[str], None]) -> None:
        raise RpcError(METHOD_NOT_FOUND, "method not found: resources/subscribe")

    async def unsubscribe(self, uri: str) -> None:
        raise RpcError(METHOD_NOT_FOUND, "method not found: resources/unsubscribe")

    async def serve(self) -> None:
        out = sys.stdout.buffer

        def write(data: bytes) -> None:
            out.write(data)
            out.flush()

        session = GatewaySession(self)
        ended = asyncio.Event()
        await asyncio.get_running_loop().connect_read_pipe(
            lambda: StdioTransport(session, write, ended.set), sys.stdin)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as http:
            self.http = http
            await ended.wait()
            session.close()  # (its calls in flight cancelled)


def agents_of(text: str) -> dict[str, RemoteAgent]:
    """The agents of the table supervisor/a2aagents.py gives as this server's argument."""
    table = json.loads(text)
    return {name: RemoteAgent(name, spec["url"], spec.get("token_file"),
                              float(spec.get("timeout", 300.0)), spec.get("description", ""))
            for name, spec in table.items()}


def main() -> None:
    asyncio.run(Server(agents_of(sys.argv[1] if len(sys.argv) > 1 else "{}")).serve())


if __name__ == "__main__":
    main()
