"""What a task is: its statuses, the Task itself, and a journal's record of it (the structs
that show it are corral.taskviews', shared with the CLI)."""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Awaitable, Callable, Container, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import msgspec

from ... import jsonrpc
from ...jsonrpc import RpcError
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
from ..labels import NoLabels
from ..stream import Subscription
from .chunks import DROPPED, OutputJournal
from .ids import new_id
from .payload import Output
from .taskmachine import TaskMachine

if TYPE_CHECKING:
    from ...askviews import Ask, AskEnd, AskRequest
    from ...tracecontext import FromId, TaskTrace
    from ..labels import LabelStore
    from ..replica import Replica
    from .spawntree import Lineage
    from .stepjournal import StepJournal


LOST_IN_RESTART = "daemon restarted"


class TaskRecord(msgspec.Struct, kw_only=True):
    """An unfinished task as a journal gives it back after a restart, in acceptance order."""

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
    """A suspended task read back after a restart, kept compact while it waits (thousands
    are): the rest is its journal row's, read back whole when it resumes, ends or is waited
    on (TaskManager.live). `settled` False: its stopped attempt has yet to be seen ended."""

    __slots__ = ("agent", "seq", "settled", "task_id", "tenant")
    status = "suspended"

    def __init__(self, task_id: str, agent: str, tenant: str | None, seq: int,
                 settled: bool = True) -> None:
        self.task_id = task_id
        self.agent = agent
        self.tenant = tenant
        self.seq = seq
        self.settled = settled


Unfinished = TaskRecord | CompactTask


class Waiter(Protocol):
    """What a task's end settles for its submitter: a future, or a lane of a map."""

    def done(self) -> bool: ...

    def set_result(self, result: None, /) -> None: ...


class Task(TaskMachine):
    """A task: its status and retries left are its machine's (taskmachine.py)."""

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

    def __init__(self, agent: str, raw_input: msgspec.Raw, priority: int, timeout: float,
                 retries: int, seq: int, task_id: str | None = None,
                 now: float | None = None) -> None:
        TaskMachine.__init__(self, retries)
        self.id = new_id() if task_id is None else task_id
        self.agent = agent
        # chosen once: the engine's when it accepts it, its cluster's when a node claims it
        self.home: TaskHome = NOWHERE
        self.input = raw_input
        self.priority = priority
        self.timeout = timeout
        self.options = NO_OPTIONS  # as its submitter asked (its retry policy among them)
        self.session: str | None = None  # the session of its agent it is a turn of
        # its agent's tenant when accepted, whoever holds the name later; None: an engine's own
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
        self.out: Output | None = None  # kept as the worker's bytes, forwarded as they came
        # a Python caller's (run, map): its answer is decoded to values as it is read
        self.decoded = False
        self.output_dropped = False  # left in the journal, or dropped to bound memory
        self.journaled = False  # handed to a journal, input and all (its first row may wait)
        self.error: TaskFailure | None = None
        # a tuple, never a list: a queued task is then one object the garbage collector
        # looks into, not three (a flood of them makes its full passes fewer and shorter)
        self.attempts: Sequence[Attempt] = ()
        self.progress: Any = None
        self.tool_calls = 0
        self.usage: ModelUsage | None = None  # reported by its worker (budget.py)
        # its last task/checkpoint, given to a retried attempt (steps.py)
        self.checkpoint: msgspec.Raw | None = None
        self.replica: Replica | None = None
        # made when first asked for (most tasks have only `waiter`)
        self._done: asyncio.Future[None] | None = None
        # the submitter's own: run()'s future, or a lane of map() (lanes.py)
        self.waiter: Waiter | None = None
        # its subscribers (Task.watch): () till the first (nothing for the collector); None: ended
        self.watchers: tuple[Subscription, ...] | None = ()
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
        """`watcher(event)` hears this task's `TaskProgress`, then its `TaskFinished` (a channel of
        its own: a caller waiting for one task costs the others nothing). None once finished."""
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
        """Whether someone holds on to this Task for its end: no other may stand in."""
        return self.waiter is not None or self._done is not None or bool(self.watchers)

    @property
    def attempt(self) -> int:
        """The number of its latest attempt, from 1 (0 before the first): with the task's
        id, the agent's idempotency key for its own side effects."""
        return len(self.attempts)

    @property
    def output(self) -> Any:
        return None if self.out is None else self.out.python()

    @property
    def raw_output(self) -> msgspec.Raw | None:
        return None if self.out is None else self.out.raw

    @property
    def raw_result(self) -> msgspec.Raw | None:
        """The `task/run` result, `{"output": ...}`, as a journal stores it."""
        out = self.raw_output
        return None if out is None else msgspec.Raw(b"".join((b'{"output":', out, b"}")))

    def result(self, *, decode: bool = False) -> TaskResult:
        """The outcome; `output` stays JSON bytes unless `decode` asks for Python values."""
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


