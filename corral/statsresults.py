"""What `stats.get` answers (the engine's, the tasks', the gateway's counters) and the task
counts `corral status` shows: results of corral.results' (re-exported there), kept apart
by their one subject."""

from __future__ import annotations

from typing import Any

import msgspec
from msgspec import UNSET, UnsetType

from .taskviews import ModelUsage
from .views import Result


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


class Stats(msgspec.Struct):
    spawned: int = 0
    restarts: int = 0
    # restarts by what ended the life restarted (lifecycle.Cause: crash, hang, cap, ...)
    restarts_by_cause: dict[str, int] = {}
    failures: int = 0  # entered Failed
    spawn_failures: int = 0
    cold_fallbacks: int = 0  # warm starts asked for and not possible (reason in the log)
    exits: int = 0
    # processes still not reaped KILL_GRACE after SIGKILL (uninterruptible sleep): stop()
    # returned without them
    stuck_after_kill: int = 0
    active: int = 0  # live processes now
    loop_stalls: int = 0  # heartbeat ticks at least a second late (see listening.py)
    longest_stall: float = 0.0
    subscriber_failures: int = 0  # event stream deliveries that raised (stream.py)


class SupervisorStats(Stats, Result, kw_only=True):
    """The engine's counters (Stats) and the daemon's."""

    uptime: float
    log_lines: int
    log_lines_dropped: int
    log_files_failing: dict[str, int]  # file -> lines it dropped
    state_writes: dict[str, Any] | None
    # why new tasks are refused now (the journal cannot write), or None
    task_journal_refusing: str | None
    # usage/report notifications not counted (bad numbers, a task not the agent's)
    usage_reports_ignored: int = 0
    # of `restarts`, those of replicas no longer there (an agent removed, a replica scaled
    # down or replaced by a change): not in any agent's count
    restarts_removed: int = 0


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
    refused: int = 0  # journaled calls refused past max_step_bytes or a tenant's bound
    # calls that went on after their caller (a dead worker) went away, journaled for the
    # retry, and calls of a retry that waited for one of them to be answered
    # (docs/durable.md#a-call-outlives-its-worker)
    outlived: int = 0
    awaited: int = 0


class SessionStats(Result):
    """The sessions (docs/durable.md#sessions): those live now, and those dropped for their
    agent's session_ttl, or ended with their agent's removal, since the daemon started;
    new sessions and checkpoints refused for a bound; their states' bytes, and those held
    in memory (the rest read back)."""

    live: int = 0
    expired: int = 0
    ended: int = 0
    refused: int = 0
    state_bytes: int = 0
    states_in_memory: int = 0
    memory_bytes: int = 0
    states_read_back: int = 0


class OutputStats(Result):
    """Tasks' live output (docs/streams.md): chunks and bytes kept, chunks dropped past a
    bound, writers held for the database, streams open now."""

    chunks: int = 0
    bytes: int = 0
    dropped: int = 0
    holds: int = 0
    open: int = 0


class SuspensionStats(Result):
    """Tasks that waited for a person past suspend_after (docs/approvals.md#waiting-
    without-a-process): attempts given back and tasks resumed since the daemon started,
    the suspended tasks held compact now (their rows the journal's), and the cluster
    tasks whose suspension was not acknowledged (they waited on with their attempt,
    but those `unsure` whose record, read again, said Redis had taken it)."""

    suspended: int = 0
    resumed: int = 0
    compact: int = 0
    unwritten: int = 0
    unsure: int = 0


class TasksStats(Result):
    total: TaskTotals
    agents: dict[str, AgentTaskStats]
    steps: StepStats | UnsetType = UNSET
    sessions: SessionStats | UnsetType = UNSET
    output: OutputStats | UnsetType = UNSET
    suspensions: SuspensionStats | UnsetType = UNSET


class CallStats(Result):
    calls: int
    errors: int
    # the calls' own time: a wait for a person's approval is not in it (it is `waited`)
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    waited: int = 0  # calls that waited for a person (an approval: docs/approvals.md)
    waited_ms: float = 0.0  # how long they waited, in all


class ClientCallStats(CallStats, kw_only=True):  # (its fields after CallStats' defaults)
    in_flight: int
    # an agent replica's tool calls made as a task attempt's step, and made as no
    # task's (docs/gateway.md#calls-of-a-task); absent from other clients' rows
    attributed: int | UnsetType = UNSET
    unattributed: int | UnsetType = UNSET


class GatewayStats(Result):
    """Gateway calls per client and per tool; the HTTP gateway's address and sessions."""

    clients: dict[str, ClientCallStats]
    tools: dict[str, CallStats]
    url: str | None
    attributed: int = 0  # every replica's, as its clients' rows count them
    unattributed: int = 0
    http: dict[str, Any] | None = None
    # the model gateway's calls per model (docs/models.md), where [models] names any
    models: dict[str, Any] | None = None


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
