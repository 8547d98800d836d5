"""The gateway's tasks: the MCP tasks extension (`io.modelcontextprotocol/tasks`, SEP-2663
as the conformance suite 0.2.0-alpha.12 reads it) over the pool and over corral's agents,
whose calls are corral tasks (docs/gateway.md#tasks). Handles are in the daemon's memory:
a restart loses them (an agent's corral task lives on).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Generic, NamedTuple, TypeVar

import msgspec

from .. import jsonrpc
from .. import methods as m
from ..jsonrpc import ErrorObject, RpcError
from ..mcp.client import IDEMPOTENCY_META
from ..supervisor.config import DEFAULT_TENANT
from ..taskoptions import MAX_IDEMPOTENCY_KEY
from ..text import iso_time, plural
from ..tracecontext import current_context
from .caller import AlwaysWritable, Caller, GatewayCaller

if TYPE_CHECKING:
    from ..supervisor.config import GatewaySettings
    from .api import Dispatcher

AGENTS_VIEW = "corral"  # /mcp/corral: the agents as tools (RESERVED: no server has it)
AGENTS_PREFIX = f"{AGENTS_VIEW}__"  # an agent's name as a tool at /mcp: corral__AGENT
POLL_MS = 500  # what a client is told to wait between two tasks/get
TASK_SCOPES = frozenset({"tasks:run", "tasks:read"})
ENDED = frozenset({"completed", "failed", "cancelled"})
# a corral task's end as the extension says it: ran and answered, ran and failed (a tool
# error: completed with isError, as SEP-2663 reserves `failed` for protocol errors)
SUCCEEDED = "succeeded"
# a client's ended handles kept (each holds its result until task_ttl): past either, the
# oldest ended is let go, its id remembered (at most KEEP_DROPPED of them) to say so
MAX_ENDED_PER_CLIENT = 64
MAX_ENDED_BYTES_PER_CLIENT = 8 * 1024 * 1024
KEEP_DROPPED = 4096


class OutputRelay(AlwaysWritable):
    """tasks.stream's channel for a gateway client's call of an agent: each chunk of live
    output a progress notification (MCP has no partial results of a tool call). Always
    writable: the gateway's stream to the client is bounded where written (http/mcp.py)."""

    def __init__(self, on_progress: Callable[[dict[str, Any]], None]) -> None:
        super().__init__()
        self.on_progress = on_progress
        self.sent = 0

    def notify(self, method: str, params: Any) -> None:
        if method == "tasks.output":
            self.sent += 1
            self.on_progress({"progress": self.sent, "message": params.data})


class Follows(NamedTuple):  # the corral task a handle follows
    agent: str
    task_id: str


class GatewayTask:
    def __init__(self, client: str, tenant: str | None, follows: Follows | None) -> None:
        self.id = secrets.token_urlsafe(12)
        self.client = client
        self.tenant = tenant
        self.follows = follows  # None: a call of the pool's the gateway holds
        self.created = self.updated = time.time()
        self.status = "working"
        self.result: Any = None
        self.error: ErrorObject | None = None
        self.runner: asyncio.Task[Any] | None = None
        self.size = 0  # its result's (or error's) bytes of JSON, once ended
        # while input_required: the server's requests not answered yet, and the answers
        self.asked: dict[str, Any] = {}
        self.answers: dict[str, Any] = {}
        self._answered = asyncio.Event()

    def view(self, ttl: float) -> dict[str, Any]:
        out: dict[str, Any] = {"taskId": self.id, "status": self.status,
                               "createdAt": iso_time(self.created, ms=True),
                               "lastUpdatedAt": iso_time(self.updated, ms=True),
                               "ttlMs": int(ttl * 1000), "pollIntervalMs": POLL_MS}
        if self.follows is not None:
            out["_meta"] = {"corral/task": self.follows.task_id}
        if self.status == "completed":
            out["result"] = self.result
        elif self.status == "failed":
            out["error"] = self.error
        elif self.status == "input_required":
            out["inputRequests"] = dict(self.asked)
        return out

    async def ask(self, requests: dict[str, Any], wait: float) -> dict[str, Any]:
        """Waits in `input_required` until every one of a server's `requests` is answered,
        at most `wait` seconds; the answers."""
        self.asked, self.answers = dict(requests), {}
        self._answered.clear()
        self.status, self.updated = "input_required", time.time()
        try:
            async with asyncio.timeout(wait):
                await self._answered.wait()
        except TimeoutError:
            raise RpcError(jsonrpc.REQUEST_TIMEOUT,
                           f"its server's input requests were not all answered within "
                           f"[gateway] input_wait {wait:g} s") from None
        finally:
            self.asked = {}
        return self.answers

    def answer(self, responses: dict[str, Any]) -> None:
        """Those of requests still pending are taken (any other is ignored, as the
        extension asks); once none is pending, the call goes on."""
        if self.status != "input_required":
            return
        for key in [k for k in responses if k in self.asked]:
            self.answers[key] = responses[key]
            del self.asked[key]
        if not self.asked:
            self.status, self.updated = "working", time.time()
            self._answered.set()

    def settle(self, runner: asyncio.Task[Any]) -> None:
        self.updated = time.time()
        if runner.cancelled():
            self.status = "cancelled"
            return
        exc = runner.exception()
        if exc is None:
            self.status, self.result = "completed", _plain(runner.result())
        elif isinstance(exc, RpcError):
            self.status, self.error = "failed", exc.to_object()
        else:
            self.status, self.error = "failed", RpcError(
                jsonrpc.INTERNAL_ERROR, f"internal error: {exc}").to_object()
        try:
            self.size = len(msgspec.json.encode(self.result if self.error is None
                                                else self.error))
        except (TypeError, msgspec.EncodeError):  # (not JSON: counted at nothing)
            self.size = 0


