"""The worker SDK: write a handler, call `run(handler)`.

    from corral.worker import run

    def handle(task_input, ctx):
        ctx.progress(1, 2, "thinking")
        return {"echo": task_input}

    run(handle)

The handler may be a plain function (run in a thread, so pings are answered while it
works) or a coroutine function (run on an asyncio loop, imported only then). The SDK is
deliberately stdlib-only and imports little: a worker's start-up is paid at every restart.
The main thread reads stdin and answers `initialize`, `ping`, `task/cancel` and
`shutdown` itself (`health/check`, the `@health_check` functions, on a thread of its own);
stdout is reserved for the protocol (print() goes to stderr).
"""

from __future__ import annotations

import errno
import gc
import os
import sys
import threading
import time

from .osio import STDIN_IDLE as STDIN_IDLE
from .osio import _lines as _lines
from .osio import _set_title as _set_title
from .spawning import ChildFailed as ChildFailed
from .spawning import Spawning

TYPE_CHECKING = False  # not `from typing import ...`: typing costs ~2 ms to import
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

PROTOCOL_VERSION = "1"
# A task no thread has taken for this long, while every thread runs a handler, gets a
# thread of its own (those handlers block: on a model, a tool). Handlers that return at
# once share the threads there are: a thread per task in flight made every task a wake-up
# of a sleeping thread and a fight for the GIL, most of a tiny task's cost in the worker.
STALL = 0.002

# Mirrors of corral.jsonrpc's codes; the SDK must not import msgspec (start-up cost).
# tests/test_worker_sdk.py checks they agree.
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
PEER_CLOSED = -32001
REQUEST_TIMEOUT = -32002
REQUEST_CANCELLED = -32003
TASK_FAILED = -32030

# -- JSON without the json package ---------------------------------------------------------
# `import json` pulls in re and enum (~5 ms); its C accelerator alone is what does the work.
try:
    import _json

    class _ScanContext:
        strict = True
        object_hook = None
        object_pairs_hook = None
        parse_float = float
        parse_int = int
        parse_constant = float  # NaN, Infinity, -Infinity
        memo: dict[str, str] = {}

    _scan = _json.make_scanner(_ScanContext())  # type: ignore[arg-type]
    _encode = _json.make_encoder(
        None, str, _json.encode_basestring, None, ":", ",", False, False, True
    )

    def _std_loads(line: bytes) -> Any:
        text = str(line, "utf-8")
        # no strip(): that would copy a 10 MB line to drop its newline
        start = 0
        while start < len(text) and text[start] in " \t\r\n":
            start += 1
        try:
            value, end = _scan(text, start)
        except StopIteration:
            raise ValueError("not JSON") from None
        if end != len(text) and not text[end:].isspace():
            raise ValueError("extra data after the JSON value")
        return value

    def _std_dumps(obj: Any) -> bytes:
        chunks = _encode(obj, 0)
        chunks.append("\n")
        return "".join(chunks).encode("utf-8")

except (ImportError, AttributeError):  # pragma: no cover - an interpreter without _json
    import json

    def _std_loads(line: bytes) -> Any:
        return json.loads(line)

    def _std_dumps(obj: Any) -> bytes:
        return (json.dumps(obj, separators=(",", ":"), ensure_ascii=False, default=str)
                + "\n").encode("utf-8")


# A line this long is worth a fast JSON codec, where the agent's environment has one
# (msgspec, else orjson): ~10x the stdlib's speed on large documents. It is imported then,
# never at start-up (msgspec costs ~50 ms to import), and used for every message after:
# an agent that has seen one large message will likely see more. Set CORRAL_FAST_JSON=0
# to keep the stdlib codec.
FAST_JSON_AT = 64 * 1024
_loads = _std_loads
_dumps = _std_dumps
_fast_tried = False


def _module(name: str) -> Any:
    try:
        return __import__(name)
    except ImportError:
        return None


