"""The control-socket methods, each defined once: name, typed params, typed result, help.

The daemon implements them (daemon/commands.py, called through daemon/api.py's one
Dispatcher by every front end); the CLI calls them; both import this module, so a method
cannot drift between the two. A method's docstring is its help text. Methods that change
state are `mutating` and are written to the audit log; each names the scope a caller must
hold (DESIGN section 7).

Each method also declares what it answers (`result`): the CLI decodes answers into it and
reads fields, and it is the one schema an OpenAPI document is generated from. A task's
views (TaskResult, TaskInfo, ...) are the engine's own Structs, from corral.taskviews,
which holds nothing of the engine; where the engine's Struct lives beside its machinery
(ReplicaStatus, ...), the one here is its wire twin: this module is imported by every CLI
command and must not pull in the engine; tests/test_methods.py holds the daemon's answers
to these types.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, UnsetType

# a task's views are the engine's own structs, shared (no twins): named here as results
from .taskviews import (
    Attempt as Attempt,
)
from .taskviews import (
    ModelUsage as ModelUsage,
)
from .taskviews import (
    TaskError as TaskError,
)
from .taskviews import (
    TaskInfo as TaskInfo,
)
from .taskviews import (
    TaskResult as TaskResult,
)
from .taskviews import (
    TaskSummary as TaskSummary,
)
from .taskviews import (
    Usage as Usage,
)
from .views import NodeInfo as NodeInfo
from .views import ReplicaStatus as ReplicaStatus
from .views import Revision as Revision
from .views import TenantUse as TenantUse

# what a caller may do (DESIGN section 7); "admin" holds every other
SCOPES = frozenset({"agents:read", "agents:write", "tasks:run", "tasks:read", "logs:read",
                    "events", "mcp:call", "metrics:read", "audit:read", "admin"})


@dataclass(frozen=True)
class Method:
    name: str
    params: type[msgspec.Struct]
    mutating: bool
    scope: str
    streaming: bool = False
    endless: bool = False  # streams until the client goes (a follow)
    # what it answers: a Struct, or None for a follow (it never answers), or an open
    # payload (an MCP server's result) as dict[str, Any]
    result: Any = None
    # a param that, when given (not None), needs another method's scope too: param ->
    # that method (what the call then does is what that method does)
    needs: tuple[tuple[str, str], ...] = ()

    @property
    def doc(self) -> str:
        return (self.params.__doc__ or "").strip()


REGISTRY: dict[str, Method] = {}


def method(name: str, *, scope: str, result: Any, mutating: bool = False,
           streaming: bool = False, endless: bool = False,
           needs: dict[str, str] | None = None) -> Any:
    if scope not in SCOPES:  # pragma: no cover - a programming error
        raise RuntimeError(f"method {name}: unknown scope {scope}")

    def register(cls: type[msgspec.Struct]) -> type[msgspec.Struct]:
        if name in REGISTRY:  # pragma: no cover - a programming error
            raise RuntimeError(f"method {name} defined twice")
        REGISTRY[name] = Method(name, cls, mutating, scope, streaming or endless, endless,
                                result, tuple((needs or {}).items()))
        cls.__method_name__ = name  # type: ignore[attr-defined]
        return cls

    return register


class Params(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


# -- results (what the daemon answers; the CLI decodes these) -------------------------------
# Not forbid_unknown_fields: a CLI older than its daemon still reads the fields it knows.
# Field order is the wire's (and so `--json`'s). A key the daemon sends only sometimes is
# UNSET when absent, so that it is absent again when printed.
class Result(msgspec.Struct, kw_only=True):
    pass


class DaemonInfoResult(Result):
    version: str
    pid: int
    uptime: float
    socket: str
    config: str
    status: str
    followers: int
    event_followers: int
    containment: dict[str, Any] | None  # the engine's ContainmentInfo; shown as it is
    # the daemon's extras (HTTP server, gateway, metrics history): up, or retrying
    extras: list[ExtraStatus] = []
    draining: str | None = None  # while a stop drains: how far it is


class ExtraStatus(msgspec.Struct):
    """A part the daemon runs without needing it (daemon/extras.py): serving, or failing
    and retried with backoff."""

    name: str
    address: str
    serving: bool
    error: str | None = None
    attempts: int = 0  # failed attempts since it last served
    retry_in: float | None = None  # seconds until the next attempt


class DrainedTask(msgspec.Struct):
    """A task that was running when a drain began, as the drain left it."""

    task_id: str
    agent: str
    # a terminal status: it ended during the drain, recorded once; "queued": handed to
    # the next daemon (its attempt lost to the stop); "running": the stop ends it
    status: str


class Drained(Result):
    """What a stop's drain did (docs/operations.md, "Stopping")."""

    seconds: float
    tasks: list[DrainedTask]
    waiting: int  # queued tasks left in the journal for the next daemon
    cut_short: bool = False  # a second stop request (`--now`, SIGTERM again) ended it

    def summary(self) -> str:
        """`1 finished (succeeded 1), 1 handed to the next daemon`: the log's line and
        `corral shutdown`'s."""
        ended = [t.status for t in self.tasks if t.status not in ("queued", "running")]
        by = ", ".join(f"{s} {ended.count(s)}" for s in sorted(set(ended)))
        parts = [f"{len(ended)} finished" + (f" ({by})" if by else "")]
        handed = sum(1 for t in self.tasks if t.status == "queued")
        if handed:
            parts.append(f"{handed} handed to the next daemon")
        stopped = sum(1 for t in self.tasks if t.status == "running")
        if stopped:
            parts.append(f"{stopped} still running, ended by the stop")
        if self.waiting:
            parts.append(f"{self.waiting} queued left for the next daemon")
        if self.cut_short:
            parts.append("cut short")
        return ", ".join(parts)


class Stopping(Result):
    stopping: bool
    # with wait: what the drain did, answered once it is over
    drained: Drained | None = None