class TaskHome(Protocol):
    """Where everything durable about a task is kept, chosen once (nodehome.NodeHome, or a
    cluster's ClusterHome) and never asked which it is: records and atomic questions; the
    waits, deadlines, retry rule and replay above it are the engine's, written once."""

    @property
    def steps(self) -> StepJournal | None:
        """None: nowhere (a next attempt would find none: its calls run again)."""

    @property
    def outputs(self) -> OutputJournal: ...

    @property
    def turns(self) -> TurnStore: ...

    @property
    def spawns(self) -> SpawnStore: ...

    @property
    def asks(self) -> AskShelf: ...

    @property
    def labels(self) -> LabelStore:
        """Its labels and its session's (supervisor/labels.py)."""

    def record(self, task: Task) -> None:
        """Its row (status, attempts, checkpoint) kept where a restart finds it."""

    def queue_again(self, task: Task, at: float | None) -> bool:
        """A retry of it, due at `at` (None: at once), queued where every engine that may run it
        finds it: True if this home did (a cluster's: the engine lets it go); False: waits here."""


class Nowhere:
    """The home of a task made apart from an intake and a claim: it keeps nothing, its turns
    get no state, it spawns no child (one made here would be no other node's to find)."""

    __slots__ = ("asks", "spawns", "turns")
    steps: StepJournal | None = None
    outputs: OutputJournal = DROPPED
    labels: LabelStore = NoLabels()

    def __init__(self) -> None:
        self.turns: TurnStore = self
        self.spawns: SpawnStore = self
        self.asks: AskShelf = self

    def record(self, task: Task) -> None:
        return None

    def queue_again(self, task: Task, at: float | None) -> bool:
        return False

    async def keep(self, task: Task, req: AskRequest) -> Ask:
        # (one a node kept would not be found by the node that resumes the task)
        raise RpcError(jsonrpc.REFUSED, f"task {task.id} is the cluster's and its asks of "
                                        f"a person are not kept here: its {req.kind} "
                                        "was not asked")

    async def find(self, task: Task, key: str) -> Ask | None:
        return None

    async def read(self, ask_id: str) -> Ask | None:
        return None

    async def end(self, ask: Ask, end: AskEnd, by: str, data: Any = None) -> Ask:
        raise jsonrpc.not_found("ask", ask.id)

    async def withdraw(self, task_id: str) -> list[Ask]:
        return []

    def heed(self, ask: Ask) -> Ask | None:
        return None

    def unheed(self, ask: Ask) -> bool:
        return False

    async def give_back(self, task: Task, why: str) -> Resumer:
        return Resumer.NOBODY

    async def holds(self, task: Task) -> bool:
        return True

    def started(self, task: Task, replica: Replica) -> msgspec.Raw | None:
        return None

    async def checkpoint(self, task: Task, state: Any) -> dict[str, Any]:
        raise RpcError(jsonrpc.REFUSED, f"session/checkpoint: task {task.id} is the "
                                        "cluster's and its session is not kept here")

    async def placed(self, task: Task, key: str) -> tuple[str | None, Lineage]:
        raise _keeps_none(task)

    async def serves(self, agent: str, tenant: str) -> bool:
        return False

    async def spawn(self, task: Task, order: SpawnOrder) -> SpawnReply:
        raise _keeps_none(task)

    async def children(self, task: Task) -> Container[str]:
        return ()

    async def outcome(self, child_id: str) -> dict[str, Any]:
        raise RpcError(jsonrpc.INVALID_PARAMS, f"task/wait: task {child_id} is not kept here")


NOWHERE: TaskHome = Nowhere()


def _keeps_none(task: Task) -> RpcError:
    return RpcError(jsonrpc.REFUSED, f"task/spawn: task {task.id} is the cluster's and its "
                                     "spawns are not kept here")


class TurnStore(Protocol):
    """Where a session's turns are kept in order: sessions.Sessions, or a cluster's."""

    def started(self, task: Task, replica: Replica) -> msgspec.Raw | None:
        """The state the task's turn is given as it starts on `replica`."""

    async def checkpoint(self, task: Task, state: Any) -> dict[str, Any]:
        """session/checkpoint: kept before it is answered."""


