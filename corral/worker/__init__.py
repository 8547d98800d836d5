"""The worker SDK (docs/sdk.md): write a handler, call `run(handler)`. Stdlib-only and
light to import, as a worker's start-up is paid at every restart; the main thread reads
stdin and answers the protocol itself, so a ping is answered while a handler works."""

from __future__ import annotations

import _thread
import gc
import os
import sys
import time

from . import codec
from .context import Context as Context
from .context import from_task_id as from_task_id
from .errors import FATAL_EXIT_STATUS as FATAL_EXIT_STATUS
from .errors import INTERNAL_ERROR as INTERNAL_ERROR
from .errors import INVALID_PARAMS as INVALID_PARAMS
from .errors import METHOD_NOT_FOUND as METHOD_NOT_FOUND
from .errors import PEER_CLOSED as PEER_CLOSED
from .errors import REQUEST_CANCELLED as REQUEST_CANCELLED
from .errors import REQUEST_TIMEOUT as REQUEST_TIMEOUT
from .errors import TASK_FAILED as TASK_FAILED
from .errors import RequestError as RequestError
from .errors import RpcError as RpcError
from .errors import TaskCancelled as TaskCancelled
from .errors import TaskError as TaskError
from .errors import exc_text, is_fatal, print_exc
from .health import HealthAnswers
from .health import health_check as health_check
from .link import SupervisorLink
from .osio import STDIN_IDLE as STDIN_IDLE
from .osio import _lines as _lines
from .osio import _set_title as _set_title
from .spawning import ChildFailed as ChildFailed

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
HOLD_MAX = 16  # answers held at most: the supervisor starts on a burst's first meanwhile

__all__ = ["Context", "RequestError", "RpcError", "TaskCancelled", "TaskError", "Worker",
           "health_check", "run"]


class Worker(SupervisorLink):
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
        super().__init__()
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
        self._burst = 0
        self._health = HealthAnswers(self._reply, self._ensure_loop)

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
            self._burst += 1
            long = len(line) >= codec.FAST_JSON_AT
            if long and not codec.fast_tried:
                codec.try_fast_json()
            try:
                if long and gc.isenabled():
                    # JSON has no cycles: a pass in the middle of a large document
                    # would only move the half-built values up a generation
                    gc.disable()
                    try:
                        msg = codec.loads(line)
                    finally:
                        gc.enable()
                else:
                    msg = codec.loads(line)
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
        # the tasks still running are not told (cancelled, their calls failed): what they
        # answered so would race the exit, and end them as a stop never does (cancelled,
        # failed); unanswered, they end with the process, as corral says why (lost)
        self._stopping = True
        try:
            with self._lock:
                self._flush()  # the answers held
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
            self._health.request(rid, params)
        elif method == "event":
            self._hook(self.on_event, params.get("topic", ""), params.get("data"))
        elif method == "resources/updated":
            self._hook(self.on_resource_updated, params.get("server", ""),
                       params.get("uri", ""))
        elif rid is not None:
            self._error(rid, METHOD_NOT_FOUND, f"method not found: {method}")

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
                print_exc()
                # the supervisor says "initialize failed: ..." itself
                self._error(rid, INTERNAL_ERROR, exc_text(exc))
                return
        # it derives a task's trace context from its id when `task/run` says `trace`
        self._reply(rid, {"protocol_version": PROTOCOL_VERSION, "capabilities": capabilities,
                          "trace_from_task_id": True})

    def _hook(self, hook: Callable[..., Any] | None, *args: Any) -> None:
        """The agent's `hook`, if it gave one: what it raises is printed, not answered."""
        if hook is not None:
            try:
                hook(*args)
            except Exception:
                print_exc()

    def _shutdown(self, rid: Any) -> None:
        self._hook(self.on_shutdown)
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
                print_exc()
                if rid is not None:
                    self._error(rid, INTERNAL_ERROR, exc_text(exc))
                return
            if state is not None:
                self.state = state
                # before the answer, on the same channel: corral has it when it stops us
                self.notify("state/checkpoint", {"state": state})
                checkpointed = True
        if rid is not None:
            self._reply(rid, {"checkpointed": checkpointed})

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
        _thread.start_new_thread(self._pool_thread, ())  # not threading's: link.py

    def _before_read(self, fd: int) -> None:
        """Before the reader waits for input: the answers held are written; while a task
        waits that no free thread takes, the wait has a timeout, and a thread is started
        once none has taken a task for STALL (each is in a handler that blocks)."""
        if self._burst >= codec.FAST_JSON_BURST and not codec.fast_tried:
            codec.try_fast_json()
        self._burst = 0  # the messages of the last read
        since = time.monotonic()
        while True:
            with self._lock:
                if self._unflushed:
                    self._flush()
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

    def _holds(self) -> bool:
        # a task waits that no free thread takes: the reader waits for input only with a
        # timeout (_before_read), writing what is held each time, until it is taken
        return self._queued > self._waiting and self._unflushed < HOLD_MAX

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
            del ctx, task_input  # not kept while the thread waits for the next (as 1008)

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
            self._write(codec.answer(rid, value), before_reply is not None)
            return
        exc = value
        if isinstance(exc, TaskCancelled) or type(exc).__name__ == "CancelledError":
            self._error(rid, REQUEST_CANCELLED, f"task {ctx.task_id} cancelled")
        elif isinstance(exc, RequestError) and exc.code == REQUEST_CANCELLED:
            # corral stopped the attempt under a call it made (its task suspended while it
            # waited for a person, cancelled): no crash of the agent's, one line in its log
            self._error(rid, REQUEST_CANCELLED, exc.message)
            sys.stderr.write(f"corral worker: task {ctx.task_id}: {exc.message}\n")
        elif isinstance(exc, TaskError):
            self._error(rid, TASK_FAILED, exc.message, exc.data)
        elif is_fatal(exc):
            # past a cap the task is not answered: the worker dies, so the supervisor ends
            # the task `lost` with the exit reason that names the cap (from this stderr
            # line), and retries it where the agent has retries. Nothing may be imported or
            # opened here (no memory, no fds): one write with what is loaded, and go.
            try:
                with self._lock:
                    self._flush()  # the answers held: those tasks ended
                os.write(2, f"corral worker: fatal: {exc_text(exc)}; exiting\n".encode())
            finally:
                os._exit(FATAL_EXIT_STATUS)
        else:
            self._error(rid, TASK_FAILED, exc_text(exc), {"type": type(exc).__name__})
            try:
                import traceback

                sys.stderr.write("".join(traceback.format_exception(exc)))
            except Exception:
                sys.stderr.write(f"{exc_text(exc)}\n")

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
            _thread.start_new_thread(self._loop.run_forever, ())
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
    """Serve `handler(task_input, ctx)` over stdio until the supervisor says stop (the
    hooks: docs/sdk.md)."""
    Worker(
        handler, on_initialize=on_initialize, on_event=on_event, on_shutdown=on_shutdown,
        on_resource_updated=on_resource_updated, on_hibernate=on_hibernate,
    ).run()