class ReloadResult(msgspec.Struct):
    added: list[str]
    removed: list[str]
    changed: list[str]
    unchanged: list[str]
    failed: dict[str, str] = {}  # changed agents whose rollout stopped: name -> why
    mcp_servers: dict[str, list[str]] = {}  # the same four keys, for [mcp_servers]
    # [gateway]'s changes, in words: its keys, its tokens file's clients (added, removed,
    # changed; a token's secret is never shown)
    gateway: list[str] = []




class McpInstanceStatus(Result):
    """One MCP server instance: a replica's status (`instance` for `replica`) and its
    MCP side."""

    name: str
    state: str
    pid: int | None
    uptime: float | None
    restarts: int
    last_exit: str | None
    reason: str
    cpu_percent: float
    rss_bytes: int
    open_fds: int
    tasks_running: int
    instance: int
    owner: str | None
    scope: str
    protocol_version: str | None
    tools: int
    rejected_tools: list[str]
    calls: int
    errors: int
    in_flight: int


class Latency(Result):
    p50: float | None
    p95: float | None
    p99: float | None
    window: int


class TaskCounts(Result):
    """Tasks counted since the daemon started."""

    accepted: int
    succeeded: int
    failed: int
    timed_out: int
    cancelled: int
    lost: int
    retried: int
    refused: int


class AgentTaskStats(TaskCounts):
    """An agent's tasks: counted, waiting, running, and how long they took."""

    success_rate: float | None
    queue_depth: int
    running: int
    latency_ms: Latency


class TaskTotals(TaskCounts):
    """Every agent's tasks together."""

    queue_depth: int
    running: int
    success_rate: float | None


class ElasticStatus(msgspec.Struct):
    """An elastic agent's autoscaling (docs/elastic.md): `state` is "awake", "waking" or
    "asleep" (scaled to zero; a task wakes it)."""

    state: str
    replicas: int
    desired: int
    min_replicas: int
    max_replicas: int
    last: str | None = None  # the last change, in words: "up 1 -> 3: load 9 over ..."
    last_time: float | None = None


class AgentsStatusResult(Result):
    agents: list[ReplicaStatus]
    mcp_servers: list[McpInstanceStatus]
    tasks: dict[str, AgentTaskStats | None]
    elastic: dict[str, ElasticStatus] = {}  # by agent, the elastic ones
    # a cluster's agents (placement = "cluster"), by agent: the node each slot is placed
    # on, None while it waits for a node with room (docs/cluster.md)
    cluster_slots: dict[str, list[str | None]] = {}
    # what is wrong with the daemon itself (an extra not serving, a drain under way)
    notices: list[str] = []


class Started(Result):
    started: list[str]
    # named, but with no replica to start: scaled to zero (a task wakes them)
    asleep: list[str] = []


class Stopped(Result):
    stopped: list[str]


class Restarted(Result):
    restarted: list[str]


class Signalled(Result):
    replica: str  # NAME#N
    pid: int | None


class SignalResult(Result):
    signal: str
    signalled: list[Signalled]


class ReplicaBrief(Result):
    replica: int
    state: str
    pid: int | None


class PauseResult(Result):
    """The replicas a pause or resume named, and their states after it."""

    agent: str
    replicas: list[ReplicaBrief]


class DescribeResult(Result):
    name: str
    origin: str
    revision: int | None
    argv: list[str]
    spec: dict[str, Any]  # every key of the spec, env reduced to its keys: an open table
    replicas: list[ReplicaBrief]




class ScalingDecision(msgspec.Struct):
    """A change of an agent's replica count the autoscaler made (not a revision: the
    spec is unchanged); the daemon keeps the last ones in memory."""

    time: float
    previous: int
    replicas: int
    desired: int
    direction: str  # up, down, wake, sleep, hibernate, held
    reason: str


class HistoryResult(Result):
    name: str
    current: int | None
    revisions: list[Revision]
    scaling: list[ScalingDecision] = []  # the autoscaler's last changes, oldest first


class RollbackResult(Result):
    name: str
    restored: int
    revision: int | None
    change: str = ""  # what the rollback changed: "replicas 3 -> 2, env.V changed"


class AuditEntry(Result):
    time: float
    uid: int
    pid: int
    method: str
    params: Any  # the call's params as they were given
    outcome: str
    who: str | None = None  # a token's caller: "token NAME" (a socket peer: uid and pid)
    tenant: str | None = None  # the caller's tenant (None: an operator's call)


class AuditResult(Result):
    entries: list[AuditEntry]


class Added(Result):
    added: list[str]


class Removed(Result):
    removed: list[str]


class Scaled(Result):
    name: str
    replicas: int


class LogLine(msgspec.Struct, array_like=True):
    """One log line: time, source (agent name or "corral"), replica, pid, stream, text."""

    time: float
    source: str
    replica: int
    pid: int
    stream: str
    text: str

    def render(self) -> str:
        """How a line reads in log files and in `corral logs`."""
        from .text import iso_time

        who = self.source if self.source == "corral" else f"{self.source}#{self.replica}"
        return f"{iso_time(self.time, ms=True)} {who}[{self.pid}] {self.stream}: {self.text}"


class LogLines(Result):
    lines: list[LogLine]


class SupervisorStats(Result):
    """The engine's counters (supervisor.core.Stats) and the daemon's."""

    spawned: int
    restarts: int
    restarts_by_cause: dict[str, int]  # by what ended the life restarted (crash, cap, ...)
    failures: int
    spawn_failures: int
    cold_fallbacks: int
    exits: int
    stuck_after_kill: int  # not reaped within a bound after SIGKILL: stop() went on
    active: int
    loop_stalls: int
    longest_stall: float
    subscriber_failures: int  # deliveries of the event stream that raised
    uptime: float
    log_lines: int
    log_lines_dropped: int
    log_files_failing: dict[str, int]  # file -> lines it dropped
    state_writes: dict[str, Any] | None
    # why new tasks are refused now (the journal cannot write), or None
    task_journal_refusing: str | None
    # usage/report notifications not counted (bad numbers, a task not the agent's)
    usage_reports_ignored: int = 0


