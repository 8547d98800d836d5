"""Tasks: work given to agents, each ending in exactly one terminal outcome.

A task goes to the least-loaded serving replica with a free slot (`max_concurrent_tasks`);
otherwise it waits in the agent's bounded queue, ordered by priority then arrival.
Outcomes: succeeded, failed (the agent's error), timed_out, cancelled, lost (with its
worker). A task is finished once: a late answer after a timeout or cancel is recorded on
its attempt, never reported again. With `retries = N`, a task lost with its worker runs
again on a live replica; every attempt is recorded.

Deadlines run from the start of each attempt. On expiry `task/cancel` is sent; a worker
that has not answered within `cancel_grace` is treated as hung and restarted.

Durability is not the engine's business: it tells a `TaskJournal` (the daemon's is SQLite)
about every accepted task and every change, and a journal gives unfinished tasks back
(`restore`) after a crash. Memory stays flat in the number of finished tasks: a finished
task keeps only what `corral task ID` shows cheaply: its input is dropped; outputs are
held up to `kept_bytes` in all, and past that the oldest are dropped from memory (read
back from the journal when there is one, else gone); at most `kept` finished tasks stay
in memory (older ones are answered from the journal).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import msgspec
import orjson

from .. import jsonrpc
from ..jsonrpc import RpcError
from ..mcp.pool import allowed
from .lifecycle import LIVE, SERVING, State
from .memory import Releaser

if TYPE_CHECKING:
    from .core import Agent, Supervisor
    from .replica import Replica

TERMINAL = frozenset({"succeeded", "failed", "timed_out", "cancelled", "lost"})
MAX_INPUT_BYTES = 16 * 1024 * 1024 - 4096  # it must fit one 16 MiB protocol line
CANCEL_GRACE = 5.0
FINISHED_KEPT = 10_000  # finished tasks kept in memory
FINISHED_KEPT_BYTES = 32 * 1024 * 1024  # their outputs, in bytes
LOST_IN_RESTART = "daemon restarted"
LATENCY_WINDOW = 1000


class Attempt(msgspec.Struct, gc=False):  # (scalars only: nothing to collect)
    replica: int
    pid: int | None
    started: float
    finished: float | None = None
    outcome: str = "running"
    error: str | None = None


class TaskError(msgspec.Struct, omit_defaults=True):
    code: int
    message: str
    data: Any = None


# orjson encodes JSON's own types as msgspec does, ~8x faster on long strings (SIMD escape
# checks); anything else (a datetime, a dataclass, a subclass, an int past 64 bits, a key
# that is not a string) goes to msgspec, so an input's JSON is msgspec's in every case.
_ORJSON_OPTIONS = (orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS
                   | orjson.OPT_PASSTHROUGH_SUBCLASS)


def _not_native(value: Any) -> Any:
    raise TypeError


def encode_input(value: Any) -> bytes:
    """The JSON of a task input given as Python values."""
    try:
        return orjson.dumps(value, default=_not_native, option=_ORJSON_OPTIONS)
    except TypeError:  # orjson.JSONEncodeError is one
        pass
    return msgspec.json.encode(value)  # (its error, if any, is the caller's to see)


class _RunResult(msgspec.Struct):
    """A worker's `task/run` result, decoded for a Python caller."""

    output: Any = None


class _RawRunResult(msgspec.Struct):
    """The same with the output left as its JSON bytes."""

    output: msgspec.Raw = msgspec.Raw(b"null")  # (Raw cannot be part of a union)


_raw_run_result = msgspec.json.Decoder(_RawRunResult)


def raw_output_of(raw_result: msgspec.Raw) -> msgspec.Raw:
    """The output's JSON bytes in a worker's `task/run` result."""
    try:
        out: msgspec.Raw = _raw_run_result.decode(raw_result).output
    except (msgspec.DecodeError, msgspec.ValidationError):
        return _RawRunResult().output  # a worker's result that is not an object: no output
    return out


# The worker's whole answer line, read in one pass (`Peer.request_future(decode=...)`):
# the output comes out as a Python value for a caller that wants one, else as its JSON
# bytes, without a scan for the envelope before. Unknown members make the line take the
# usual way (an answer with both result and error is the usual way's to judge).
class _ValueAnswer(msgspec.Struct, forbid_unknown_fields=True):
    jsonrpc: str
    id: int
    result: _RunResult