class TaskHandles:
    """Every client's handles, bounded per client and kept a while once ended."""

    def __init__(self, settings: Callable[[], GatewaySettings]) -> None:
        self.settings = settings  # read at each use: a reload changes the bounds
        self.handles: dict[str, GatewayTask] = {}
        # ended handles let go past a client's bounds: id -> (client, why)
        self.dropped: OrderedDict[str, tuple[str, str]] = OrderedDict()

    def open(self, ident: GatewayCaller, follows: Follows | None,
             work: Callable[[GatewayTask], Coroutine[Any, Any, Any]]) -> dict[str, Any]:
        """A handle for `work(handle)`, running from now on: its CreateTaskResult."""
        self.room(ident)
        handle = GatewayTask(ident.name, ident.tenant, follows)
        handle.runner = asyncio.ensure_future(work(handle))
        handle.runner.add_done_callback(handle.settle)
        handle.runner.add_done_callback(lambda _: self._trim(handle.client))
        self.handles[handle.id] = handle
        return {**handle.view(self.settings().task_ttl), "resultType": "task"}

    def room(self, ident: GatewayCaller) -> None:
        self._expire()
        bound = self.settings().max_tasks_per_client
        live = sum(1 for h in self.handles.values()
                   if h.client == ident.name and h.status not in ENDED)
        if live >= bound:
            raise RpcError(jsonrpc.REFUSED,
                           f"gateway client {ident.name} has {plural(live, 'task')} not "
                           f"ended, its max_tasks_per_client {bound}: wait for one to end "
                           "or cancel one")

    def find(self, ident: GatewayCaller, params: dict[str, Any]) -> GatewayTask:
        self._expire()
        tid = params.get("taskId")
        if not isinstance(tid, str):
            raise RpcError(jsonrpc.INVALID_PARAMS, "invalid params: a taskId is needed")
        handle = self.handles.get(tid)
        gone = self.dropped.get(tid)
        if handle is None and gone is not None and gone[0] == ident.name:
            raise RpcError(jsonrpc.INVALID_PARAMS,
                           f"invalid params: task {tid} of this client ended and was let "
                           f"go: {gone[1]}", {"taskId": tid})
        if handle is None or not _sees(ident, handle):
            raise RpcError(jsonrpc.INVALID_PARAMS, f"invalid params: no task {tid} of this "
                                                   "client", {"taskId": tid})
        return handle

    def get(self, ident: GatewayCaller, params: dict[str, Any]) -> dict[str, Any]:
        return {**self.find(ident, params).view(self.settings().task_ttl),
                "resultType": "complete"}

    def cancel(self, ident: GatewayCaller, params: dict[str, Any]) -> dict[str, Any]:
        handle = self.find(ident, params)
        if handle.runner is not None and not handle.runner.done():
            handle.runner.cancel()
        return {"resultType": "complete"}

    def update(self, ident: GatewayCaller, params: dict[str, Any]) -> dict[str, Any]:
        handle = self.find(ident, params)
        responses = params.get("inputResponses")
        if not isinstance(responses, dict):
            raise RpcError(jsonrpc.INVALID_PARAMS,
                           "invalid params: tasks/update needs inputResponses, an object")
        handle.answer(responses)
        return {"resultType": "complete"}

    def close(self) -> None:
        """Calls the gateway holds end (an agent's task is journaled and lives on)."""
        for h in self.handles.values():
            if h.runner is not None:
                h.runner.cancel()

    def _trim(self, client: str) -> None:
        """The oldest ended let go first (the newest is kept whatever its size, for its
        client to read once)."""
        ended = sorted((h for h in self.handles.values()
                        if h.client == client and h.status in ENDED),
                       key=lambda h: h.updated)
        held = sum(h.size for h in ended)
        while len(ended) > 1 and (len(ended) > MAX_ENDED_PER_CLIENT or
                                  held > MAX_ENDED_BYTES_PER_CLIENT):
            oldest = ended.pop(0)
            why = (f"its client's ended tasks past MAX_ENDED_PER_CLIENT "
                   f"({MAX_ENDED_PER_CLIENT})" if len(ended) + 1 > MAX_ENDED_PER_CLIENT
                   else f"its client's ended tasks' results past "
                        f"MAX_ENDED_BYTES_PER_CLIENT ({MAX_ENDED_BYTES_PER_CLIENT} bytes)")
            held -= oldest.size
            del self.handles[oldest.id]
            self.dropped[oldest.id] = (client, why)
            if len(self.dropped) > KEEP_DROPPED:
                self.dropped.popitem(last=False)

    def _expire(self) -> None:
        gone = time.time() - self.settings().task_ttl
        for tid in [t for t, h in self.handles.items()
                    if h.status in ENDED and h.updated < gone]:
            del self.handles[tid]