class AgentUsage(ModelUsage):
    """An agent's usage since the daemon started, and what its budgets' windows hold."""

    tokens_last_minute: float = 0.0
    tokens_last_day: float = 0.0
    cost_usd_last_day: float = 0.0
    waiting: str | None = None  # the budget its waiting tasks are held by


class AgentStats(Result):
    replicas: int
    serving: int
    restarts: int
    cpu_percent: float
    rss_bytes: int
    usage: AgentUsage | None = None
    tenant: str = "default"
    # an elastic agent's state (awake, waking or asleep: scaled to zero); None otherwise
    elastic: str | None = None


class StepStats(Result):
    """Tasks' steps (docs/durable.md): steps written, answered from the journal on a
    retry, and attempts that stopped matching it and went live."""

    journaled: int = 0
    replayed: int = 0
    diverged: int = 0


class SessionStats(Result):
    """The sessions (docs/durable.md#sessions): those live now, and those dropped for their
    agent's session_ttl since the daemon started."""

    live: int = 0
    expired: int = 0


class TasksStats(Result):
    total: TaskTotals
    agents: dict[str, AgentTaskStats]
    steps: StepStats | UnsetType = UNSET
    sessions: SessionStats | UnsetType = UNSET


class CallStats(Result):
    calls: int
    errors: int
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None


class ClientCallStats(CallStats):
    in_flight: int


class GatewayStats(Result):
    """Gateway calls per client and per tool; the HTTP gateway's address and sessions."""

    clients: dict[str, ClientCallStats]
    tools: dict[str, CallStats]
    url: str | None
    http: dict[str, Any] | None


class StatsResult(Result):
    supervisor: SupervisorStats
    agents: dict[str, AgentStats]
    tasks: TasksStats
    # the event bus's and the heartbeat loop's counters: shown as they are
    events: dict[str, Any]
    heartbeat: dict[str, Any]
    gateway: GatewayStats
    # with [cluster]: this node's view (membership, claims, outcomes published, late
    # writes the fence refused, takeovers): shown as it is (docs/cluster.md)
    cluster: dict[str, Any] | UnsetType = UNSET


class TaskAccepted(Result):
    """tasks.submit's answer: the task's id, and its status when it was accepted; with
    `wait`, once it has ended within the wait, its outcome too (a TaskResult's fields, in
    its order: `corral run --json`'s)."""

    task_id: str
    status: str
    output: Any | UnsetType = UNSET
    error: TaskError | UnsetType | None = UNSET
    attempts: list[Attempt] | UnsetType = UNSET


class TaskList(Result):
    tasks: list[TaskSummary]
    # the cursor of the next page (older tasks): `before` of the next call; absent on the
    # last page
    next: str | UnsetType = UNSET


class Delivered(Result):
    delivered: int


class SessionView(Result):
    """One live session of an agent (docs/durable.md#sessions)."""

    agent: str
    session: str
    tasks: int  # accepted in it
    created: float
    last_used: float  # its last task's submission, start or end, or its last checkpoint
    holder: str | None  # the replica that ran its last task (agent#i), or None
    state_bytes: int  # its state's JSON (0: none)
    running: str | None  # the id of its task queued or running first, or None
    waiting: int  # its tasks waiting behind that one
    expires: float | None  # when it is dropped if no task comes (None: never)


class SessionList(Result):
    sessions: list[SessionView]


class SessionTask(Result):
    """A task of a session, in the order they were submitted."""

    task_id: str
    status: str | None  # None: pruned from the task journal
    created: float | None


class SessionInfo(Result):
    session: SessionView
    history: list[SessionTask]


# a tool, resource or prompt as its server describes it (with `server`): MCP's, open
McpItem = dict[str, Any]


# every listing of the pool answers, besides its lists, the servers that could not answer
# (`unavailable`: name -> why) and, of those, the ones whose every instance has failed
class ToolList(Result):
    tools: list[McpItem]
    unavailable: dict[str, str]
    failed: list[str]
    allow: list[str] | UnsetType = UNSET  # an agent's allowlist, when listed for one


class ResourceList(Result):
    resources: list[McpItem]
    resource_templates: list[McpItem] = msgspec.field(name="resourceTemplates")
    unavailable: dict[str, str]
    failed: list[str]


class PromptList(Result):
    prompts: list[McpItem]
    unavailable: dict[str, str]
    failed: list[str]


# an MCP server's own answer (a tool result, a resource's contents, a prompt), passed on
# as the server wrote it: its keys are the MCP version's and the server's, open
McpResult = dict[str, Any]


class McpStatusResult(Result):
    mcp_servers: list[McpInstanceStatus]
    gateway: GatewayStats


class McpInstances(Result):
    name: str
    instances: int


class GatewayItems(Result):
    items: list[McpItem]
    features: list[str]


# -- daemon ---------------------------------------------------------------------------------
@method("daemon.info", result=DaemonInfoResult, scope="agents:read")
class DaemonInfo(Params):
    """Version, pid, uptime, socket and config of the running daemon."""


@method("daemon.shutdown", result=Stopping, scope="admin", mutating=True)
class DaemonShutdown(Params):
    """Drain (no new task to a worker; running tasks finish within drain_timeout), stop
    every agent gracefully, then the daemon."""

    wait: bool = False  # answer once the drain is over, with what it did
    now: bool = False  # no drain: running tasks are handed to the next daemon at once