class Resumer(enum.Enum):
    """Whom a suspension gave the waiting task to (AskShelf.give_back)."""

    NOBODY = 0  # no one: what it asked ended first, or a next attempt could not take it up
    ENGINE = 1  # this engine, which keeps it suspended and queues it when its asks end
    HOME = 2  # its home, which queues it again when its asks end: the engine lets it go


class AskShelf(Protocol):
    """Where a task's asks of a person are kept (inbox.Inbox, or a cluster's ClusterAsks):
    records and atomic questions only; their waits and deadlines are askwaits.py's."""

    async def keep(self, task: Task, req: AskRequest) -> Ask:
        """The ask of `req`'s call: the one the task made before under its key (pending
        or ended), else a new one, kept before this returns (RpcError: not kept)."""

    async def find(self, task: Task, key: str) -> Ask | None:
        """The task's ask under `key`, pending or ended; None: none yet."""

    async def read(self, ask_id: str) -> Ask | None: ...

    async def end(self, ask: Ask, end: AskEnd, by: str, data: Any = None) -> Ask:
        """The pending ask ended so, once: written and told (AskEnded) before this
        returns; the ask as it ended first when it had (one past its deadline where
        deadlines are kept late ends timed out). RpcError: not written (it stays
        pending), or CONFLICT to corral's end (a deadline's) while another is written."""

    def withdraw(self, task_id: str) -> Awaitable[list[Ask]]:
        """The ended task's pending asks, withdrawn and told once awaited (at the task's end)."""

    def heed(self, ask: Ask) -> Ask | None:
        """Its end, wherever it is written, told here from now on (AskEnded, AskHeard);
        the ask as it ended when that is known here already."""

    def unheed(self, ask: Ask) -> bool:
        """No one here waits on the ask now; True: its deadline is still this engine's
        to keep, False: kept where the ask is (a cluster's beat)."""

    async def give_back(self, task: Task, why: str) -> Resumer:
        """The waiting task suspended where its asks are kept, in one step that finds
        what it asked still pending (and no MCP server's elicitation among it: no next
        attempt takes its tool call up). RpcError: not written."""

    async def holds(self, task: Task) -> bool:
        """Whether this engine still holds the running task where it is kept (give_back lost)."""


class SpawnOrder(NamedTuple):
    """A child to spawn, its bounds checked but `max_children` (counted where spawns are kept)."""

    agent: str
    tenant: str  # its agent's, the parent's
    key: str  # the spawn's, within the parent
    raw_input: bytes
    timeout: float | None  # None: its agent's task_timeout where it runs
    retries: int | None  # None: its agent's retries where it runs
    lineage: Lineage  # its place in the tree
    max_children: int  # of the parent's agent
    labels: tuple[str, ...] = ()  # the parent's, handed on (supervisor/labels.py)
    # the span it is spawned under (an agent called as a tool: its call's): its parent
    traceparent: str | None = None
    tracestate: str | None = None


class SpawnReply(NamedTuple):
    """What a spawn came to: its child (None: the parent has max_children already,
    `children` of them), and whether the key had it already (another attempt's)."""

    child: str | None
    children: int = 0
    had: bool = False


class SpawnStore(Protocol):
    """Where a task's spawns are kept, each with its child (nodespawns.NodeSpawns, or a
    cluster's ClusterSpawns); the bounds, the replay of a key and the wait are spawn.py's."""

    async def placed(self, task: Task, key: str) -> tuple[str | None, Lineage]:
        """The child spawned under `key` (None: none yet), and a child's place in its tree."""

    async def serves(self, agent: str, tenant: str) -> bool:
        """Whether a task of the tenant's agent of the name would be run where the
        spawns are kept (else it is no agent to the parent)."""

    async def spawn(self, task: Task, order: SpawnOrder) -> SpawnReply:
        """The child once kept, submitted with its row (its child, `had`, if the key has one)."""

    async def children(self, task: Task) -> Container[str]: ...

    async def outcome(self, child_id: str) -> dict[str, Any]:
        """`task/wait`'s answer for one child, once it has ended."""


# the tasks' events on the engine's Stream (and to a task's own watchers, Task.watch)
class TaskProgress(NamedTuple):
    """A running task's worker (or a tool it called) reported how far it is:
    `{progress, total?, message?}` (`tool` too, from a tool's progress)."""

    task: Task
    progress: dict[str, Any]


class TaskFinished(NamedTuple):
    """A task ended, once, with its terminal status."""

    task: Task


class AttemptEnded(NamedTuple):
    """An attempt on a worker ended, its slot free (a drain counts the tasks still running)."""

    task: Task