def _sees(ident: GatewayCaller, handle: GatewayTask) -> bool:
    if handle.client == ident.name:
        return True
    agent = handle.follows.agent if handle.follows is not None else ""
    return ident.tenant is not None and caller_of(ident).sees_record(agent, handle.tenant)


def agents_called(ident: GatewayCaller, method: str, params: dict[str, Any]
                  ) -> dict[str, Any] | None:
    """The params of a call of the agents' view: at /mcp/corral, or a replica's tools/call
    of `corral__AGENT` at /mcp, served as at /mcp/corral (decision 1806); None: neither."""
    if ident.server == AGENTS_VIEW:
        return params
    name = params.get("name")
    if ident.server is not None or ident.replica is None or method != "tools/call" or \
            not isinstance(name, str) or not name.startswith(AGENTS_PREFIX):
        return None
    return {**params, "name": name[len(AGENTS_PREFIX):]}


def caller_of(ident: GatewayCaller) -> Caller:
    """The client as the Dispatcher sees it: its tenant's (a client of no tenant that is
    not the operator's is the default tenant's, never every tenant's), its API token's
    agent glob kept, holding what running and reading tasks needs."""
    tenant = ident.tenant if ident.tenant is not None or ident.operator \
        else DEFAULT_TENANT
    return Caller(via="gateway", name=f"gateway client {ident.name}", tenant=tenant,
                  scopes=TASK_SCOPES, agents=ident.agents, since=ident.since)


def _plain(result: Any) -> Any:
    if isinstance(result, msgspec.Raw):
        result = msgspec.json.decode(result)
    if isinstance(result, dict):
        # a result the gateway inlines: the task's id is the handle's own
        meta = result.get("_meta")
        if isinstance(meta, dict) and "io.modelcontextprotocol/related-task" in meta:
            result = {**result, "_meta": {k: v for k, v in meta.items()
                                          if k != "io.modelcontextprotocol/related-task"}}
        result.pop("resultType", None)
    return result


Client = TypeVar("Client", bound=GatewayCaller)