class _RawAnswer(msgspec.Struct, forbid_unknown_fields=True):
    jsonrpc: str
    id: int
    result: _RawRunResult


class Output(msgspec.Struct, gc=False):
    """A succeeded task's output: its JSON bytes, or its value when it was decoded for a
    Python caller as it arrived; each form made from the other only if asked for. (Not
    tracked by the garbage collector: it holds decoded JSON, which has no cycles.)"""

    raw: msgspec.Raw | None
    value: Any
    size: int  # bytes held, for `kept_bytes`

    @property
    def decoded(self) -> bool:
        return self.raw is None

    def json(self) -> msgspec.Raw:
        return self.raw if self.raw is not None else msgspec.Raw(_encoder.encode(self.value))

    def python(self) -> Any:
        return self.value if self.decoded else msgspec.json.decode(self.raw)  # type: ignore[arg-type]


_encoder = msgspec.json.Encoder()
_value_answer = msgspec.json.Decoder(_ValueAnswer)
_raw_answer = msgspec.json.Decoder(_RawAnswer)


def _read_value(line: bytes) -> tuple[int, Output]:
    answer = _value_answer.decode(line)
    return answer.id, Output(None, answer.result.output, len(line))


def _read_raw(line: bytes) -> tuple[int, Output]:
    answer = _raw_answer.decode(line)
    return answer.id, Output(answer.result.output, None, len(line))


def _output(result: Any) -> Output:
    """What a `task/run` answer's decoder made of it, or its raw result where the answer
    took the usual way (another layout, or a result that is not an object)."""
    if isinstance(result, Output):
        return result
    return Output(raw_output_of(result), None, len(result))


class TaskResult(msgspec.Struct):
    """What `corral run --json` prints and the Python API returns."""

    task_id: str
    status: str
    output: Any
    error: TaskError | None
    attempts: list[Attempt]


class _TaskHead(msgspec.Struct):
    """What `corral task ID` and a line of `corral tasks` begin with (in this order)."""

    task_id: str
    agent: str
    status: str
    priority: int
    created: float
    started: float | None
    finished: float | None


class TaskInfo(_TaskHead):
    tool_calls: int
    progress: Any
    output: Any
    error: TaskError | None
    attempts: list[Attempt]
    # the output was dropped from memory to bound it (no journal to read it back from)
    output_dropped: bool = False


class TaskSummary(_TaskHead):
    """One line of `corral tasks`."""

    attempts: int


class TaskRecord(msgspec.Struct, kw_only=True):
    """An unfinished task as a journal gives it back after a restart."""

    seq: int
    task_id: str
    agent: str
    input: msgspec.Raw
    priority: int
    timeout: float
    retries_left: int
    created: float
    started: float | None
    status: str
    tool_calls: int = 0
    attempts: list[Attempt] = []


class TaskJournal(Protocol):
    """Where tasks are made durable; the engine works without one.

    `write` is called on the loop when a task is accepted and whenever it changes; it must
    not block (snapshot the task, write later, in batches). The engine may drop a finished
    task's input and output from memory once `write` has returned.
    """

    def write(self, task: Task) -> None: ...

    def behind(self) -> bool:
        """True when writes are waiting in memory past the journal's bound: callers that
        can wait (the Python API's `run`) then wait for `committed()`."""

    async def committed(self) -> None:
        """Return once everything written so far is durable; raise if it cannot be."""

    async def load(self, task_id: str) -> TaskInfo | None:
        """A task no longer (wholly) in memory."""

    async def query(self, *, agent: str | None, status: str | None, since: float | None,
                    limit: int) -> list[TaskSummary]:
        """Tasks created at or after `since` (wall time), oldest first, the newest `limit`."""