class UpgradeReport(Result):
    """An upgrade of the daemon in place (docs/operations.md, "Upgrades"): `state` is
    "none" (never asked), "handing_over" (checked, the exec under way), "done" (the new
    image serves), "fell_back" (the new image could not start: the old one took its
    state back) or "refused" (nothing was handed over: `error` says why)."""

    attempt: int
    state: str
    pid: int
    from_version: str
    to_version: str | None = None
    seconds: float | None = None  # from the request to the new image serving
    kept: int = 0  # agents' processes kept
    tasks: int = 0  # running tasks kept
    restarted: list[str] = []  # processes started again (zygotes, plain programs, the lost)
    servers: int = 0  # MCP servers' processes kept
    error: str | None = None


@method("daemon.upgrade", result=UpgradeReport, scope="admin", mutating=True)
class DaemonUpgrade(Params):
    """Re-execute the daemon in place (the same pid) from the installed corral, keeping
    every agent's process, its running tasks and the control socket; a new install that
    does not start is not handed over (or gives the state back). `report`: start none,
    say how the last one went."""

    python: str | None = None  # the interpreter of the new install (default: the daemon's)
    pythonpath: str | None = None  # its PYTHONPATH (default: the daemon's)
    report: bool = False


@method("config.reload", result=ReloadResult, scope="admin", mutating=True)
class ConfigReload(Params):
    """Re-read the config file and apply the difference: add new agents, remove dropped
    ones, restart changed ones; unchanged agents are not touched."""


# -- agents ---------------------------------------------------------------------------------
@method("agents.status", result=AgentsStatusResult, scope="agents:read")
class AgentsStatus(Params):
    """State, pid, uptime, restarts, last exit, CPU and memory of agents' replicas (with
    a tenant, of that tenant's agents)."""

    names: list[str] = []
    tenant: str | None = None


def parse_target(target: str) -> tuple[str, int | None]:
    """`NAME` (every replica) or `NAME#N` (replica N), as start/stop/restart/logs/pid/signal
    take them; raises ValueError for a malformed replica number."""
    name, sep, index = target.partition("#")
    if not sep:
        return name, None
    if not index.isdigit():
        raise ValueError(f"{target}: the replica after '#' must be a number")
    return name, int(index)


class Selection(Params):
    """Some agents by name (NAME, or NAME#N for one replica), or all of them."""

    names: list[str] = []
    all: bool = False


@method("agents.start", result=Started, scope="agents:write", mutating=True)
class AgentsStart(Selection):
    """Start agents (all their replicas, or NAME#N); a Failed agent is given a fresh start."""


@method("agents.stop", result=Stopped, scope="agents:write", mutating=True)
class AgentsStop(Selection):
    """Stop agents gracefully: shutdown request, SIGTERM after the grace, then SIGKILL."""


@method("agents.restart", result=Restarted, scope="agents:write", mutating=True)
class AgentsRestart(Selection):
    """Restart agents: stop then start every replica, or with rolling, replace replicas one
    at a time, each new one ready before the old one stops."""

    rolling: bool = False


@method("agents.signal", result=SignalResult, scope="agents:write", mutating=True)
class AgentsSignal(Selection):
    """Send a signal (a name like HUP or SIGUSR1, or a number) to agents' processes."""

    signal: str = "TERM"


@method("agents.pause", result=PauseResult, scope="agents:write", mutating=True)
class AgentsPause(Params):
    """Freeze an agent's replicas (or replica N) where they are, memory and process kept:
    no task goes to them (tasks wait in the queue) and no heartbeat judges them until
    resumed. Refused when a replica named is not running."""

    name: str
    replica: int | None = None


@method("agents.resume", result=PauseResult, scope="agents:write", mutating=True)
class AgentsResume(Params):
    """Let paused replicas run on, each as it was (same process, no restart counted);
    the tasks that waited go to them."""

    name: str
    replica: int | None = None


@method("agents.describe", result=DescribeResult, scope="agents:read")
class AgentsDescribe(Params):
    """An agent's effective spec: command, cwd, environment keys, limits, restart policy,
    revision and origin (the config file, added at runtime, or the cluster's)."""

    name: str


@method("agents.history", result=HistoryResult, scope="agents:read")
class AgentsHistory(Params):
    """An agent's spec revisions: number, time, who, what changed."""

    name: str
    limit: int = 100


class Updated(Result):
    name: str
    revision: int | None  # the new revision (None: nothing changed)
    change: str  # what it changed, key by key (`command changed, env.V changed`)


@method("agents.update", result=Updated, scope="agents:write", mutating=True)
class AgentsUpdate(Params):
    """Change an agent added at runtime in place: `set` is merged into its table as a JSON
    merge patch (a table key by key, null takes a key away), kept as a new revision and
    rolled out as a reload is (replicas replaced one at a time, each new one ready
    first). An agent of the config file is changed there, then `corral reload`."""

    name: str
    set: dict[str, Any]
    check: bool = True  # that the new command is an executable on PATH or a file


@method("agents.rollback", result=RollbackResult, scope="agents:write", mutating=True)
class AgentsRollback(Params):
    """Go back to an earlier spec revision (default: the one before the current), replacing
    replicas one at a time; the rollback is itself a new revision."""

    name: str
    revision: int | None = None
    # an agent package's release, as `corral releases` prints it: the newest revision
    # that ran it (instead of `revision`)
    release: Annotated[str, msgspec.Meta(min_length=1, max_length=200)] | None = None


@method("audit.list", result=AuditResult, scope="audit:read")
class AuditList(Params):
    """The audit log: every state-changing control operation, who asked, and its outcome."""

    limit: int = 100


@method("agents.add", result=Added, scope="agents:write", mutating=True)
class AgentsAdd(Params):
    """Add agents at runtime from [agents.NAME] tables; they survive a daemon restart.
    A command that is not an executable on PATH or a file is refused, unless --no-check
    (check=false). With --cluster (cluster=true), cluster agents: their tables kept in
    the cluster's Redis, their replicas placed on live nodes."""

    agents: dict[str, dict[str, Any]]
    check: bool = True
    cluster: bool = False

    @property
    def for_cluster(self) -> bool:
        """Whether the call adds cluster agents: --cluster, or a table's `placement`
        (what the handler does and the access rule refuses, from one answer)."""
        return self.cluster or any(isinstance(t, dict) and t.get("placement") == "cluster"
                                   for t in self.agents.values())


