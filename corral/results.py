# ruff: noqa: F403, F405 - the views' modules are imported whole: their names are results too
"""What the daemon answers to the control methods (corral.methods names each method's
result here): the CLI decodes answers into these and reads fields, and the OpenAPI
document is generated from them. The views of asks, tasks, flows, stats, replicas, nodes
and tenants are their own modules', star-imported here so that they are results too (a
star import re-exports; no list of names to keep)."""

from __future__ import annotations

from typing import Any

import msgspec
from msgspec import UNSET, UnsetType

from .askviews import *
from .flowviews import *
from .statsresults import *
from .taskviews import *
from .views import *


# Not forbid_unknown_fields: a CLI older than its daemon still reads the fields it knows.
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
    # the PATH its agents' commands are looked up on (check-config's, an operator's only)
    path: str | None = None


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


class DrainReport(Result):
    """What a stop's drain did (docs/operations.md, "Stopping")."""

    seconds: float
    tasks: list[DrainedTask]
    waiting: int  # queued tasks left in the journal for the next daemon
    cut_short: bool = False  # a second stop request (`--now`, SIGTERM again) ended it
    # tasks waiting for a person with no attempt (suspend_after), kept for the next daemon
    suspended: int = 0

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
        if self.suspended:
            parts.append(f"{self.suspended} suspended (waiting for a person) kept for the "
                         f"next daemon")
        if self.cut_short:
            parts.append("cut short")
        return ", ".join(parts)


class ClockTime(Result):
    """`daemon.clock`'s answer: the time of the clock a person's waits are measured by."""

    time: float
    manual: bool  # moved only by `corral clock --advance`
    ahead: float  # seconds a manual clock was moved (it stands still between moves)


class Stopping(Result):
    stopping: bool
    # with wait: what the drain did, answered once it is over
    drained: DrainReport | None = None


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
    # tables read only at start that the file changes: not applied until the daemon
    # restarts (or `corral upgrade`), said so rather than left to be found out
    restart_needed: list[str] = []
    # the config file's workflows, teams and schedules: the same four keys each
    workflows: dict[str, list[str]] = {}
    teams: dict[str, list[str]] = {}
    schedules: dict[str, list[str]] = {}


class McpInstanceStatus(ProcessStatus, kw_only=True):
    """One MCP server instance: a process's status and its MCP side."""

    instance: int
    owner: str | None
    scope: str
    protocol_version: str | None
    tools: int
    rejected_tools: list[str]
    calls: int
    errors: int
    in_flight: int


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
    # the slots this node runs, by agent, in the order of its replicas here (replicas are
    # numbered on each node, slots by the cluster: slot 1 may be this node's NAME#0)
    cluster_replicas: dict[str, list[int]] = {}
    # what is wrong with the daemon itself (an extra not serving, a drain under way)
    notices: list[str] = []


class StartResult(Result):
    started: list[str]
    # named, but with no replica to start: scaled to zero (a task wakes them)
    asleep: list[str] = []
    # named, but every replica already starting or serving: nothing started
    running: list[str] = []


class StopResult(Result):
    stopped: list[str]


class RestartResult(Result):
    restarted: list[str]


class SignalTarget(Result):
    replica: str  # NAME#N
    pid: int | None


class SignalResult(Result):
    signal: str
    signalled: list[SignalTarget]


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


class AddResult(Result):
    added: list[str]


class RemoveResult(Result):
    removed: list[str]


class ScaleResult(Result):
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


class LogsRotated(Result):
    files: list[str]  # the log files rotated, each now begun anew


class TaskAccepted(Result):
    """tasks.submit's answer: the task's id, and its status when it was accepted; with
    `wait`, once it has ended within the wait, its outcome too (a TaskResult's fields, in
    its order: `corral run --json`'s)."""

    task_id: str
    status: str
    output: Any | UnsetType = UNSET
    error: TaskFailure | UnsetType | None = UNSET
    attempts: list[Attempt] | UnsetType = UNSET
    # true: the task an idempotency key sent before named, not a new one (corral/taskkeys.py)
    replayed: bool | UnsetType = UNSET


class AskList(Result):
    """The inbox's pending asks the caller sees, oldest first (docs/approvals.md)."""

    asks: list[Ask]


class TaskList(Result):
    tasks: list[TaskSummary]
    # the cursor of the next page (older tasks): `before` of the next call; absent on the
    # last page
    next: str | UnsetType = UNSET


class PublishResult(Result):
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
    # whose it is: the tenant its agent was of when it began (another tenant's agent of
    # the same name never sees it)
    tenant: str


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


class ToolPins(Result):
    """Every pinned tool definition (mcp/pins.py): server, tool, digest, pinned_at, and
    `drifted`, the digest of a definition seen since that differs (blocked until a
    person approves it), or null."""

    pins: list[McpItem]


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


class UpdateResult(Result):
    name: str
    revision: int | None  # the new revision (None: nothing changed)
    change: str  # what it changed, key by key (`command changed, env.V changed`)


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


class NodesResult(Result):
    nodes: list[NodeInfo]
    # what the cluster's Redis risks by its configuration, as this node last read it
    # (appendonly, appendfsync, maxmemory-policy: docs/cluster.md)
    warnings: list[str] = []


class DrainResult(Result):
    node: str
    incarnation: int  # the incarnation asked to drain


# -- tokens ---------------------------------------------------------------------
class TokenInfo(Result):
    """A token as `corral token list` shows it: never its secret, which is not kept."""

    name: str
    scopes: list[str]
    agents: str | None  # the glob of agent names it may see and touch; None: every agent
    created: float
    expires: float | None  # unix time; None: never
    tenant: str | None  # the tenant whose objects alone it sees; None: every one


class TokenList(Result):
    tokens: list[TokenInfo]


# -- metrics history ------------------------------------------------------------
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


# -- a task's live output (docs/streams.md) -------------------------------------------------
class TaskChunk(Result):
    """`tasks.output`: a chunk of a task's live output, at its position (`id`, given back
    as last_event_id to resume after it)."""

    id: str  # ATTEMPT-N
    task_id: str
    attempt: int
    n: int
    data: str
    # the stream's own word in place of the chunk that reached a bound (`data` names
    # it): the attempt's later output is not kept
    truncated: bool = False


# -- watching the fleet live ------------------------------------------------------
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
    CPU, resident memory, open descriptors, tasks running, and its calls waiting for a
    person (the dashboard shows a replica whose every task waits so as waiting)."""

    agent: str
    replica: int
    uptime: float | None
    cpu_percent: float
    rss_bytes: int
    open_fds: int
    tasks_running: int
    waiting_for_person: int = 0


class ReplicaSamples(Result):
    """`agents.sample`: every covered replica's figures, each `interval` (no id: a sample
    replaces the one before, and none is sent again on resume)."""

    time: float
    replicas: list[ReplicaSample]


# -- the dashboard --------------------------------------------------------------
class UiLoginResult(Result):
    code: str
    path: str  # the link's path on the HTTP server: /ui/login?code=...
    url: str  # the whole link (the server's URL and the path)
    expires: float  # unix time; the code also ends when it is used once


# -- agent packages (docs/packages.md) -------------------------------------------
class DeployResult(Result):
    name: str
    release: str  # the release now current (its name: a hash of what it is made of)
    version: str | None
    built: bool  # False: the release was there already (deployed before), nothing built
    changed: bool  # False: it was current already, nothing was started
    previous: str | None  # the release it replaced (None: none, or a plain command)
    revision: int | None  # the agent's spec revision now
    removed: list[str]  # releases removed past keep_releases


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