class Task:
    __slots__ = (
        "agent", "attempts", "created", "done", "error", "finished",
        "id", "input", "journaled", "out", "output_dropped", "priority", "progress",
        "replica", "retries_left", "seq", "started", "status", "timeout", "timer",
        "tool_calls", "values", "watchers",
    )

    def __init__(self, agent: str, raw_input: msgspec.Raw, priority: int, timeout: float,
                 retries: int, seq: int) -> None:
        self.id = uuid.uuid4().hex[:12]
        self.agent = agent
        self.input = raw_input
        self.priority = priority
        self.timeout = timeout
        self.retries_left = retries
        self.seq = seq
        self.created = time.time()
        self.started: float | None = None
        self.finished: float | None = None
        self.status = "queued"
        # the output, read from the worker's answer in one pass: as Python values when
        # the caller wants them (`values`) and no journal needs the bytes, else as bytes
        # forwarded as they came
        self.out: Output | None = None
        self.values = False
        self.output_dropped = False  # left in the journal, or dropped to bound memory
        self.journaled = False  # a journal has the input
        self.error: TaskError | None = None
        # a tuple once finished: then the garbage collector stops looking at it (module doc)
        self.attempts: Sequence[Attempt] = []
        self.progress: Any = None
        self.tool_calls = 0
        self.replica: Replica | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.watchers: list[Callable[[str, Any], None]] | None = []  # None once finished

    def watch(self, watcher: Callable[[str, Any], None]) -> None:
        """`watcher(kind, data)` hears "progress" and then "done" (with the result)."""
        if self.watchers is not None:
            self.watchers.append(watcher)

    def unwatch(self, watcher: Callable[[str, Any], None]) -> None:
        if self.watchers is not None and watcher in self.watchers:
            self.watchers.remove(watcher)

    @property
    def output(self) -> Any:
        """The output as Python values."""
        return None if self.out is None else self.out.python()

    @property
    def raw_output(self) -> msgspec.Raw | None:
        """The output's JSON bytes, to send on without a decode and an encode."""
        return None if self.out is None else self.out.json()

    @property
    def raw_result(self) -> msgspec.Raw | None:
        """The `task/run` result, `{"output": ...}`, as a journal stores it."""
        out = self.raw_output
        return None if out is None else msgspec.Raw(b"".join((b'{"output":', out, b"}")))

    def result(self, *, decode: bool = False) -> TaskResult:
        """The outcome; `output` stays the worker's JSON bytes (`msgspec.Raw`, encoded as
        is when sent on) unless `decode` asks for Python values (the Python API)."""
        output = self.output if decode else self.raw_output
        return TaskResult(self.id, self.status, output, self.error, list(self.attempts))

    def info(self) -> TaskInfo:
        return TaskInfo(self.id, self.agent, self.status, self.priority, self.created,
                        self.started, self.finished, self.tool_calls, self.progress,
                        self.raw_output, self.error, list(self.attempts), self.output_dropped)

    def summary(self) -> TaskSummary:
        return TaskSummary(self.id, self.agent, self.status, self.priority, self.created,
                           self.started, self.finished, len(self.attempts))


class TokenBucket:
    """`rate_per_minute` admissions a minute, with at most a minute's worth in a burst."""

    def __init__(self, per_minute: float) -> None:
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, per_minute)
        self.tokens = self.capacity
        self.stamp = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class AgentTasks:
    """One agent's queue, counters and latency window."""

    def __init__(self, per_minute: float) -> None:
        # (-priority, seq, task): seq is unique, so the order is total and a Task is never
        # compared; only queued tasks are in the heap (a cancelled one leaves it at once)
        self.heap: list[tuple[int, int, Task]] = []
        self.bucket = TokenBucket(per_minute) if per_minute else None
        self.counts = dict.fromkeys(
            ("accepted", "succeeded", "failed", "timed_out", "cancelled", "lost", "retried",
             "refused"), 0)
        self.latencies: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self.running = 0

    @property
    def depth(self) -> int:
        """Tasks waiting: derived from the queue itself, so it cannot drift."""
        return len(self.heap)

    def remove(self, task: Task) -> None:
        """Take a waiting task out of the queue (it was cancelled)."""
        self.heap = [e for e in self.heap if e[2] is not task]
        heapq.heapify(self.heap)

    def stats(self) -> dict[str, Any]:
        finished = sum(self.counts[k] for k in TERMINAL)
        lat = sorted(self.latencies)

        def pct(p: float) -> float | None:
            if not lat:
                return None
            return round(lat[min(len(lat) - 1, int(p / 100 * len(lat)))] * 1000, 3)

        return {
            **self.counts,
            "success_rate": round(self.counts["succeeded"] / finished, 4) if finished else None,
            "queue_depth": self.depth,
            "running": self.running,
            "latency_ms": {"p50": pct(50), "p95": pct(95), "p99": pct(99),
                           "window": len(lat)},
        }


ToolRouter = Callable[["Replica", str, dict[str, Any], "Task | None"], Any]