@method("agents.remove", result=Removed, scope="agents:write", mutating=True)
class AgentsRemove(Params):
    """Stop and remove agents."""

    names: list[str]


@method("agents.scale", result=Scaled, scope="agents:write", mutating=True)
class AgentsScale(Params):
    """Set the number of replicas of an agent."""

    name: str
    # required: a body that forgets it must not scale the agent to some default
    replicas: int


# -- logs and stats -------------------------------------------------------------------------
@method("logs.tail", result=LogLines, scope="logs:read")
class LogsTail(Params):
    """The last lines of agents' logs (all agents and the daemon when no name is given)."""

    names: list[str] = []
    lines: int = 50
    since: float | None = None  # unix time
    # only lines holding this text (a fixed string, as `grep -F`: no pattern a caller
    # could make the daemon backtrack on)
    grep: Annotated[str, msgspec.Meta(min_length=1, max_length=1000)] | None = None
    streams: list[Literal["stdout", "stderr", "event"]] = []  # only these (none: all)


@method("logs.follow", result=None, scope="logs:read", endless=True)
class LogsFollow(LogsTail):
    """Like logs.tail, then new lines as `logs.lines` notifications until the client
    disconnects; a follower too slow to keep up is sent `logs.missed` with a count."""


@method("stats.get", result=StatsResult, scope="metrics:read")
class StatsGet(Params):
    """Runtime statistics of the supervisor and per agent."""


# -- tasks and events -----------------------------------------------------------------------
MAX_DELAY = 366 * 86400.0  # the furthest a task may be delayed (a year and a day)
MAX_TASK_RETRIES = 100  # retries a task may ask for (its agent's `retries` is not bounded)
SessionName = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$")]
RetryOutcome = Literal["lost", "failed", "timed_out"]  # as AgentSpec.retry_on


class TaskParams(Params):
    """What to run, on which agent: tasks.run's and tasks.submit's."""

    agent: str
    # kept as its JSON bytes: the daemon forwards the input to the worker without a
    # decode and an encode (a 10 MB document is checked once, by the scan that reads it);
    # a factory, as a Raw default cannot be written into the JSON Schema
    input: msgspec.Raw = msgspec.field(default_factory=lambda: msgspec.Raw(b"null"))
    timeout: float | None = None
    priority: int = 0
    # with [cluster]: run it on this node, not on whichever node has room
    local: bool = False
    # W3C trace context of the caller: the task's trace is a child of it (with
    # [tracing]; docs/tracing.md)
    traceparent: str | None = None
    tracestate: str | None = None
    # it starts no sooner than this: `delay` seconds from now, or at `not_before` (unix
    # time); one or the other
    delay: Annotated[float, msgspec.Meta(ge=0, le=MAX_DELAY)] | None = None
    not_before: Annotated[float, msgspec.Meta(ge=0)] | None = None
    # its own retry policy, instead of its agent's `retries` and `retry_on`
    retries: Annotated[int, msgspec.Meta(ge=0, le=MAX_TASK_RETRIES)] | None = None
    retry_on: list[RetryOutcome] | None = None
    # a turn of this session of the agent: its tasks run one at a time, in the order
    # submitted, each given the session's state (docs/durable.md#sessions)
    session: SessionName | None = None

    def start_at(self, now: float) -> float | None:
        """The wall time it may start at (None: at once); raises ValueError for a time
        past MAX_DELAY from now, or both `delay` and `not_before`."""
        if self.delay is not None and self.not_before is not None:
            raise ValueError("give delay or not_before, not both")
        at = now + self.delay if self.delay is not None else self.not_before
        if at is not None and at > now + MAX_DELAY:
            raise ValueError(f"not_before is more than {MAX_DELAY / 86400:g} days from now")
        return at if at is not None and at > now else None

    @property
    def policy(self) -> bool:
        """Whether it asks for a start time or a retry policy of its own."""
        return not (self.delay is None and self.not_before is None and self.retries is None
                    and self.retry_on is None)



MAX_WAIT = 3600.0  # seconds a tasks.submit may hold its answer for the outcome


@method("tasks.run", result=TaskResult, scope="tasks:run", streaming=True)
class TasksRun(TaskParams):
    """Run a task on an agent and wait for its outcome (progress arrives as `task.progress`
    notifications)."""


# waiting answers the task's outcome: whoever waits reads the task, as tasks.get does
@method("tasks.submit", result=TaskAccepted, scope="tasks:run",
        needs={"wait": "tasks.get"})
class TasksSubmit(TaskParams):
    """Submit a task and answer its id at once, while it runs on; with wait, hold the
    answer up to that many seconds for its outcome (the tasks:read scope too)."""

    wait: Annotated[float, msgspec.Meta(ge=0, le=MAX_WAIT)] | None = None


@method("tasks.get", result=TaskInfo, scope="tasks:read")
class TasksGet(Params):
    """One task: status, progress, output or error, and every attempt; with input, the
    input it was sent too (absent when it is not kept)."""

    task_id: str
    wait: bool = False
    input: bool = False


@method("tasks.list", result=TaskList, scope="tasks:read")
class TasksList(Params):
    """Recent tasks, newest last (from the task journal: every task until it is pruned;
    with [cluster], the cluster's tasks on every node), a page of `limit` at a time:
    `next`, when there are older tasks, is the `before` that lists them."""

    agent: str | None = None
    limit: int = 100
    status: str | None = None
    since: float | None = None  # seconds ago
    before: str | None = None  # a task id: only the tasks accepted before it
    # with [cluster]: this node's own tasks (its journal), not the cluster's
    local: bool = False