def _try_fast_json() -> None:
    """Each direction takes the fastest codec the agent's environment has: msgspec decodes
    fastest (orjson ~1.2x its time on a 1 MB document), orjson encodes fastest (msgspec
    ~8x its time on a long ASCII string, ~1.3x on text that needs escapes). A value orjson
    refuses (an int past 64 bits, a non-string key) is encoded by the next codec."""
    global _loads, _dumps, _fast_tried
    _fast_tried = True
    if os.environ.get("CORRAL_FAST_JSON", "1") == "0":
        return
    msgspec, orjson = _module("msgspec"), _module("orjson")
    if msgspec is not None:
        decode = msgspec.json.Decoder().decode
        encoder = msgspec.json.Encoder(enc_hook=str)

        def msgspec_loads(line: bytes) -> Any:
            try:
                return decode(line)
            except msgspec.DecodeError as exc:
                raise ValueError(str(exc)) from None

        def msgspec_dumps(obj: Any) -> bytes:
            buf = bytearray()
            encoder.encode_into(obj, buf)
            buf += b"\n"
            return buf  # type: ignore[return-value]

        _loads, _dumps = msgspec_loads, msgspec_dumps
    if orjson is not None:
        oj_dumps, oj_loads, newline = orjson.dumps, orjson.loads, orjson.OPT_APPEND_NEWLINE
        refused, then = orjson.JSONEncodeError, _dumps

        def orjson_dumps(obj: Any) -> bytes:
            try:
                out: bytes = oj_dumps(obj, default=str, option=newline)
            except refused:
                return then(obj)
            return out

        def orjson_loads(line: bytes) -> Any:
            try:
                return oj_loads(line)
            except orjson.JSONDecodeError as exc:
                raise ValueError(str(exc)) from None

        _dumps = orjson_dumps
        if msgspec is None:
            _loads = orjson_loads


# A handler that hits one of these has hit a resource cap; its process is not trusted to
# go on (leaked memory, no fds left), so the worker exits and the supervisor restarts it,
# naming the cap from the error on stderr.
_FATAL_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.EFBIG, errno.ENOMEM, errno.EAGAIN}
FATAL_EXIT_STATUS = 70

__all__ = ["Context", "RequestError", "RpcError", "TaskCancelled", "TaskError", "Worker",
           "health_check", "run"]

# -- health checks -------------------------------------------------------------------------
# `@health_check` functions by name, answered to corral's `health/check` requests
_HEALTH_CHECKS: dict[str, Callable[[], Any]] = {}
# health/check requests waiting for the health thread: past this many, answered failed at
# once (a check that hangs makes the agent unhealthy, not the worker's memory grow)
HEALTH_PENDING_MAX = 8


def health_check(fn_or_name: Any = None) -> Any:
    """Register a health check corral asks for (`health/check`, docs/sdk.md):
    `@health_check` (named after the function) or `@health_check("db")`.

    The function takes no argument (a coroutine function runs on the worker's asyncio
    loop); returning None or True passes, False fails, a dict {"ok": bool, "message": str}
    says both, and an exception fails with its text. Checks run on a thread of their own,
    so a busy handler does not fail them unless the check itself says so."""
    def register(fn: Callable[[], Any], name: str | None = None) -> Callable[[], Any]:
        _HEALTH_CHECKS[name or fn.__name__] = fn
        return fn

    if callable(fn_or_name):
        return register(fn_or_name)
    return lambda fn: register(fn, fn_or_name)


