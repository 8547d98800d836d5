"""What the daemon answers to the control methods (corral.methods names each method's
result here): the CLI decodes answers into these and reads fields, and the OpenAPI
document is generated from them. A task's views are corral.taskviews', a replica's,
revision's, node's and tenant's use corral.views'; both are imported here as results."""

from __future__ import annotations

from typing import Any

import msgspec
from msgspec import UNSET, UnsetType

from .taskviews import Attempt, ModelUsage, TaskError, TaskInfo, TaskResult, TaskSummary, Usage
from .views import NodeInfo, ReplicaStatus, Revision, TenantUse

__all__ = [
    "Added",
    "AgentStats",
    "AgentTaskStats",
    "AgentUsage",
    "AgentsStatusResult",
    "Attempt",
    "AuditEntry",
    "AuditResult",
    "CallStats",
    "ClientCallStats",
    "DaemonInfoResult",
    "Delivered",
    "DescribeResult",
    "Drained",
    "DrainedTask",
    "ElasticStatus",
    "ExtraStatus",
    "GatewayItems",
    "GatewayStats",
    "HistoryResult",
    "Latency",
    "LogLine",
    "LogLines",
    "McpInstanceStatus",
    "McpInstances",
    "McpItem",
    "McpResult",
    "McpStatusResult",
    "ModelUsage",
    "NodeInfo",
    "PauseResult",
    "PromptList",
    "ReloadResult",
    "Removed",
    "ReplicaBrief",
    "ReplicaStatus",
    "ResourceList",
    "Restarted",
    "Result",
    "Revision",
    "RollbackResult",
    "Scaled",
    "ScalingDecision",
    "SignalResult",
    "Signalled",
    "Started",
    "StatsResult",
    "StepStats",
    "Stopped",
    "Stopping",
    "SupervisorStats",
    "TaskAccepted",
    "TaskCounts",
    "TaskError",
    "TaskInfo",
    "TaskList",
    "TaskResult",
    "TaskSummary",
    "TaskTotals",
    "TasksStats",
    "TenantUse",
    "ToolList",
    "Usage",
]



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


class TasksStats(Result):
    total: TaskTotals
    agents: dict[str, AgentTaskStats]
    steps: StepStats | UnsetType = UNSET


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