@method("sessions.list", result=SessionList, scope="tasks:read")
class SessionsList(Params):
    """The live sessions (of AGENT): their tasks, last use, the replica that holds each
    and the size of its state."""

    agent: str | None = None


@method("sessions.get", result=SessionInfo, scope="tasks:read")
class SessionsGet(Params):
    """One session and the history of its tasks, in the order they were submitted."""

    agent: str
    session: str  # (a name no session can have is simply not found)


@method("sessions.end", result=SessionView, scope="tasks:run", mutating=True)
class SessionsEnd(Params):
    """End a session: its state and history are dropped (refused while a task of it is
    queued or running); a later task naming it starts it afresh."""

    agent: str
    session: str  # (a name no session can have is simply not found)


@method("tasks.cancel", result=TaskInfo, scope="tasks:run", mutating=True)
class TasksCancel(Params):
    """Cancel a queued or running task."""

    task_id: str


class SpanView(Result):
    """One span of a task's trace, as the local store keeps it (times in seconds since
    the epoch; kind "internal", "server" or "client")."""

    trace_id: str
    span_id: str
    parent_id: str | None
    name: str
    kind: str
    start: float
    end: float
    error: str | None = None
    attributes: dict[str, Any] = {}
    events: list[Any] = []  # [time, name, attributes]


class TraceView(Result):
    task_id: str
    trace_id: str | None  # None: no span of the task is kept
    spans: list[SpanView] = []


@method("traces.get", result=TraceView, scope="tasks:read")
class TracesGet(Params):
    """A task's trace from the daemon's local store: the task, its queue waits, its
    attempts and their tool calls (with [tracing]; docs/tracing.md)."""

    task_id: str


@method("events.publish", result=Delivered, scope="events", mutating=True)
class EventsPublish(Params):
    """Publish an event to the workers (and followers) subscribed to its topic."""

    topic: str
    data: Any = None
    # the tenant whose workers and followers it reaches (a tenant's caller: its own,
    # named or not); an operator's without one reaches every tenant's
    tenant: str | None = None


@method("events.follow", result=None, scope="events", endless=True)
class EventsFollow(Params):
    """Every event whose topic matches the pattern, as `events.event` notifications."""

    pattern: str = "*"
    # only the events of this tenant (and those of every tenant); a tenant's caller
    # follows its own tenant's, named or not
    tenant: str | None = None


# -- the cluster (docs/cluster.md) ----------------------------------------------------------


class NodesResult(Result):
    nodes: list[NodeInfo]
    # what the cluster's Redis risks by its configuration, as this node last read it
    # (appendonly, appendfsync, maxmemory-policy: docs/cluster.md)
    warnings: list[str] = []


@method("nodes.list", result=NodesResult, scope="agents:read")
class NodesList(Params):
    """The nodes of this daemon's cluster, alive or not: incarnation, load, agents, last
    beat."""


class DrainResult(Result):
    node: str
    incarnation: int  # the incarnation asked to drain


@method("nodes.drain", result=DrainResult, scope="admin", mutating=True)
class NodesDrain(Params):
    """Drain a node of the cluster (from any node): it takes no new tasks, finishes
    those it has, hands its cluster agents over to other nodes, then leaves the cluster
    (its local work goes on; it joins again when its daemon starts again)."""

    node: str


# -- MCP tools ------------------------------------------------------------------------------
@method("tools.list", result=ToolList, scope="mcp:call")
class ToolsList(Params):
    """The tools of the MCP servers, named SERVER__TOOL; with an agent, those its allowlist
    admits. Servers that are not serving are named in `unavailable` with the reason, and
    in `failed` when they are Failed."""

    agent: str | None = None
    server: str | None = None


@method("tools.call", result=McpResult, scope="mcp:call", mutating=True)
class ToolsCall(Params):
    """Call one tool (SERVER__TOOL) with arguments, as an operator."""

    name: str
    arguments: dict[str, Any] = {}


@method("mcp.status", result=McpStatusResult, scope="agents:read")
class McpStatus(Params):
    """The MCP servers: state, protocol version, tools, calls, errors per instance."""


class McpSelection(Params):
    """One MCP server by name (all its instances)."""

    name: str


@method("mcp.start", result=McpInstances, scope="agents:write", mutating=True)
class McpStart(McpSelection):
    """Start an MCP server's instances (a Failed server is given a fresh start)."""


@method("mcp.stop", result=McpInstances, scope="agents:write", mutating=True)
class McpStop(McpSelection):
    """Stop an MCP server's instances: stdin closed, SIGTERM after the grace, then SIGKILL
    (the MCP stdio shutdown); calls in flight fail with the reason."""


@method("mcp.restart", result=McpInstances, scope="agents:write", mutating=True)
class McpRestart(McpSelection):
    """Stop then start an MCP server's instances."""


@method("resources.list", result=ResourceList, scope="mcp:call")
class ResourcesList(Params):
    """The resources (and resource templates) of the MCP servers, or of one; with an
    agent, those its allowlist admits (as SERVER__URI)."""

    server: str | None = None
    agent: str | None = None


@method("resources.read", result=McpResult, scope="mcp:call")
class ResourcesRead(Params):
    """Read one resource by its URI, of the server given or else of the one server that
    lists it."""

    uri: str
    server: str | None = None


@method("prompts.list", result=PromptList, scope="mcp:call")
class PromptsList(Params):
    """The prompts of the MCP servers, or of one, named SERVER__PROMPT; with an agent,
    those its allowlist admits."""

    server: str | None = None
    agent: str | None = None


@method("prompts.get", result=McpResult, scope="mcp:call")
class PromptsGet(Params):
    """Get one prompt (SERVER__PROMPT) with its arguments (strings)."""

    name: str
    arguments: dict[str, str] = {}
# -- the gateway (`corral mcp serve` is a client of these) --------------------------------
class GatewayClient(Params):
    """Whose view: an agent's allowlist, a gateway token's, or (neither) everything."""

    agent: str | None = None
    token: str | None = None


