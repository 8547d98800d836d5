"""What a task is: its statuses, the Task itself, and a journal's record of it. The
structs that show it (`corral run`, `corral task ID`, `corral tasks`) are corral.taskviews',
shared with the CLI."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import msgspec

from ...taskoptions import NO_OPTIONS, TaskOptions
from ...taskviews import (
    Attempt,
    ModelUsage,
    TaskFailure,
    TaskInfo,
    TaskResult,
    TaskSummary,
    queue_wait,
)
from ..stream import Subscription
from .chunks import DROPPED, OutputJournal
from .ids import new_id
from .payload import Output
from .taskmachine import TaskMachine

if TYPE_CHECKING:
    from ...askviews import Ask, AskRequest
    from ...tracecontext import FromId, TaskTrace
    from ..replica import Replica
    from .spawntree import Lineage
    from .stepjournal import StepJournal


LOST_IN_RESTART = "daemon restarted"


class TaskRecord(msgspec.Struct, kw_only=True):
    """An unfinished task as a journal gives it back after a restart (in the order they
    were accepted)."""

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
    usage: ModelUsage | None = None
    checkpoint: msgspec.Raw | None = None  # its last task/checkpoint (tasks/steps.py)
    not_before: float | None = None
    options: TaskOptions = msgspec.field(default_factory=lambda: NO_OPTIONS)
    tenant: str | None = None  # its agent's when it was accepted (Task.tenant)


class CompactTask:
    """A suspended task as a journal gives it back after a restart, to be kept compact
    while it waits for a person (suspension.py keeps its id and `seq` only): what finds
    it (its id, its agent, its tenant when it was accepted) and its place among the tasks
    (`seq`, as Task's); the rest is its journal row's, read back whole when it resumes,
    ends or is waited on (TaskManager.live). `settled` False when its stopped attempt has
    yet to be seen ended (the restart ends it: the task is rebuilt at once), `seq` its
    arrival until the engine gives it its place (in place: thousands are read back)."""

    __slots__ = ("agent", "seq", "settled", "task_id", "tenant")
    status = "suspended"

    def __init__(self, task_id: str, agent: str, tenant: str | None, seq: int,
                 settled: bool = True) -> None:
        self.task_id = task_id
        self.agent = agent
        self.tenant = tenant
        self.seq = seq
        self.settled = settled


# what a journal gives back of its unfinished tasks after a restart
Unfinished = TaskRecord | CompactTask


class Waiter(Protocol):
    """What a task's end settles for its submitter: a future, or a lane of a map."""

    def done(self) -> bool: ...

    def set_result(self, result: None, /) -> None: ...


class Task(TaskMachine):
    """A task: its status and retries left are its machine's (taskmachine.py), which
    alone moves them."""

    __slots__ = (
        "_done",
        "agent",
        "attempts",
        "checkpoint",
        "created",
        "decoded",
        "due",
        "error",
        "finished",
        "home",
        "id",
        "input",
        "journaled",
        "not_before",
        "options",
        "out",
        "output_dropped",
        "priority",
        "progress",
        "replica",
        "seq",
        "session",
        "started",
        "tenant",
        "timeout",
        "tool_calls",
        "trace",
        "usage",
        "waiter",
        "watchers",
    )

    # whether this node's journal keeps the task: not one a cluster keeps (its record in
    # Redis is what survives, and a restart here must not run it again beside a takeover)
    journal_here = True
    # its session's turns are kept in order here (Sessions), not elsewhere (a cluster's)
    session_here = True
    # a task kept elsewhere (a cluster's claim): where its steps, its session's turns,
    # its spawns and its asks of a person are, given when the claim made it
    # (corral.cluster.queue.ClusterTask)
    steps_kept: StepJournal | None = None
    turns_kept: TurnsElsewhere | None = None
    spawns_kept: SpawnsElsewhere | None = None
    asks_kept: AsksElsewhere | None = None

    def __init__(self, agent: str, raw_input: msgspec.Raw, priority: int, timeout: float,
                 retries: int, seq: int, task_id: str | None = None,
                 now: float | None = None) -> None:
        TaskMachine.__init__(self, retries)
        self.id = new_id() if task_id is None else task_id
        self.agent = agent
        # where everything durable about it is kept, chosen once: the engine's when it
        # accepts it, its cluster's when a node claims it; until then nowhere
        self.home: TaskHome = NOWHERE
        self.input = raw_input
        self.priority = priority
        self.timeout = timeout
        self.options = NO_OPTIONS  # as its submitter asked (its retry policy among them)
        self.session: str | None = None  # the session of its agent it is a turn of
        # the tenant its agent was of when it was accepted: whose record it stays, whoever
        # holds the agent's name later (DESIGN 20); None: not known (an engine's own)
        self.tenant: str | None = None
        # it may not start before this wall time (a delay, a retry's backoff): delays.py
        self.not_before: float | None = None
        self.seq = seq  # arrival in this process: the queue's tie-break, never stored
        self.created = time.time() if now is None else now
        # when it was to start: its acceptance, or the time a delay asked for (a wait the
        # caller chose is no wait in the queue, nor its agent's latency)
        self.due = self.created
        self.started: float | None = None
        self.finished: float | None = None
        # the output, read from the worker's answer in one pass and kept as its bytes
        # (forwarded as they came; decoded for a Python caller when it asks)
        self.out: Output | None = None
        # a Python caller takes its output as values (run, map): its answer is decoded
        # into them as it is read (payload.read_values)
        self.decoded = False
        self.output_dropped = False  # left in the journal, or dropped to bound memory
        self.journaled = False  # handed to a journal, input and all (its first row may wait)
        self.error: TaskFailure | None = None
        # a tuple, never a list kept (dispatch makes a new one per attempt, a finished task
        # a tuple): a queued task is then one object the garbage collector looks into, not
        # three, and a flood of queued tasks makes its full passes fewer and shorter
        self.attempts: Sequence[Attempt] = ()
        self.progress: Any = None
        self.tool_calls = 0
        self.usage: ModelUsage | None = None  # reported by its worker (budget.py)
        # its last task/checkpoint, given to a retried attempt (steps.py)
        self.checkpoint: msgspec.Raw | None = None
        self.replica: Replica | None = None
        # done when the task is: made when first asked for (most tasks have only `waiter`)
        self._done: asyncio.Future[None] | None = None
        # the submitter's own: run()'s future, or a lane of map() (lanes.py)
        self.waiter: Waiter | None = None
        # its own subscribers (Task.watch): () until the first (nothing for the collector
        # to look into), None once finished
        self.watchers: tuple[Subscription, ...] | None = ()
        # its trace, when the engine traces (tracing.py)
        self.trace: TaskTrace | FromId | None = None

    @property
    def done(self) -> asyncio.Future[None]:
        """Done when the task has finished; shared: await it shielded."""
        done = self._done
        if done is None:
            done = self._done = asyncio.get_running_loop().create_future()
        return done

    def watch(self, watcher: Callable[[TaskProgress | TaskFinished], None]
              ) -> Subscription | None:
        """`watcher(event)` hears this task's `TaskProgress` and then its `TaskFinished`,
        as the engine's Stream delivers (contained and counted): a channel of the task's
        own, so that a caller waiting for one task costs the other tasks nothing. None
        once the task has finished (there is nothing more to hear)."""
        if self.watchers is None:
            return None
        sub = Subscription(watcher, (TaskProgress, TaskFinished))
        self.watchers = (*self.watchers, sub)
        return sub

    def unwatch(self, sub: Subscription | None) -> None:
        if self.watchers and sub is not None:
            self.watchers = tuple(s for s in self.watchers if s is not sub)

    @property
    def awaited(self) -> bool:
        """Whether someone holds on to this Task for its end (its submitter, a wait for
        it, its watchers): it is not to be stood in for by another."""
        return self.waiter is not None or self._done is not None or bool(self.watchers)

    @property
    def attempt(self) -> int:
        """The number of its latest attempt, from 1 (0 before the first): with the task's
        id, the agent's idempotency key for its own side effects."""
        return len(self.attempts)

    @property
    def output(self) -> Any:
        """The output as Python values."""
        return None if self.out is None else self.out.python()

    @property
    def raw_output(self) -> msgspec.Raw | None:
        """The output's JSON bytes, to send on without a decode and an encode."""
        return None if self.out is None else self.out.raw

    @property
    def raw_result(self) -> msgspec.Raw | None:
        """The `task/run` result, `{"output": ...}`, as a journal stores it."""
        out = self.raw_output
        return None if out is None else msgspec.Raw(b"".join((b'{"output":', out, b"}")))

    def result(self, *, decode: bool = False) -> TaskResult:
        """The outcome; `output` stays the worker's JSON bytes (`msgspec.Raw`, encoded as
        is when sent on) unless `decode` asks for Python values (the Python API)."""
        out = self.out
        output = None if out is None else out.python() if decode else out.raw
        return TaskResult(self.id, self.status, output, self.error, tuple(self.attempts))

    def info(self) -> TaskInfo:
        return TaskInfo(self.id, self.agent, self.status, self.priority, self.created,
                        self.started, self.finished, self.tool_calls, self.progress,
                        self.raw_output, self.error, list(self.attempts), self.output_dropped,
                        self.usage, queue_wait=queue_wait(self.due, self.started),
                        not_before=self.not_before if self.queued else None,
                        tenant=self.tenant, options=self.options)

    def summary(self) -> TaskSummary:
        return TaskSummary(self.id, self.agent, self.status, self.priority, self.created,
                           self.started, self.finished, len(self.attempts),
                           tenant=self.tenant, options=self.options)



# the tasks' events on the engine's Stream (and to a task's own watchers, Task.watch)
class TaskHome(Protocol):
    """Where everything durable about a task is kept (DESIGN 25): its row, its steps, its
    live output, its session's turns, its spawns, its asks of a person. Chosen once, when
    the task is accepted (the engine's: nodehome.NodeHome, SQLite) or claimed (its
    cluster's: corral.cluster.home.ClusterHome, Redis); the engine asks it and never which
    one it is. A home holds records and answers atomic questions: the waits, deadlines,
    retry rule and replay above it are the engine's, written once."""

    @property
    def steps(self) -> StepJournal | None:
        """Where its steps are written and read back; None: nowhere (a next attempt
        would find none: its calls run again)."""

    @property
    def outputs(self) -> OutputJournal:
        """Where its live output's chunks are kept and read back."""

    def record(self, task: Task) -> None:
        """Its row (status, attempts, checkpoint) kept where a restart finds it."""


class Nowhere:
    """The home of a task made apart from an engine's intake and a cluster's claim (a
    claim given back as it is made, a unit's): it keeps nothing."""

    __slots__ = ()

    @property
    def steps(self) -> StepJournal | None:
        return None

    @property
    def outputs(self) -> OutputJournal:
        return DROPPED

    def record(self, task: Task) -> None:
        return None


NOWHERE: TaskHome = Nowhere()


class TurnsElsewhere(Protocol):
    """Where the turns of a session are kept in order outside this engine (a cluster's
    Redis: corral.cluster.clustersessions.ClusterSessions), for the tasks that carry it
    (`Task.turns_kept`)."""

    def started(self, task: Task) -> msgspec.Raw | None:
        """The state the task's turn is given."""

    async def checkpoint(self, task: Task, state: Any) -> dict[str, Any]:
        """session/checkpoint: kept before it is answered."""


class AsksElsewhere(Protocol):
    """Where the asks of a person a task makes are kept outside this engine (a cluster's
    Redis: corral.cluster.clusterasks.ClusterAsks), for the tasks that carry it
    (`Task.asks_kept`): any node lists and decides them, and the node that takes the
    task over after this one died finds them."""

    async def ask(self, task: Task, req: AskRequest) -> Ask:
        """The ask of `req`'s call: the one the task made before under its key (pending
        or ended), else a new one, kept before this returns (RpcError: not kept)."""

    async def wait(self, ask: Ask) -> Ask:
        """The ask as it ended (at once when it has), its deadline kept."""

    def waits(self, task_id: str) -> bool:
        """Whether an attempt here waits on an ask of the task (another call of it may
        have ended its own)."""

    async def holds(self, task: Task) -> bool:
        """Whether this node's claim still holds the task where it is kept (RpcError:
        not read)."""

    async def suspend(self, task: Task, why: str) -> bool:
        """The waiting task's claim given back, the task suspended where its asks are
        kept, to be queued again there when they end (suspension.py); False: not (what
        it asked ended first, or it waits on something no next attempt takes up).
        RpcError: not written."""


class SpawnOrder(NamedTuple):
    """A child to spawn elsewhere, its bounds checked but its parent's `max_children`
    (counted where the spawns are kept, with the spawn itself)."""

    agent: str
    tenant: str  # its agent's, the parent's
    key: str  # the spawn's, within the parent
    raw_input: bytes
    timeout: float | None  # None: its agent's task_timeout where it runs
    retries: int | None  # None: its agent's retries where it runs
    lineage: Lineage  # its place in the tree
    max_children: int  # of the parent's agent
    max_queue: int  # of its agent, where the parent runs (0: unbounded, or not run there)


class SpawnReply(NamedTuple):
    """What a spawn kept elsewhere came to: its child (None: the parent has
    max_children already, `children` of them), and whether the key had it already (a
    spawn of the same key that came first, from another attempt of the parent)."""

    child: str | None
    children: int = 0
    had: bool = False


class SpawnsElsewhere(Protocol):
    """Where a task's spawns are kept outside this engine (a cluster's Redis:
    corral.cluster.clusterspawns.ClusterSpawns), for the tasks that carry it
    (`Task.spawns_kept`): its children are tasks kept there too, run on any node."""

    async def placed(self, task: Task, key: str) -> tuple[str | None, Lineage]:
        """The child the task spawned under `key` (None: none yet), and the task's own
        place in its tree."""

    async def serves(self, agent: str, tenant: str) -> bool:
        """Whether a task of the tenant's agent of the name would be run where the
        spawns are kept (else it is no agent to the parent)."""

    async def spawn(self, task: Task, order: SpawnOrder) -> SpawnReply:
        """The child once it is kept, submitted with its row (the row's child, `had`,
        when the key has one already); None and the children the task has when it has
        max_children already."""

    async def children(self, task: Task) -> set[str]:
        """The ids of the task's children."""

    async def outcome(self, child_id: str) -> dict[str, Any]:
        """`task/wait`'s answer for one child, once it has ended (asked for one child
        after another: a wait holds no more of where they are kept than one read)."""


class TaskProgress(NamedTuple):
    """A running task's worker (or a tool it called) reported how far it is:
    `{progress, total?, message?}` (`tool` too, from a tool's progress)."""

    task: Task
    progress: dict[str, Any]


class TaskFinished(NamedTuple):
    """A task ended, once, with its terminal status (a cluster node publishes the
    outcomes of its tasks from it)."""

    task: Task


class AttemptEnded(NamedTuple):
    """An attempt on a worker ended, its slot free: the task finished, or waits again
    (a retry, a hand-over). A drain counts the tasks still running by it."""

    task: Task