class TaskManager:
    def __init__(self, sup: Supervisor, *, tool_router: ToolRouter,
                 tool_lister: Callable[[Replica], Any], journal: TaskJournal | None = None,
                 kept: int = FINISHED_KEPT, kept_bytes: int = FINISHED_KEPT_BYTES) -> None:
        self.sup = sup
        self.journal = journal
        self.kept = kept
        self.kept_bytes = kept_bytes
        self.active: dict[str, Task] = {}  # queued and running
        self.finished: OrderedDict[str, Task] = OrderedDict()  # in the order they ended
        # finished tasks still holding an output, and those outputs' bytes
        self._holding: OrderedDict[str, Task] = OrderedDict()
        self._held_bytes = 0
        self.memory = Releaser()  # the payloads let go go back to the system (memory.py)
        self._done: asyncio.Future[None] | None = None  # the `done` of every finished task
        self.by_agent: dict[str, AgentTasks] = {}
        self._seq = itertools.count()
        self.tool_router = tool_router
        self.tool_lister = tool_lister
        sup.worker_notifications["task/progress"] = self._on_progress
        sup.worker_methods["tools/call"] = self._on_tool_call
        sup.worker_methods["tools/list"] = self._on_tool_list

    def _agent_tasks(self, agent: Agent) -> AgentTasks:
        q = self.by_agent.get(agent.name)
        if q is None:
            q = self.by_agent[agent.name] = AgentTasks(agent.spec.rate_per_minute)
        return q

    # -- admission ------------------------------------------------------------------------
    def submit(self, agent_name: str, task_input: Any, *, timeout: float | None = None,
               priority: int = 0, values: bool = False) -> Task:
        """Accept a task or refuse it at once with the reason. `values`: the caller reads
        the output as Python values (so it is decoded once, as it arrives)."""
        agent = self.sup.agent(agent_name)
        q = self._agent_tasks(agent)
        refusal = self._refusal(agent)
        if refusal:
            q.counts["refused"] += 1
            raise RpcError(jsonrpc.REFUSED, refusal)
        raw = task_input if isinstance(task_input, msgspec.Raw) else msgspec.Raw(
            encode_input(task_input))
        if len(raw) > MAX_INPUT_BYTES:
            q.counts["refused"] += 1
            raise RpcError(jsonrpc.INVALID_PARAMS, f"input too large: {len(raw)} bytes is over "
                                                   f"the {MAX_INPUT_BYTES}-byte limit")
        if timeout is not None and timeout <= 0:
            raise RpcError(jsonrpc.INVALID_PARAMS, "timeout must be > 0")
        if q.bucket is not None and not q.bucket.take():
            q.counts["refused"] += 1
            raise RpcError(jsonrpc.REFUSED, f"rate limit: agent {agent.name} takes "
                                            f"{agent.spec.rate_per_minute:g} tasks a minute")
        if self._free_replica(agent) is None and q.depth >= agent.spec.max_queue:
            q.counts["refused"] += 1
            raise RpcError(jsonrpc.REFUSED, f"queue full: agent {agent.name} has "
                                            f"{q.depth} tasks waiting (max_queue "
                                            f"{agent.spec.max_queue})")
        task = Task(agent.name, raw, priority, timeout or agent.spec.task_timeout,
                    agent.spec.retries, next(self._seq))
        task.values = values
        q.counts["accepted"] += 1
        self.active[task.id] = task
        self._journal(task)
        self._enqueue(q, task)
        self._pump(agent.name)
        return task

    def _refusal(self, agent: Agent) -> str | None:
        reps = agent.replicas
        if not reps:
            return f"agent {agent.name} has no replicas"
        if all(r.state == State.FAILED for r in reps):
            return f"agent {agent.name} is failed: {reps[0].reason}"
        if not any(r.state in LIVE or r.state == State.BACKOFF for r in reps):
            return f"agent {agent.name} is stopped"
        return None

    def _enqueue(self, q: AgentTasks, task: Task) -> None:
        # a retried task keeps its sequence number: it goes back before every task of its
        # priority that arrived after it, and ties are impossible
        heapq.heappush(q.heap, (-task.priority, task.seq, task))

    # -- dispatch -------------------------------------------------------------------------
    def _free_replica(self, agent: Agent) -> Replica | None:
        limit = agent.spec.max_concurrent_tasks
        best = None
        for r in agent.replicas:
            if r.state in SERVING and r.peer is not None and r.tasks_running < limit and (
                    best is None or r.tasks_running < best.tasks_running):
                best = r
        return best

    def pump(self, agent_name: str) -> None:
        """Dispatch an agent's waiting tasks to free replicas (after one was replaced)."""
        self._pump(agent_name)

    def _pump(self, agent_name: str) -> None:
        agent = self.sup.agents.get(agent_name)
        q = self.by_agent.get(agent_name)
        if agent is None or q is None:
            return
        while q.heap:
            r = self._free_replica(agent)
            if r is None:
                return
            _, _, task = heapq.heappop(q.heap)
            self._start(task, r, q)

    def _start(self, task: Task, r: Replica, q: AgentTasks) -> None:
        assert r.peer is not None
        now = time.time()
        task.status = "running"
        task.started = task.started or now
        task.replica = r
        attempt = Attempt(r.index, r.pid, now)
        task.attempts = [*task.attempts, attempt]
        q.running += 1
        r.task_started(task.id)
        self._journal(task)
        # a large input goes out as a piece of its own (one writev, never copied into the
        # message), and the answer is read in one pass (a journal needs the output's bytes)
        read = _read_value if task.values and self.journal is None else _read_raw
        _, fut = r.peer.request_future(
            "task/run", {"task_id": task.id, "input": jsonrpc.SPLICE,
                         "deadline": now + task.timeout}, decode=read, piece=task.input)
        fut.add_done_callback(lambda f: self._on_reply(task, r, attempt, f))
        task.timer = asyncio.get_running_loop().call_later(
            task.timeout, self._on_timeout, task, r, attempt)

    def _on_reply(self, task: Task, r: Replica, attempt: Attempt, fut: asyncio.Future[Any]
                  ) -> None:
        if task.timer is not None and task.status == "running":
            task.timer.cancel()
            task.timer = None
        attempt.finished = time.time()
        q = self.by_agent.get(task.agent)
        if q is not None:
            q.running -= 1
        r.task_finished(task.id)
        exc = fut.exception() if not fut.cancelled() else RpcError(
            jsonrpc.REQUEST_CANCELLED, "cancelled")
        late = task.status in TERMINAL
        if late:  # timed out or cancelled before the worker answered
            attempt.error = attempt.error or (
                "answered after the task ended" if exc is None else getattr(exc, "message",
                                                                             str(exc)))
        elif exc is None:
            attempt.outcome = "succeeded"
            # the result is kept as its bytes, not looked into here: a 10 MB output costs
            # one decode for a Python caller, or a scan and a copy for a socket client
            self._finish(task, "succeeded", result=_output(fut.result()))
        elif not isinstance(exc, RpcError):
            attempt.outcome = "failed"
            self._finish(task, "failed", error=TaskError(jsonrpc.INTERNAL_ERROR, str(exc)))
        elif exc.code == jsonrpc.PEER_CLOSED:
            attempt.outcome, attempt.error = "lost", exc.message
            if task.retries_left > 0 and q is not None:
                task.retries_left -= 1
                q.counts["retried"] += 1
                task.status = "queued"
                task.replica = None
                self._journal(task)
                self._enqueue(q, task)
            else:
                self._finish(task, "lost", error=TaskError(exc.code, exc.message))
        elif exc.code == jsonrpc.REQUEST_CANCELLED:
            attempt.outcome = "cancelled"
            self._finish(task, "cancelled", error=TaskError(exc.code, exc.message))
        else:
            attempt.outcome, attempt.error = "failed", exc.message
            self._finish(task, "failed", error=TaskError(exc.code, exc.message, exc.data))
        if late:
            self._journal(task)  # the attempt's end, on a task already finished
        self._pump(task.agent)

    def _on_timeout(self, task: Task, r: Replica, attempt: Attempt) -> None:
        task.timer = None
        if task.status != "running":
            return
        attempt.outcome = "timed_out"
        self._finish(task, "timed_out", error=TaskError(
            jsonrpc.REQUEST_TIMEOUT, f"task timed out after {task.timeout:g} s"))
        self._stop_attempt(task, r, attempt, "timed out")

    def _stop_attempt(self, task: Task, r: Replica, attempt: Attempt, why: str) -> None:
        """Ask the worker to stop; if it has not answered within the grace, it is hung."""
        if r.peer is not None:
            r.peer.notify("task/cancel", {"task_id": task.id})

        grace = getattr(r.spec, "cancel_grace", CANCEL_GRACE)

        def check() -> None:
            if attempt.finished is None and r.state in SERVING:
                r.take_down(f"hung: task {task.id} {why}, and did not stop within "
                            f"{grace:g} s of task/cancel", graceful=False)

        asyncio.get_running_loop().call_later(grace, check)

    def _finish(self, task: Task, status: str, *, result: Output | None = None,
                error: TaskError | None = None) -> None:
        if task.status in TERMINAL:
            return  # never twice
        task.status = status
        task.out = result
        task.error = error
        task.finished = time.time()
        q = self.by_agent.get(task.agent)
        if q is not None:
            q.counts[status] += 1
            q.latencies.append(task.finished - task.created)
        self._journal(task)
        self._retain(task)
        done, task.done = task.done, self._finished()
        if not done.done():
            done.set_result(None)
        watchers, task.watchers = task.watchers, None
        for w in watchers or ():
            w("done", task.result())
        # what a finished task keeps is left with no container the garbage collector must
        # look into again (a tuple of untracked Attempts is untracked; Output is not
        # tracked; `done` is one future shared by all): 10,000 finished tasks made a full
        # collection of the supervisor take 28 ms, a stall of its loop
        task.attempts = tuple(task.attempts)

    def _finished(self) -> asyncio.Future[None]:
        if self._done is None:
            self._done = asyncio.get_running_loop().create_future()
            self._done.set_result(None)
        return self._done

    def _journal(self, task: Task) -> None:
        if self.journal is not None:
            self.journal.write(task)
            task.journaled = True

    def _retain(self, task: Task) -> None:
        """Keep of a finished task only what `corral task ID` shows cheaply (module doc)."""
        self.active.pop(task.id, None)
        self.memory.let_go(len(task.input))
        task.input = msgspec.Raw(b"")
        task.replica = None
        size = task.out.size if task.out is not None else 0
        self.finished[task.id] = task
        if size:
            self._holding[task.id] = task
            self._held_bytes += size
        while self._held_bytes > self.kept_bytes and self._holding:
            _, old = self._holding.popitem(last=False)
            self._drop_output(old)
        while len(self.finished) > self.kept:
            _, old = self.finished.popitem(last=False)
            if self._holding.pop(old.id, None) is not None:
                self._drop_output(old)

    def _drop_output(self, task: Task) -> None:
        size = task.out.size if task.out is not None else 0
        self._held_bytes -= size
        self.memory.let_go(size)
        task.out, task.output_dropped = None, True

    # -- after a restart ------------------------------------------------------------------
    def restore(self, records: Iterable[TaskRecord], next_seq: int) -> list[Task]:
        """Take back a journal's unfinished tasks (in their order): queued ones wait again;
        one that was running has lost its attempt to the restart and is retried when its
        agent has retries left, else ends `lost`. New tasks are numbered from `next_seq`."""
        restored: list[Task] = []
        now = time.time()
        for rec in records:
            task = Task(rec.agent, rec.input, rec.priority, rec.timeout, rec.retries_left,
                        rec.seq)
            task.id, task.created, task.started = rec.task_id, rec.created, rec.started
            task.tool_calls, task.attempts, task.journaled = rec.tool_calls, rec.attempts, True
            agent = self.sup.agents.get(rec.agent)
            self.active[task.id] = task
            restored.append(task)
            q = self._agent_tasks(agent) if agent is not None else None
            if q is not None:
                q.counts["accepted"] += 1
            if rec.status == "running":
                for a in task.attempts:
                    if a.outcome == "running":
                        a.outcome, a.error, a.finished = "lost", LOST_IN_RESTART, now
                if q is None or task.retries_left <= 0:
                    self._finish(task, "lost", error=TaskError(jsonrpc.PEER_CLOSED,
                                                                LOST_IN_RESTART))
                    continue
                task.retries_left -= 1
                q.counts["retried"] += 1
            if q is None:
                self._finish(task, "lost", error=TaskError(
                    jsonrpc.PEER_CLOSED, f"{LOST_IN_RESTART}: agent {rec.agent} no longer "
                                         "exists"))
                continue
            self._journal(task)
            self._enqueue(q, task)
        self._seq = itertools.count(next_seq)
        # they wait for their agent's replicas to start (an agent that fails or is stopped
        # ends them, as for any waiting task; one not started waits until it is)
        for name in {t.agent for t in restored}:
            self._pump(name)
        return restored

    # -- the API --------------------------------------------------------------------------
    async def run(self, agent: str, task_input: Any, *, timeout: float | None = None,
                  priority: int = 0) -> TaskResult:
        task = self.submit(agent, task_input, timeout=timeout, priority=priority, values=True)
        if self.journal is not None and self.journal.behind():
            # a journal that writes slower than tasks finish must not gather an unbounded
            # backlog in memory: wait for it (the task runs meanwhile)
            await self.journal.committed()
        await asyncio.shield(task.done)
        return await self.outcome(task, decode=True)

    async def outcome(self, task: Task, *, decode: bool = False) -> TaskResult:
        """A finished task's result, its output read back from the journal if it has
        already been dropped from memory."""
        if task.output_dropped and self.journal is not None:
            info = await self.journal.load(task.id)
            if info is not None and info.output is not None:
                out = msgspec.json.decode(info.output) if decode else info.output
                return TaskResult(task.id, task.status, out, task.error, list(task.attempts))
        return task.result(decode=decode)

    async def committed(self) -> None:
        """Everything so far is durable (at once without a journal)."""
        if self.journal is not None:
            await self.journal.committed()

    async def map(self, agent: str, inputs: Iterable[Any], *, concurrency: int = 8,
                  timeout: float | None = None) -> list[TaskResult]:
        """Run many tasks with at most `concurrency` at once; results in input order.
        A refused task is a result with status "refused" rather than an exception."""
        sem = asyncio.Semaphore(concurrency)

        async def one(x: Any) -> TaskResult:
            async with sem:
                try:
                    return await self.run(agent, x, timeout=timeout)
                except RpcError as exc:
                    return TaskResult("", "refused", None, TaskError(exc.code, exc.message), [])

        return list(await asyncio.gather(*(one(x) for x in inputs)))

    def get(self, task_id: str) -> Task:
        """A task in memory (every unfinished one, the last `kept` finished ones)."""
        task = self.active.get(task_id) or self.finished.get(task_id)
        if task is None:
            raise jsonrpc.not_found("task", task_id)
        return task

    async def info(self, task_id: str, *, wait: bool = False) -> TaskInfo:
        """What `corral task ID` shows, from memory or else from the journal."""
        task = self.active.get(task_id) or self.finished.get(task_id)
        if task is not None and wait:
            await asyncio.shield(task.done)
        if task is not None and not (task.output_dropped and self.journal is not None):
            return task.info()
        info = await self.journal.load(task_id) if self.journal is not None else None
        if info is None:
            raise jsonrpc.not_found("task", task_id)
        return info

    async def query(self, *, agent: str | None = None, status: str | None = None,
                    since: float | None = None, limit: int = 100) -> list[TaskSummary]:
        """Tasks created since `since` (wall time), newest last: from the journal when
        there is one (every task until pruned), else from memory."""
        if limit <= 0:
            return []
        if self.journal is not None:
            return await self.journal.query(agent=agent, status=status, since=since,
                                            limit=limit)
        tasks = sorted([*self.active.values(), *self.finished.values()], key=lambda t: t.seq)
        return [t.summary() for t in tasks
                if (agent is None or t.agent == agent) and (status is None or t.status == status)
                and (since is None or t.created >= since)][-limit:]

    def cancel(self, task_id: str) -> Task:
        task = self.get(task_id)
        if task.status in TERMINAL:
            raise RpcError(jsonrpc.CONFLICT, f"task {task_id} already finished ({task.status})")
        if task.status == "queued":
            self.by_agent[task.agent].remove(task)
            self._finish(task, "cancelled", error=TaskError(
                jsonrpc.REQUEST_CANCELLED, "cancelled while queued"))
            return task
        attempt = task.attempts[-1]
        attempt.outcome = "cancelled"
        if task.timer is not None:
            task.timer.cancel()
            task.timer = None
        replica = task.replica
        assert replica is not None
        self._finish(task, "cancelled", error=TaskError(jsonrpc.REQUEST_CANCELLED,
                                                        "cancelled while running"))
        self._stop_attempt(task, replica, attempt, "was cancelled")
        return task

    def list(self, agent: str | None = None) -> list[Task]:
        """The tasks in memory, in the order they were accepted."""
        tasks = sorted([*self.active.values(), *self.finished.values()], key=lambda t: t.seq)
        return [t for t in tasks if agent is None or t.agent == agent]

    def stats(self) -> dict[str, Any]:
        # every agent has an entry, zeros until its first task (its queue is made then)
        per_agent = {name: (self.by_agent.get(name) or AgentTasks(0)).stats()
                     for name in self.sup.agents}
        total = {k: sum(s[k] for s in per_agent.values())
                 for k in ("accepted", "succeeded", "failed", "timed_out", "cancelled", "lost",
                           "retried", "refused", "queue_depth", "running")}
        finished = sum(total[k] for k in TERMINAL)
        total["success_rate"] = round(total["succeeded"] / finished, 4) if finished else None
        return {"total": total, "agents": per_agent}

    def replica_ready(self, r: Replica) -> None:
        """An agent replica answered initialize: it takes the queue's tasks."""
        self._pump(r.name)

    def replica_down(self, r: Replica) -> None:
        """An agent replica is Terminated or Failed."""
        # `terminated` comes before the restart policy decides: look once it has
        asyncio.get_running_loop().call_soon(self._drain_if_down, r.name)

    def _drain_if_down(self, name: str) -> None:
        """Tasks waiting for an agent that will not run again end now, with the reason."""
        agent = self.sup.agents.get(name)
        q = self.by_agent.get(name)
        if agent is None or q is None or not q.depth or self._refusal(agent) is None:
            return
        if self.sup.closing and self.journal is not None:
            return  # they stay queued in the journal, for the next daemon
        if any(x.state == State.FAILED for x in agent.replicas):
            status, error = "lost", TaskError(jsonrpc.PEER_CLOSED, self._refusal(agent) or "")
        elif all(x._stay_down for x in agent.replicas):
            status, error = "cancelled", TaskError(jsonrpc.REQUEST_CANCELLED,
                                                   f"agent {name} was stopped")
        else:
            last = next((x.last_exit for x in agent.replicas if x.last_exit), "unknown")
            status, error = "lost", TaskError(jsonrpc.PEER_CLOSED,
                                              f"agent {name} is down: {last}")
        self._drain(q, status, error)

    def _drain(self, q: AgentTasks, status: str, error: TaskError) -> None:
        """End every task still waiting in `q`."""
        waiting = [task for _, _, task in sorted(q.heap)]
        q.heap.clear()
        for task in waiting:
            self._finish(task, status, error=error)

    def forget_agent(self, name: str) -> None:
        """An agent was removed: its queued tasks are cancelled."""
        q = self.by_agent.pop(name, None)
        if q is not None:
            self._drain(q, "cancelled", TaskError(jsonrpc.REQUEST_CANCELLED,
                                                  f"agent {name} was removed"))

    # -- from workers ---------------------------------------------------------------------
    def _task_of(self, r: Replica, params: dict[str, Any]) -> Task | None:
        tid = params.get("task_id")
        task = self.active.get(str(tid)) if tid is not None else None
        if task is None or task.replica is not r or task.status != "running":
            return None
        return task

    def report_progress(self, task: Task, params: dict[str, Any]) -> None:
        task.progress = params
        for w in list(task.watchers or ()):
            w("progress", params)

    def _on_progress(self, r: Replica, params: dict[str, Any]) -> None:
        task = self._task_of(r, params)
        if task is None:
            r.note(f"ignored task/progress for a task it is not running: {params!r:.200}")
            return
        params.pop("task_id", None)
        self.report_progress(task, params)

    def _on_tool_call(self, r: Replica, params: dict[str, Any]) -> Any:
        name = params.get("name")
        if not isinstance(name, str):
            raise RpcError(jsonrpc.INVALID_PARAMS, "tools/call: name must be a string")
        arguments = params.get("arguments", {})
        if arguments is None:
            arguments = {}
        if not isinstance(arguments, dict):
            raise RpcError(jsonrpc.INVALID_PARAMS, "tools/call: arguments must be an object")
        allow = list(getattr(r.spec, "tools", []))
        if not allowed(name, allow):
            raise RpcError(jsonrpc.TOOL_NOT_ALLOWED,
                           f"tool {name} is not allowed for agent {r.name} (its tools "
                           f"allowlist: {allow})")
        task = self._task_of(r, params)
        if task is not None:
            budget = getattr(r.spec, "max_tool_calls_per_task", 0)
            if task.tool_calls >= budget:
                raise RpcError(jsonrpc.TOOL_BUDGET_EXCEEDED,
                               f"tool budget exceeded: task {task.id} has made {task.tool_calls}"
                               f" tool calls (max_tool_calls_per_task {budget})")
            task.tool_calls += 1
        return self.tool_router(r, name, arguments, task)

    def _on_tool_list(self, r: Replica, params: dict[str, Any]) -> Any:
        return self.tool_lister(r)