@method("gateway.list", result=GatewayItems, scope="mcp:call")
class GatewayList(GatewayClient):
    """The tools, resources, resource templates or prompts a gateway client may see,
    named SERVER__NAME."""

    kind: str = "tools"


@method("gateway.call", result=McpResult, scope="mcp:call", streaming=True)
class GatewayCall(GatewayClient):
    """One MCP request for an upstream server (tools/call, resources/read, prompts/get,
    completion/complete) on behalf of a gateway client: allowlist, limits, accounting and
    audit apply; progress arrives as `gateway.progress` notifications tagged with
    `progress_id`; `request.cancel {id}` cancels it upstream."""

    method: str = "tools/call"
    params: dict[str, Any] = {}
    progress_id: int | None = None


@method("gateway.watch", result=None, scope="mcp:call", endless=True)
class GatewayWatch(Params):
    """`gateway.changed {kinds}` notifications whenever what the pool offers changes
    (servers start, stop, are reloaded, or change their lists), until disconnect."""


@method("gateway.status", result=GatewayStats, scope="metrics:read")
class GatewayStatus(Params):
    """Gateway calls per client and per tool: counts, errors, latency percentiles; the
    HTTP gateway's address and sessions."""


# -- tokens (issue 21) ---------------------------------------------------------------------
class TokenInfo(Result):
    """A token as `corral token list` shows it: never its secret, which is not kept."""

    name: str
    scopes: list[str]
    agents: str | None  # the glob of agent names it may see and touch; None: every agent
    created: float
    expires: float | None  # unix time; None: never
    tenant: str | None  # the tenant whose objects alone it sees; None: every one


class TokenCreated(TokenInfo):
    """`corral token create --json`: the secret, shown this once."""

    token: str


class TokenList(Result):
    tokens: list[TokenInfo]


@method("tokens.create", result=TokenCreated, scope="admin", mutating=True)
class TokensCreate(Params):
    """Create a bearer token for the HTTP API with scopes, optionally limited to agents
    whose names match a glob and to a lifetime; its secret is answered once and only its
    hash is kept."""

    name: str
    scopes: list[str]
    agents: str | None = None
    expires_in: float | None = None  # seconds from now
    tenant: str | None = None  # a tenant's token: it sees that tenant's objects only


@method("tokens.list", result=TokenList, scope="admin")
class TokensList(Params):
    """The HTTP API's tokens: name, scopes, agent glob, created, expires."""


@method("tokens.revoke", result=TokenInfo, scope="admin", mutating=True)
class TokensRevoke(Params):
    """Revoke a token: a request presenting it is refused from now on."""

    name: str


# -- metrics history (issue 21) ------------------------------------------------------------
class MetricsSample(msgspec.Struct):
    """One period of the metrics history (the fleet's, or one agent's). Counts and
    gauges are the period's (gauges averaged over its samples in a roll-up); times are
    tasks' execution times (started to finished), estimated from buckets."""

    time: float  # the period's start (a sample's own time at the raw resolution)
    seconds: float  # what the period covers
    agents: float  # agents with a serving replica (for one agent: 0 or 1)
    replicas: float
    serving: float
    cpu_percent: float
    rss_bytes: int
    queued: float
    running: float
    executions: int  # tasks finished in the period
    per_minute: float
    errors: int  # of those: failed, timed out or lost
    error_rate: float | None
    avg_ms: float | None
    p50_ms: float | None
    p95_ms: float | None


class MetricsHistoryResult(Result):
    agent: str | None  # None: the whole fleet
    resolution: str  # raw | minute | hour
    interval: float  # seconds between two samples at this resolution
    since: float  # the wall time asked from
    samples: list[MetricsSample]  # oldest first
    truncated: bool  # more samples than one answer carries: the newest are given


@method("stats.history", result=MetricsHistoryResult, scope="metrics:read")
class StatsHistory(Params):
    """The metrics history of the last `since` seconds, of the fleet or of one agent: at
    the raw resolution (a sample every [http] history_interval seconds), per minute or
    per hour (default: the finest whose retention covers `since`)."""

    since: Annotated[float, msgspec.Meta(gt=0)] = 3600.0
    agent: str | None = None
    resolution: Literal["raw", "minute", "hour"] | None = None


# -- watching the fleet live (issue 21) ------------------------------------------------------
class FleetSnapshot(Result):
    """`agents.snapshot`: every replica the watch covers, as agents.status shows them; the
    changes after it follow. Sent first, and again (`resync`) when changes were lost to
    this client."""

    id: str  # the stream's position: the changes after it follow
    time: float
    replicas: list[ReplicaStatus]
    # sent again in place of changes this client did not get: it fell behind the changes
    # the daemon keeps, or its last_event_id is not of this daemon's life
    resync: bool
    missed: int | None  # how many changes it did not get (None: unknown)


class ReplicaChange(Result):
    """`agents.transition`: one replica's state change, as it happened."""

    id: str  # resume after it with last_event_id (an SSE client: Last-Event-ID)
    time: float  # when it happened, the daemon's unix time
    agent: str
    replica: int
    state: str
    previous: str
    pid: int | None
    cause: str | None  # what made it (crash, spawn, stop, ...)
    reason: str
    # the replica as agents.status shows it now, when the process that changed holds its
    # place (None: the other process of a rollout, or a replica scaled away)
    row: ReplicaStatus | None


class AgentRoster(Result):
    """`agents.roster`: an agent's replicas as a list changed (the agent was added or
    removed, scaled, or a rollout put a new process in a replica's place): all of them
    now, as agents.status shows them; `removed`: the agent is gone."""

    id: str
    time: float
    agent: str
    replicas: list[ReplicaStatus]
    # the agent is gone (no replicas and not removed: scaled to zero, an elastic agent
    # asleep)
    removed: bool = False