class AgentTools(Generic[Client]):
    """corral's agents as tools (at /mcp/corral), each call a corral task."""

    def __init__(self, calls: Dispatcher[Any] | None, agents: Callable[[], list[Any]],
                 in_view: Callable[[Client, str], bool]) -> None:
        """`in_view`: the chain's view link's verdict on a call of the agent by the
        caller (chain.py `Chain.refused`), read for the listing: it lists what its view
        would admit, and judges no call itself (decision 1690)."""
        self.calls = calls  # None: a gateway without the daemon's methods (a test's)
        self.agents = agents
        self.in_view = in_view

    def listed(self, ident: Client) -> list[dict[str, Any]]:
        if self.calls is None:
            return []
        caller = self.calls.bind(caller_of(ident))
        return [{"name": a.name,
                 "description": f"corral agent {a.name}: the arguments are its task's "
                 "input",
                 "inputSchema": {"type": "object"},
                 "execution": {"taskSupport": "optional"}}
                for a in self.agents()
                if caller.sees(a.name) and self.in_view(ident, a.name)]

    async def submit(self, ident: GatewayCaller, agent: str, arguments: dict[str, Any],
                     key: str | None = None) -> str:
        """The corral task of a call, accepted (durable) before the handle is given;
        `key`: its idempotency key (the same call sent again is that task)."""
        if self.calls is None:  # (a test's gateway: no task to submit)
            raise RpcError(jsonrpc.INTERNAL_ERROR, "internal error: this gateway has no "
                                                   "daemon to run agents")
        # the child of the call's span, when it is traced (tracing.py's trace link)
        traceparent, tracestate = current_context()
        accepted = await self.calls.call(caller_of(ident), m.TasksSubmit(
            agent=agent, input=msgspec.Raw(msgspec.json.encode(arguments)),
            traceparent=traceparent, tracestate=tracestate, idempotency_key=key))
        return str(accepted.task_id)

    async def outcome(self, ident: GatewayCaller, task_id: str,
                      on_progress: Callable[[dict[str, Any]], None] | None = None
                      ) -> dict[str, Any]:
        """The task's end as a tool result; cancelled, it cancels the task. With
        `on_progress`, the task's live output first (OutputRelay)."""
        assert self.calls is not None
        caller = caller_of(ident)
        try:
            if on_progress is not None:
                with contextlib.suppress(RpcError):  # (its end is read below all the same)
                    await self.calls.call(caller, m.TasksStream(task_id=task_id),
                                          channel=OutputRelay(on_progress))
            info = await self.calls.call(caller, m.TasksGet(task_id=task_id, wait=True))
        except asyncio.CancelledError:
            with contextlib.suppress(RpcError):
                await asyncio.shield(self.calls.call(caller,
                                                     m.TasksCancel(task_id=task_id)))
            raise
        if info.status == "cancelled":
            raise asyncio.CancelledError
        output = msgspec.json.decode(info.output) if isinstance(info.output, msgspec.Raw) \
            else info.output
        text = msgspec.json.encode(output).decode() if info.status == SUCCEEDED \
            else f"task {task_id} {info.status}: " + \
            (info.error.message if info.error is not None else "no output")
        out: dict[str, Any] = {"content": [{"type": "text", "text": text}],
                               "isError": info.status != SUCCEEDED,
                               "_meta": {"corral/task": task_id}}
        if info.status == SUCCEEDED and isinstance(output, dict):
            out["structuredContent"] = output
        return out


def trace_meta(params: dict[str, Any]) -> dict[str, Any] | None:
    """The W3C trace context a request carries in `params._meta`, if any."""
    said = params.get("_meta")
    if not isinstance(said, dict) or "traceparent" not in said:
        return None
    return {k: said[k] for k in ("traceparent", "tracestate") if k in said}


def key_meta(params: dict[str, Any]) -> str | None:
    """The idempotency key a tools/call carries in `params._meta` (DESIGN section 10's
    name), if any: the same call sent again with it is the same task."""
    said = params.get("_meta")
    key = said.get(IDEMPOTENCY_META) if isinstance(said, dict) else None
    if key is None:
        return None
    if not isinstance(key, str) or not 0 < len(key) <= MAX_IDEMPOTENCY_KEY:
        raise RpcError(jsonrpc.INVALID_PARAMS, f"invalid params: _meta's {IDEMPOTENCY_META} "
                       f"is a string of 1 to {MAX_IDEMPOTENCY_KEY} characters")
    return key


def call_params(params: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    name, arguments = params.get("name"), params.get("arguments") or {}
    if not isinstance(name, str) or not isinstance(arguments, dict):
        raise RpcError(jsonrpc.INVALID_PARAMS,
                       "invalid params: tools/call needs a name and object arguments")
    return name, arguments