class TaskError(Exception):
    """Raise from a handler to fail the task with this message (and optional data)."""

    def __init__(self, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.data = data


class TaskCancelled(Exception):
    """Raised by `ctx.check_cancelled()` once the supervisor has cancelled the task."""


class RequestError(Exception):
    """An error answer from the supervisor to a request the worker made."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data


# its name before decision 491: agents that catch it by that name keep working
RpcError = RequestError


def _print_exc() -> None:
    import traceback  # only on the error path: ~2 ms at start-up saved

    traceback.print_exc()


def _exc_text(exc: BaseException) -> str:
    """"Name: message", or just the name when the message is empty (a MemoryError has
    none): never a dangling colon."""
    name = type(exc).__name__
    text = str(exc)
    return f"{name}: {text}" if text else name


def _is_fatal(exc: BaseException) -> bool:
    return isinstance(exc, MemoryError) or (
        isinstance(exc, OSError) and exc.errno in _FATAL_ERRNOS
    )


class _Waiter:
    """A response slot: a thread blocks on it, or an asyncio future is completed from it."""

    __slots__ = ("callback", "event", "value")

    def __init__(self, callback: Callable[[bool, Any], None] | None = None) -> None:
        self.event = threading.Event()
        self.value: tuple[bool, Any] = (False, None)
        self.callback = callback  # told the answer, in the reader's thread

    def resolve(self, ok: bool, value: Any) -> None:
        self.value = (ok, value)
        self.event.set()
        if self.callback is not None:
            self.callback(ok, value)



def from_task_id(task_id: str, bit: int) -> dict[str, str] | None:
    """The trace context of a task traced from its id (`task/run`'s `trace`,
    docs/protocol.md#trace-context): the trace id is the id's 32 hex digits, the
    attempt's span id their last 16, the flags the bit."""
    digits = task_id.replace("-", "")
    if len(digits) != 32:
        return None
    return {"traceparent": f"00-{digits}-{digits[16:]}-0{bit}"}

class Context(Spawning):
    """What a handler gets besides its input (and `spawn`, `wait`, `map`: spawning.py)."""

    def __init__(
        self,
        worker: Worker,
        task_id: str,
        deadline: float | None,
        is_async: bool,
        attempt: int = 1,
        trace: dict[str, Any] | None = None,
        resumed: bool = False,
        task_state: Any = None,
        session: str | None = None,
        session_state: Any = None,
    ) -> None:
        self._worker = worker
        self.task_id = task_id
        # the W3C trace context corral gave the attempt (None when it does not trace):
        # hand it to your own OpenTelemetry spans; tool calls send it back in `_meta`
        self.traceparent: str | None = None
        self.tracestate: str | None = None
        if trace:
            tp, ts = trace.get("traceparent"), trace.get("tracestate")
            self.traceparent = tp if isinstance(tp, str) else None
            self.tracestate = ts if isinstance(ts, str) else None
        # 1 on the first run of the task, more on a retry (here or on another node):
        # (task_id, attempt) names this run for the agent's own side effects
        self.attempt = attempt
        # a retry of a task that checkpointed (checkpoint_task): its last state
        self.resumed = resumed
        self.task_state = task_state
        # a turn of a session (docs/durable.md#sessions): its name, and the state its
        # last checkpoint_session kept (None: a new session, or one expired or ended)
        self.session = session
        self.session_state = session_state
        self.deadline = deadline
        self._async = is_async
        # a flag, not a threading.Event: nothing waits on it, and an Event (a Condition
        # and its locks, in Python) cost more to make than the rest of a tiny task's start
        self._cancelled = False
        self.agent = worker.agent
        self.replica = worker.replica
        self.config = worker.config

    @property
    def state(self) -> Any:
        """The agent state last checkpointed (given back by corral after a restart)."""
        return self._worker.state

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def check_cancelled(self) -> None:
        if self._cancelled:
            raise TaskCancelled(f"task {self.task_id} cancelled")

    def remaining(self) -> float | None:
        """Seconds left before the task's deadline, or None for no deadline."""
        return None if self.deadline is None else self.deadline - time.time()

    def progress(self, progress: float, total: float | None = None, message: str | None = None
                 ) -> None:
        params: dict[str, Any] = {"task_id": self.task_id, "progress": progress}
        if total is not None:
            params["total"] = total
        if message is not None:
            params["message"] = message
        self._worker.notify("task/progress", params)

    def emit(self, data: str) -> None:
        """A chunk of this task's live output (`task/output`): kept by corral for whoever
        follows the task (`corral run --stream`), so it waits for no reader."""
        if not isinstance(data, str):
            raise TypeError(f"emit: data must be a string, not {type(data).__name__}")
        self._worker.notify("task/output", {"task_id": self.task_id, "data": data})

    def report_usage(self, input_tokens: int = 0, output_tokens: int = 0,
                     cost_usd: float = 0.0, model: str | None = None) -> None:
        """Tell corral what this task spent on a model (a `usage/report` notification):
        counted for the task, the agent and the model, against the agent's token and cost
        budgets. Call it after each model call; it does not wait."""
        params: dict[str, Any] = {"task_id": self.task_id, "input_tokens": input_tokens,
                                  "output_tokens": output_tokens, "cost_usd": cost_usd}
        if model is not None:
            params["model"] = model
        self._worker.notify("usage/report", params)

    def _call(self, method: str, params: Any) -> Any:
        if self._async:
            return self._worker.request_async(method, params)
        return self._worker.request(method, params)

    def list_tools(self) -> Any:
        """The tools this agent may call; awaitable in coroutine handlers."""
        return self._call("tools/list", {})

    def call_tool(self, name: str, arguments: dict[str, Any] | None = None) -> Any:
        """Call `SERVER__TOOL` through the supervisor; awaitable in coroutine handlers."""
        params: dict[str, Any] = {"name": name, "arguments": arguments or {},
                                  "task_id": self.task_id}
        if self.traceparent is not None:
            params["_meta"] = self.trace_meta()
        return self._call("tools/call", params)

    @property
    def mcp_url(self) -> str | None:
        """This attempt's address at corral's MCP gateway (None: corral gives the agent
        no gateway): a call made there, with the replica's CORRAL_MCP_TOKEN, is a step of
        this task, journaled and replayed on a retry as `call_tool`'s are, whatever MCP
        client makes it. A process started for the task takes it as its CORRAL_MCP_URL."""
        url = os.environ.get("CORRAL_MCP_URL")
        if not url:
            return None
        return f"{url}{'&' if '?' in url else '?'}task={self.task_id}&attempt={self.attempt}"

    @property
    def mcp_headers(self) -> dict[str, str]:
        """The gateway's credential as an MCP client's HTTP headers (the replica's token)."""
        token = os.environ.get("CORRAL_MCP_TOKEN")
        return {"Authorization": f"Bearer {token}"} if token else {}

    def trace_meta(self) -> dict[str, str]:
        """The trace context as `_meta` entries (empty when corral does not trace): for a
        request of your own to an MCP server or another service."""
        if self.traceparent is None:
            return {}
        meta = {"traceparent": self.traceparent}
        if self.tracestate is not None:
            meta["tracestate"] = self.tracestate
        return meta

    def list_resources(self, server: str | None = None) -> Any:
        """{"resources": [...]}: the MCP resources this agent may read, each with its
        "server"."""
        return self._call("resources/list", {} if server is None else {"server": server})

    def read_resource(self, server: str, uri: str) -> Any:
        """resources/read of one server's resource: {"contents": [...]}."""
        return self._call("resources/read", {"server": server, "uri": uri})

    def subscribe_resource(self, server: str, uri: str) -> Any:
        """Updates arrive as `on_resource_updated(server, uri)` (see `run`)."""
        return self._call("resources/subscribe", {"server": server, "uri": uri})

    def list_prompts(self, server: str | None = None) -> Any:
        """{"prompts": [...]}: the MCP prompts this agent may get, named SERVER__PROMPT."""
        return self._call("prompts/list", {} if server is None else {"server": server})

    def get_prompt(self, name: str, arguments: dict[str, str] | None = None) -> Any:
        """prompts/get of `SERVER__PROMPT`: {"messages": [...]}."""
        return self._call("prompts/get", {"name": name, "arguments": arguments or {}})

    def publish(self, topic: str, data: Any = None) -> None:
        self._worker.notify("events/publish", {"topic": topic, "data": data})

    def subscribe(self, topic: str) -> Any:
        return self._call("events/subscribe", {"topic": topic})

    def checkpoint(self, state: Any) -> None:
        """Persist agent state; given back in `initialize` after a restart."""
        self._worker.state = state
        self._worker.notify("state/checkpoint", {"state": state})

    def checkpoint_task(self, state: Any) -> Any:
        """Keep this task's state (JSON): a retried attempt starts with it as
        `ctx.task_state` (and `ctx.resumed`). Returns once it is durable; awaitable in
        coroutine handlers."""
        return self._call("task/checkpoint", {"task_id": self.task_id, "state": state})

    def checkpoint_session(self, state: Any) -> Any:
        """Keep the session's state (JSON): the session's next task starts with it as
        `ctx.session_state`, on whichever replica. Returns once it is durable; awaitable
        in coroutine handlers."""
        self.session_state = state
        return self._call("session/checkpoint", {"task_id": self.task_id, "state": state})

    def step(self, name: str, fn: Callable[[], Any]) -> Any:
        """`fn()`'s result, journaled under `name` (unique within the task): a retried
        attempt gets the journaled result back without calling `fn` (a model call is then
        not paid twice; docs/durable.md). In a coroutine handler, await it (`fn` may be a
        coroutine function)."""
        if self._async:
            return self._step_async(name, fn)
        if self.attempt > 1:  # nothing is journaled before a task's first attempt
            got = self._worker.request("step/get", {"task_id": self.task_id, "name": name})
            if got.get("found"):
                return got.get("result")
        value = fn()
        self._worker.request("step/put", {"task_id": self.task_id, "name": name,
                                          "result": value})
        return value

    async def _step_async(self, name: str, fn: Callable[[], Any]) -> Any:
        if self.attempt > 1:
            got = await self._worker.request_async(
                "step/get", {"task_id": self.task_id, "name": name})
            if got.get("found"):
                return got.get("result")
        value = fn()
        if hasattr(value, "__await__"):
            value = await value
        await self._worker.request_async("step/put", {"task_id": self.task_id,
                                                      "name": name, "result": value})
        return value


class Worker:
    def __init__(
        self,
        handler: Callable[..., Any],
        *,
        on_initialize: Callable[[dict[str, Any]], Any] | None = None,
        on_event: Callable[[str, Any], Any] | None = None,
        on_shutdown: Callable[[], Any] | None = None,
        on_resource_updated: Callable[[str, str], Any] | None = None,
        on_hibernate: Callable[[Any], Any] | None = None,
    ) -> None:
        self.handler = handler
        self.on_hibernate = on_hibernate
        self.on_initialize = on_initialize
        self.on_event = on_event
        self.on_shutdown = on_shutdown
        self.on_resource_updated = on_resource_updated
        # CO_COROUTINE; cheaper than importing inspect
        self.is_async = bool(getattr(handler, "__code__", None) and
                             handler.__code__.co_flags & 0x80)
        self.agent = os.environ.get("CORRAL_AGENT", "")
        self.replica = int(os.environ.get("CORRAL_REPLICA", "0") or 0)
        self.config: dict[str, Any] = {}
        self.state: Any = None
        self._lock = threading.Lock()
        self._next_id = 0
        self._waiters: dict[int, _Waiter] = {}
        self._tasks: dict[str, Context] = {}
        self._async_tasks: dict[str, Any] = {}
        self._loop: Any = None
        self._stopping = False
        # sync handlers run on reused threads: starting a thread per task costs more than
        # a small task itself. Under `_lock`: threads, those not running a handler, the
        # jobs not yet taken, and when a thread last took one (or was started)
        self._jobs: Any = None
        self._threads = 0
        self._waiting = 0
        self._queued = 0
        self._last_take = self._last_put = 0.0
        self._health_jobs: Any = None  # health/check requests for the health thread
        self._health_pending = 0
        # stdout is the protocol channel: keep a private handle, send stray prints to stderr
        self._out = os.fdopen(os.dup(1), "wb")
        os.dup2(2, 1)

    # -- sending --------------------------------------------------------------------------
    def _send(self, msg: dict[str, Any]) -> None:
        line = _dumps(msg)
        with self._lock:
            try:
                self._out.write(line)
                self._out.flush()
            except (BrokenPipeError, ValueError):
                pass  # the supervisor is gone; stdin EOF will end us

    def notify(self, method: str, params: Any = None) -> None:
        self._send({"jsonrpc": "2.0", "method": method, "params": params})

    def _reply(self, rid: Any, result: Any) -> None:
        self._send({"jsonrpc": "2.0", "id": rid, "result": result})

    def _error(self, rid: Any, code: int, message: str, data: Any = None) -> None:
        err: dict[str, Any] = {"code": code, "message": message}
        if data is not None:
            err["data"] = data
        self._send({"jsonrpc": "2.0", "id": rid, "error": err})

    def _new_request(self, method: str, params: Any,
                     callback: Callable[[bool, Any], None] | None = None) -> _Waiter:
        waiter = _Waiter(callback)  # given before the answer can arrive
        with self._lock:
            self._next_id += 1
            rid = self._next_id
            self._waiters[rid] = waiter
        self._send({"jsonrpc": "2.0", "id": rid, "method": method, "params": params})
        return waiter

    def request(self, method: str, params: Any = None, timeout: float | None = None) -> Any:
        """Ask the supervisor something and block this thread for the answer."""
        waiter = self._new_request(method, params)
        if not waiter.event.wait(timeout):
            raise RequestError(REQUEST_TIMEOUT, f"{method}: no answer within {timeout} s")
        ok, value = waiter.value
        if not ok:
            raise value
        return value

    def request_all(self, method: str, params: list[Any]) -> list[Any]:
        """Ask the supervisor many things at once (all sent before the first answer is
        waited for) and block this thread for every answer, in order."""
        waiters = [self._new_request(method, p) for p in params]
        out = []
        for waiter in waiters:
            waiter.event.wait()
            ok, value = waiter.value
            if not ok:
                raise value
            out.append(value)
        return out

    def request_async(self, method: str, params: Any = None) -> Any:
        """Ask the supervisor something; an awaitable answer (for coroutine handlers)."""
        import asyncio

        loop = asyncio.get_running_loop()
        fut = loop.create_future()

        def settle(ok: bool, value: Any) -> None:
            if fut.done():
                return
            if ok:
                fut.set_result(value)
            else:
                fut.set_exception(value)

        def answered(ok: bool, value: Any) -> None:  # on the reader thread
            loop.call_soon_threadsafe(settle, ok, value)

        self._new_request(method, params, answered)
        return fut

    # -- the read loop --------------------------------------------------------------------
    def run(self) -> None:
        title = os.environ.get("CORRAL_PROCTITLE")
        if title:
            _set_title(title)
        # The agent's modules and the SDK's own live as long as the process: out of every
        # full pass of the cyclic collector from here on, which then walks what the tasks
        # leave and no more (a pass over the start-up heap was a stall of the worker every
        # ~70 tasks of 100 KB of records). No collection first: it would cost every start
        # a walk of that heap, for the little garbage an import leaves.
        gc.freeze()
        for line in _lines(sys.stdin.fileno(), self._before_read):
            if self._stopping:
                break
            long = len(line) >= FAST_JSON_AT
            if long and not _fast_tried:
                _try_fast_json()
            try:
                if long and gc.isenabled():
                    # JSON has no cycles: a pass in the middle of a large document
                    # would only move the half-built values up a generation
                    gc.disable()
                    try:
                        msg = _loads(line)
                    finally:
                        gc.enable()
                else:
                    msg = _loads(line)
            except (ValueError, UnicodeDecodeError):
                if not bytes(line).strip():  # a blank line is no message, and no error
                    continue
                print(f"corral worker: ignored a line that is not JSON: {bytes(line[:80])!r}",
                      file=sys.stderr)
                continue
            if isinstance(msg, dict):
                self._handle(msg)
        self._exit(0)

    def _exit(self, status: int) -> None:
        self._stopping = True
        for ctx in list(self._tasks.values()):
            ctx._cancelled = True
        for w in list(self._waiters.values()):
            w.resolve(False, RequestError(PEER_CLOSED, "supervisor went away"))
        try:
            sys.stderr.flush()
        finally:
            os._exit(status)

    def _handle(self, msg: dict[str, Any]) -> None:
        method = msg.get("method")
        rid = msg.get("id")
        if method is None:
            if rid is not None:
                self._on_response(rid, msg)
            return
        params = msg.get("params") or {}
        if method == "ping":
            if rid is not None:
                self._reply(rid, {})
        elif method == "task/run":
            self._start_task(rid, params)
        elif method == "task/cancel":
            self._cancel_task(str(params.get("task_id", "")))
        elif method == "initialize":
            self._initialize(rid, params)
        elif method == "shutdown":
            self._shutdown(rid)
        elif method == "hibernate":
            self._hibernate(rid)
        elif method == "health/check":
            self._health_request(rid, params)
        elif method == "event":
            if self.on_event is not None:
                try:
                    self.on_event(params.get("topic", ""), params.get("data"))
                except Exception:
                    _print_exc()
        elif method == "resources/updated":
            if self.on_resource_updated is not None:
                try:
                    self.on_resource_updated(params.get("server", ""), params.get("uri", ""))
                except Exception:
                    _print_exc()
        elif rid is not None:
            self._error(rid, METHOD_NOT_FOUND, f"method not found: {method}")

    def _on_response(self, rid: Any, msg: dict[str, Any]) -> None:
        with self._lock:
            waiter = self._waiters.pop(rid, None)
        if waiter is None:
            return
        if "error" in msg:
            e = msg["error"] or {}
            waiter.resolve(False, RequestError(e.get("code", INTERNAL_ERROR), e.get("message", ""),
                                               e.get("data")))
        else:
            waiter.resolve(True, msg.get("result"))

    def _initialize(self, rid: Any, params: dict[str, Any]) -> None:
        self.agent = params.get("agent", self.agent)
        self.replica = params.get("replica", self.replica)
        self.config = params.get("config") or {}
        self.state = params.get("state")
        capabilities: Any = {}
        if self.on_initialize is not None:
            try:
                capabilities = self.on_initialize(params) or {}
            except Exception as exc:
                _print_exc()
                # the supervisor says "initialize failed: ..." itself
                self._error(rid, INTERNAL_ERROR, _exc_text(exc))
                return
        # it derives a task's trace context from its id when `task/run` says `trace`
        self._reply(rid, {"protocol_version": PROTOCOL_VERSION, "capabilities": capabilities,
                          "trace_from_task_id": True})

    def _shutdown(self, rid: Any) -> None:
        if self.on_shutdown is not None:
            try:
                self.on_shutdown()
            except Exception:
                _print_exc()
        if rid is not None:
            self._reply(rid, {})
        self._exit(0)

    def _hibernate(self, rid: Any) -> None:
        """corral is about to stop this idle worker until work comes (hibernate_after):
        the hook's answer, unless None, is checkpointed, and `initialize` gives it back."""
        checkpointed = False
        if self.on_hibernate is not None:
            try:
                state = self.on_hibernate(self.state)
            except Exception as exc:
                _print_exc()
                if rid is not None:
                    self._error(rid, INTERNAL_ERROR, _exc_text(exc))
                return
            if state is not None:
                self.state = state
                # before the answer, on the same channel: corral has it when it stops us
                self.notify("state/checkpoint", {"state": state})
                checkpointed = True
        if rid is not None:
            self._reply(rid, {"checkpointed": checkpointed})

    # -- health ---------------------------------------------------------------------------
    def _health_request(self, rid: Any, params: dict[str, Any]) -> None:
        """Answered on the health thread: the reader goes on reading (pings, tasks)."""
        if rid is None:
            return
        name = params.get("name")
        if self._health_jobs is None:
            from _queue import SimpleQueue

            self._health_jobs = SimpleQueue()
            threading.Thread(target=self._health_thread, daemon=True, name="health").start()
        with self._lock:
            full = self._health_pending >= HEALTH_PENDING_MAX
            if not full:
                self._health_pending += 1
        if full:
            self._reply(rid, {"ok": False, "message": "earlier health checks still running"})
            return
        self._health_jobs.put((rid, name))

    def _health_thread(self) -> None:
        jobs = self._health_jobs
        while True:
            rid, name = jobs.get()
            try:
                answer = self._run_checks(name)
            except BaseException as exc:
                answer = {"ok": False, "message": _exc_text(exc)}
            with self._lock:
                self._health_pending -= 1
            self._reply(rid, answer)

    def _run_checks(self, name: Any) -> dict[str, Any]:
        if name is not None:
            fn = _HEALTH_CHECKS.get(str(name))
            if fn is None:
                return {"ok": False, "message": f"no health check named {name!r}"}
            return self._one_check(fn)
        for check_name, fn in list(_HEALTH_CHECKS.items()):
            answer = self._one_check(fn)
            if not answer["ok"]:
                said = answer.get("message")
                return {"ok": False, "message": f"{check_name}: {said}" if said
                        else f"{check_name} failed"}
        return {"ok": True}

    def _one_check(self, fn: Callable[[], Any]) -> dict[str, Any]:
        try:
            if getattr(fn, "__code__", None) and fn.__code__.co_flags & 0x80:
                import asyncio

                value = asyncio.run_coroutine_threadsafe(fn(), self._ensure_loop()).result()
            else:
                value = fn()
        except Exception as exc:
            return {"ok": False, "message": _exc_text(exc)}
        if value is None or value is True:
            return {"ok": True}
        if value is False:
            return {"ok": False}
        if isinstance(value, dict) and isinstance(value.get("ok"), bool):
            out: dict[str, Any] = {"ok": value["ok"]}
            if value.get("message") is not None:
                out["message"] = str(value["message"])
            return out
        return {"ok": False, "message": f"the check returned {type(value).__name__}, not "
                                        "None, a bool or {'ok': ...}"}

    # -- tasks ----------------------------------------------------------------------------
    def _start_task(self, rid: Any, params: dict[str, Any]) -> None:
        task_id = str(params.get("task_id", rid))
        attempt = params.get("attempt")
        meta = params.get("_meta")
        if meta is None and type(bit := params.get("trace")) is int and bit in (0, 1):
            meta = from_task_id(task_id, bit)
        ctx = Context(self, task_id, params.get("deadline"), self.is_async,
                      attempt if isinstance(attempt, int) and attempt > 0 else 1,
                      meta if isinstance(meta, dict) else None,
                      params.get("resumed") is True, params.get("task_state"),
                      session if isinstance(session := params.get("session"), str) else None,
                      params.get("session_state"))
        self._tasks[task_id] = ctx
        task_input = params.get("input")
        if self.is_async:
            self._start_async(rid, ctx, task_input)
            return
        if self._jobs is None:
            from _queue import SimpleQueue

            self._jobs = SimpleQueue()
        with self._lock:
            self._queued += 1
            # a thread for it now if none is free, it came alone (not in a burst, which the
            # reader parses holding the GIL: no thread can take meanwhile) and the threads
            # there are took no task lately (they block); else it waits for one of them,
            # or for _before_read
            now = time.monotonic()
            if self._queued > self._waiting and (
                    self._threads == 0 or (now - self._last_take >= STALL
                                           and now - self._last_put >= STALL)):
                self._spawn()
            self._last_put = now
        self._jobs.put((rid, ctx, task_input))

    def _spawn(self) -> None:
        """One more thread for tasks (called holding `_lock`)."""
        self._threads += 1
        self._waiting += 1
        self._last_take = time.monotonic()
        threading.Thread(target=self._pool_thread, daemon=True, name="task").start()

    def _before_read(self, fd: int) -> None:
        """Before the reader waits for more input: while tasks wait that no free thread
        will take, and no thread has taken one for STALL (every thread is in a handler
        that blocks), one more thread is started; meanwhile input is waited for with a
        timeout. With no such task the read waits as long as it must."""
        since = time.monotonic()
        while True:
            with self._lock:
                if self._queued <= self._waiting:
                    return
                now = time.monotonic()
                idle_for = now - max(since, self._last_take)
                if idle_for >= STALL:
                    self._spawn()
                    since = now
                    continue
            import select  # (only when tasks wait: not at start-up)

            if select.select([fd], [], [], STALL - idle_for)[0]:
                return

    def _pool_thread(self) -> None:
        jobs = self._jobs
        lock = self._lock
        while True:
            rid, ctx, task_input = jobs.get()
            with lock:
                self._queued -= 1
                self._waiting -= 1
                self._last_take = time.monotonic()
            self._run_sync(rid, ctx, task_input)

    def _now_idle(self) -> None:
        # counted before the reply goes out: the supervisor may send the next task the
        # moment it reads the reply, and that task must go to this thread, not make a new
        # one that then fights this one for the GIL
        with self._lock:
            self._waiting += 1

    def _finish(self, rid: Any, ctx: Context, ok: bool, value: Any,
                before_reply: Callable[[], None] | None = None) -> None:
        self._tasks.pop(ctx.task_id, None)
        if before_reply is not None:
            before_reply()
        if ok:
            self._reply(rid, {"output": value})
            return
        exc = value
        if isinstance(exc, TaskCancelled) or type(exc).__name__ == "CancelledError":
            self._error(rid, REQUEST_CANCELLED, f"task {ctx.task_id} cancelled")
        elif isinstance(exc, TaskError):
            self._error(rid, TASK_FAILED, exc.message, exc.data)
        elif _is_fatal(exc):
            # past a cap the task is not answered: the worker dies, so the supervisor ends
            # the task `lost` with the exit reason that names the cap (from this stderr
            # line), and retries it where the agent has retries. Nothing may be imported or
            # opened here (no memory, no fds): one write with what is loaded, and go.
            try:
                os.write(2, f"corral worker: fatal: {_exc_text(exc)}; exiting\n".encode())
            finally:
                os._exit(FATAL_EXIT_STATUS)
        else:
            self._error(rid, TASK_FAILED, _exc_text(exc), {"type": type(exc).__name__})
            try:
                import traceback

                sys.stderr.write("".join(traceback.format_exception(exc)))
            except Exception:
                sys.stderr.write(f"{_exc_text(exc)}\n")

    def _run_sync(self, rid: Any, ctx: Context, task_input: Any) -> None:
        try:
            result = self.handler(task_input, ctx)
        except BaseException as exc:
            self._finish(rid, ctx, False, exc, self._now_idle)
            return
        self._finish(rid, ctx, True, result, self._now_idle)

    def _ensure_loop(self) -> Any:
        if self._loop is None:
            import asyncio

            self._loop = asyncio.new_event_loop()
            threading.Thread(target=self._loop.run_forever, daemon=True, name="asyncio").start()
        return self._loop

    def _start_async(self, rid: Any, ctx: Context, task_input: Any) -> None:
        loop = self._ensure_loop()

        async def runner() -> None:
            import asyncio

            self._async_tasks[ctx.task_id] = asyncio.current_task()
            try:
                result = await self.handler(task_input, ctx)
            except BaseException as exc:
                self._finish(rid, ctx, False, exc)
            else:
                self._finish(rid, ctx, True, result)
            finally:
                self._async_tasks.pop(ctx.task_id, None)

        import asyncio

        asyncio.run_coroutine_threadsafe(runner(), loop)

    def _cancel_task(self, task_id: str) -> None:
        ctx = self._tasks.get(task_id)
        if ctx is None:
            return
        ctx._cancelled = True
        task = self._async_tasks.get(task_id)
        if task is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(task.cancel)


def run(
    handler: Callable[..., Any],
    *,
    on_initialize: Callable[[dict[str, Any]], Any] | None = None,
    on_event: Callable[[str, Any], Any] | None = None,
    on_shutdown: Callable[[], Any] | None = None,
    on_resource_updated: Callable[[str, str], Any] | None = None,
    on_hibernate: Callable[[Any], Any] | None = None,
) -> None:
    """Serve `handler(task_input, ctx)` over stdio until the supervisor says stop.
    `on_hibernate(state)`: called with the state last checkpointed when corral
    hibernates the idle agent; what it returns (if not None) is checkpointed as the
    agent's state, given back by `initialize` when a task wakes it."""
    Worker(
        handler, on_initialize=on_initialize, on_event=on_event, on_shutdown=on_shutdown,
        on_resource_updated=on_resource_updated, on_hibernate=on_hibernate,
    ).run()