class HealthNote(Result):
    """`agents.health`: a health check of a replica flipped ([health]: passed, failed)
    and what corral did (ready, unready, restart, restart held, drain, exec, event)."""

    id: str
    time: float
    agent: str
    replica: int
    check: str  # readiness or liveness
    ok: bool
    action: str
    text: str  # the sentence logs show
    row: ReplicaStatus | None  # the replica as agents.status shows it now


class ReplicaSample(msgspec.Struct, array_like=True):
    """A replica's figures that change without a transition: agent, replica, uptime,
    CPU, resident memory, open descriptors, tasks running."""

    agent: str
    replica: int
    uptime: float | None
    cpu_percent: float
    rss_bytes: int
    open_fds: int
    tasks_running: int


class ReplicaSamples(Result):
    """`agents.sample`: every covered replica's figures, each `interval` (no id: a sample
    replaces the one before, and none is sent again on resume)."""

    time: float
    replicas: list[ReplicaSample]


@method("agents.watch", result=None, scope="agents:read", endless=True)
class AgentsWatch(Params):
    """The fleet as it changes: `agents.snapshot` (every replica), then an
    `agents.transition` per replica state change, an `agents.roster` when an agent's
    replicas change as a list and an `agents.health` when a health check flips, each with
    an id, until the client disconnects; with an
    interval, `agents.sample` (CPU, memory, uptime) that often. A client that falls behind
    the changes kept is sent a new snapshot (`resync`) instead of them."""

    # agents to watch (default: every agent); one not there yet is watched for: its
    # agents.roster comes when it is added
    names: list[str] = []
    # seconds between agents.sample notifications; none without
    interval: Annotated[float, msgspec.Meta(ge=0.1, le=3600)] | None = None
    last_event_id: str | None = None  # resume after this change (a snapshot if too old)


class StatsSample(StatsResult, kw_only=True):
    """`stats.sample`: stats.get's answer and when it was taken."""

    time: float


@method("stats.watch", result=None, scope="metrics:read", endless=True)
class StatsWatch(Params):
    """stats.get's answer as `stats.sample` notifications, one each interval, until the
    client disconnects; a client that does not read is sent the newest when it reads
    again, and none of those it missed."""

    interval: Annotated[float, msgspec.Meta(ge=0.1, le=3600)] = 1.0


# -- the dashboard (issue 21) --------------------------------------------------------------
class UiLoginResult(Result):
    code: str
    path: str  # the link's path on the HTTP server: /ui/login?code=...
    url: str  # the whole link (the server's URL and the path)
    expires: float  # unix time; the code also ends when it is used once


@method("ui.login", result=UiLoginResult, scope="admin", mutating=True)
class UiLogin(Params):
    """A one-time link that logs a browser in to the dashboard (/ui) with the caller's
    scopes: it works once, within a minute."""


# the notification that cancels a request in flight on the control socket
CANCEL = "request.cancel"


# -- agent packages (issue 25, docs/packages.md) -------------------------------------------
class DeployResult(Result):
    name: str
    release: str  # the release now current (its name: a hash of what it is made of)
    version: str | None
    built: bool  # False: the release was there already (deployed before), nothing built
    changed: bool  # False: it was current already, nothing was started
    previous: str | None  # the release it replaced (None: none, or a plain command)
    revision: int | None  # the agent's spec revision now
    removed: list[str]  # releases removed past keep_releases


@method("packages.deploy", result=DeployResult, scope="agents:write", mutating=True)
class PackagesDeploy(Params):
    """Build a release of the agent package at `path` (a directory on the daemon's host
    with a manifest) and make it the agent's: its new processes start beside the running
    ones and take the tasks only once all are Ready (and have stayed so for
    min_healthy_time), else the running release stays and the reason is given. What was
    deployed before is not built again."""

    path: str
    name: str | None = None  # default: the manifest's


class ReleaseEntry(msgspec.Struct):
    release: str
    version: str | None
    built_at: float | None
    size_bytes: int | None
    python_version: str | None
    lock: str | None
    current: bool
    revisions: list[int]  # the agent's spec revisions that ran it


class ReleasesResult(Result):
    name: str
    current: str | None
    keep_releases: int
    releases: list[ReleaseEntry]  # oldest first


@method("packages.releases", result=ReleasesResult, scope="agents:read")
class PackagesReleases(Params):
    """The kept releases of an agent package: version, when built, size, which is
    current, and the revisions that ran each (`corral rollback NAME REV` returns to one
    without building)."""

    name: str


# -- tenants (issue 23, docs/tenants.md) ---------------------------------------------------


class TenantEntry(Result):
    """One tenant: where it is declared, its quotas (the keys set: 0 or absent is no
    quota) and its use beside them."""

    name: str
    origin: str  # "file PATH", "runtime", or "default" (the tenant of everything else)
    revision: int | None  # its latest revision (a runtime add or set), None: none
    quotas: dict[str, Any]  # the [tenants.NAME] table: an open table, as the file has it
    use: TenantUse
    enforced: list[str]  # the keys set that corral enforces now (the others are shown)


class TenantList(Result):
    tenants: list[TenantEntry]


@method("tenants.list", result=TenantList, scope="agents:read")
class TenantsList(Params):
    """The tenants, each with its quotas beside its use (a tenant's caller: its own)."""


@method("tenants.add", result=Added, scope="admin", mutating=True)
class TenantsAdd(Params):
    """Add tenants at runtime from [tenants.NAME] tables; they survive a daemon restart."""

    tenants: dict[str, dict[str, Any]]


@method("tenants.set", result=TenantEntry, scope="admin", mutating=True)
class TenantsSet(Params):
    """Set keys of a tenant's table (0 or null: no quota); nothing that runs is stopped,
    a quota below the use refuses what comes next."""

    name: str
    set: dict[str, Any]


@method("tenants.remove", result=Removed, scope="admin", mutating=True)
class TenantsRemove(Params):
    """Remove tenants added at runtime; refused while an agent or MCP server is in one."""

    names: list[str]
