# ruff: noqa: F405 - the results are corral.results', named by the methods
"""The control-socket methods, each defined once: name, typed params, typed result, help.

The daemon implements them (daemon/commands.py, called through daemon/api.py's one
Dispatcher by every front end); the CLI calls them; both import this module, so a method
cannot drift between the two. A method's docstring is its help text. Methods that change
state are `mutating` and are written to the audit log; each names the scope a caller must
hold (DESIGN section 7).

Each method also declares what it answers (`result`, a Struct of corral.results): the
CLI decodes answers into it and reads fields, and it is the one schema an OpenAPI
document is generated from. What the engine shows of itself (a task's views in
corral.taskviews; a replica's status, a revision, a node, a tenant's use in corral.views)
is one Struct each, the engine's own, with no twin here: this module is imported by every
CLI command and must not pull in the engine; tests/test_methods.py holds the daemon's
answers to these types.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

import msgspec

# what the daemon answers (each method names its result): corral.results, all of it
from .results import *  # noqa: F403
from .taskoptions import TaskFilters, TaskOptions

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
    def changes(self) -> bool:
        """Whether this call of a `mutating` method changes state (it is audited then); a
        method whose params can ask for a reading alone says when."""
        return True


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


@method("daemon.upgrade", result=UpgradeReport, scope="admin", mutating=True)
class DaemonUpgrade(Params):
    """Re-execute the daemon in place (the same pid) from the installed corral, keeping
    every agent's process, its running tasks and the control socket; a new install that
    does not start is not handed over (or gives the state back). `report`: start none,
    say how the last one went."""

    python: str | None = None  # the interpreter of the new install (default: the daemon's)
    pythonpath: str | None = None  # its PYTHONPATH (default: the daemon's)
    report: bool = False

    def changes(self) -> bool:
        # `corral upgrade` asks for the report every 0.1 s until the new image answers:
        # each ask audited read as an upgrade of its own
        return not self.report


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


@method("agents.start", result=StartResult, scope="agents:write", mutating=True)
class AgentsStart(Selection):
    """Start agents (all their replicas, or NAME#N); a Failed agent is given a fresh start."""


@method("agents.stop", result=StopResult, scope="agents:write", mutating=True)
class AgentsStop(Selection):
    """Stop agents gracefully: shutdown request, SIGTERM after the grace, then SIGKILL."""


@method("agents.restart", result=RestartResult, scope="agents:write", mutating=True)
class AgentsRestart(Selection):
    """Restart agents: stop then start every replica, or with rolling, replace replicas one
    at a time, each new one ready before the old one stops."""

    rolling: bool = False


@method("agents.signal", result=SignalResult, scope="agents:write", mutating=True)
class AgentsSignal(Selection, kw_only=True):
    """Send a signal (a name like HUP or SIGUSR1, or a number) to agents' processes."""

    signal: str  # no default: a request that names none is refused, not taken for TERM


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


@method("agents.update", result=UpdateResult, scope="agents:write", mutating=True)
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


@method("agents.add", result=AddResult, scope="agents:write", mutating=True)
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


@method("agents.remove", result=RemoveResult, scope="agents:write", mutating=True)
class AgentsRemove(Params):
    """Stop and remove agents."""

    names: list[str]


@method("agents.scale", result=ScaleResult, scope="agents:write", mutating=True)
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


@method("logs.rotate", result=LogsRotated, scope="agents:write", mutating=True)
class LogsRotate(Params):
    """Rotate agents' log files now (every agent's and the daemon's when no name is
    given): each moved to NAME.log.1 (gzipped when log_compress is set), the older
    copies up one, and a new file begun (logrotate's postrotate, without a signal)."""

    names: list[str] = []


@method("stats.get", result=StatsResult, scope="metrics:read")
class StatsGet(Params):
    """Runtime statistics of the supervisor and per agent."""


# -- tasks and events -----------------------------------------------------------------------
class TaskParams(Params, TaskOptions):
    """What to run, on which agent, and how (its options: taskoptions.py): tasks.run's
    and tasks.submit's."""

    agent: str
    # kept as its JSON bytes: the daemon forwards the input to the worker without a
    # decode and an encode (a 10 MB document is checked once, by the scan that reads it);
    # a factory, as a Raw default cannot be written into the JSON Schema
    input: msgspec.Raw = msgspec.field(default_factory=lambda: msgspec.Raw(b"null"))
    # with [cluster]: run it on this node, not on whichever node has room
    local: bool = False
    # W3C trace context of the caller: the task's trace is a child of it (with
    # [tracing]; docs/tracing.md)
    traceparent: str | None = None
    tracestate: str | None = None


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
class TasksList(Params, TaskFilters):
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


@method("traces.get", result=TraceView, scope="tasks:read")
class TracesGet(Params):
    """A task's trace from the daemon's local store: the task, its queue waits, its
    attempts and their tool calls (with [tracing]; docs/tracing.md)."""

    task_id: str


@method("events.publish", result=PublishResult, scope="events", mutating=True)
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


@method("nodes.list", result=NodesResult, scope="agents:read")
class NodesList(Params):
    """The nodes of this daemon's cluster, alive or not: incarnation, load, agents, last
    beat."""


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


class TokenCreated(TokenInfo):
    """`corral token create --json`: the secret, shown this once."""

    token: str


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


@method("stats.history", result=MetricsHistoryResult, scope="metrics:read")
class StatsHistory(Params):
    """The metrics history of the last `since` seconds, of the fleet or of one agent: at
    the raw resolution (a sample every [http] history_interval seconds), per minute or
    per hour (default: the finest whose retention covers `since`)."""

    since: Annotated[float, msgspec.Meta(gt=0)] = 3600.0
    agent: str | None = None
    resolution: Literal["raw", "minute", "hour"] | None = None


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


@method("ui.login", result=UiLoginResult, scope="admin", mutating=True)
class UiLogin(Params):
    """A one-time link that logs a browser in to the dashboard (/ui) with the caller's
    scopes: it works once, within a minute."""


# the notification that cancels a request in flight on the control socket
CANCEL = "request.cancel"


@method("packages.deploy", result=DeployResult, scope="agents:write", mutating=True)
class PackagesDeploy(Params):
    """Build a release of the agent package at `path` (a directory on the daemon's host
    with a manifest) and make it the agent's: its new processes start beside the running
    ones and take the tasks only once all are Ready (and have stayed so for
    min_healthy_time), else the running release stays and the reason is given. What was
    deployed before is not built again."""

    path: str
    name: str | None = None  # default: the manifest's


@method("packages.releases", result=ReleasesResult, scope="agents:read")
class PackagesReleases(Params):
    """The kept releases of an agent package: version, when built, size, which is
    current, and the revisions that ran each (`corral rollback NAME REV` returns to one
    without building)."""

    name: str


# -- tenants (issue 23, docs/tenants.md) ---------------------------------------------------


@method("tenants.list", result=TenantList, scope="agents:read")
class TenantsList(Params):
    """The tenants, each with its quotas beside its use (a tenant's caller: its own)."""


@method("tenants.add", result=AddResult, scope="admin", mutating=True)
class TenantsAdd(Params):
    """Add tenants at runtime from [tenants.NAME] tables; they survive a daemon restart."""

    tenants: dict[str, dict[str, Any]]


@method("tenants.set", result=TenantEntry, scope="admin", mutating=True)
class TenantsSet(Params):
    """Set keys of a tenant's table (0 or null: no quota); nothing that runs is stopped,
    a quota below the use refuses what comes next."""

    name: str
    set: dict[str, Any]


@method("tenants.remove", result=RemoveResult, scope="admin", mutating=True)
class TenantsRemove(Params):
    """Remove tenants added at runtime; refused while an agent or MCP server is in one."""

    names: list[str]


# -- definitions kept in revisions (workflows, teams): the same params for each kind -----
class DefinitionNamed(Params):
    name: str


class DefinitionUpdate(Params):
    name: str
    set: dict[str, Any]


class DefinitionsRemove(Params):
    names: list[str]


class DefinitionHistory(Params):
    name: str
    limit: int = 100


class DefinitionRollback(Params):
    name: str
    revision: int | None = None


@method("workflows.list", result=WorkflowList, scope="tasks:read")
class WorkflowsList(Params):
    """The workflows (the config file's and those added at runtime), with their steps
    and agents."""


@method("workflows.plan", result=WorkflowPlan, scope="tasks:read")
class WorkflowsPlan(DefinitionNamed):
    """A workflow's plan, checked against the agents there are now (nothing is run)."""


@method("workflows.run", result=RunView, scope="tasks:run", mutating=True,
        needs={"wait": "runs.get"})
class WorkflowsRun(Params):
    """Start a run of a workflow with this input; its id at once, or with wait, the run
    as it is when it ends or the wait is over (the tasks:read scope too)."""

    name: str
    input: Any = None
    wait: Annotated[float, msgspec.Meta(ge=0, le=MAX_WAIT)] | None = None
    # W3C trace context of the caller: the run's trace is a child of it (with
    # [tracing]; docs/tracing.md)
    traceparent: str | None = None
    tracestate: str | None = None


@method("workflows.add", result=AddResult, scope="agents:write", mutating=True)
class WorkflowsAdd(Params):
    """Add workflows at runtime from [workflows.NAME] tables (all or nothing, each
    checked whole); they survive a daemon restart, each change a revision."""

    workflows: dict[str, Any]


@method("workflows.describe", result=WorkflowDescription, scope="tasks:read")
class WorkflowsDescribe(DefinitionNamed):
    """A workflow's definition, where it comes from and its revision."""


@method("workflows.update", result=UpdateResult, scope="agents:write", mutating=True)
class WorkflowsUpdate(DefinitionUpdate):
    """Change a workflow added at runtime: `set` merged into its table (a JSON merge
    patch; a list, such as steps, replaced whole); runs under way keep their revision."""


@method("workflows.remove", result=RemoveResult, scope="agents:write", mutating=True)
class WorkflowsRemove(DefinitionsRemove):
    """Remove workflows added at runtime (runs under way end on their revision)."""


@method("workflows.history", result=WorkflowHistory, scope="tasks:read")
class WorkflowsHistory(DefinitionHistory):
    """A runtime workflow's revisions: who changed what, when."""


@method("workflows.rollback", result=RollbackResult, scope="agents:write", mutating=True)
class WorkflowsRollback(DefinitionRollback):
    """Back to an earlier revision of a runtime workflow (default: the one before the
    newest; a removed workflow comes back so)."""


MAX_RUN_ROWS = 10_000  # a run's step rows in one page of runs.get (a map's items)


@method("runs.get", result=RunView, scope="tasks:read")
class RunsGet(Params):
    """One run: its status, its graph with each step's state, and a page of its step
    rows (a map's items too) with their tasks and outputs, read back from the state
    database (a page ends early past 4 MiB of outputs; `steps_next` is the offset of the
    next); of one step with `step`, without outputs with `outputs` false; with wait,
    held up to that many seconds for the run to end."""

    run_id: str
    wait: Annotated[float, msgspec.Meta(ge=0, le=MAX_WAIT)] | None = None
    step: str | None = None
    outputs: bool = True
    offset: Annotated[int, msgspec.Meta(ge=0)] = 0
    limit: Annotated[int, msgspec.Meta(ge=0, le=MAX_RUN_ROWS)] = 1000


@method("runs.list", result=RunList, scope="tasks:read")
class RunsList(Params):
    """Recent runs, newest first, a page of `limit` at a time: `next`, when there are
    older runs, is the `before` that lists them (every run until it is pruned)."""

    workflow: str | None = None
    status: str | None = None
    limit: int = 100
    since: float | None = None  # seconds ago
    before: str | None = None  # a run id: only the runs started before it


@method("runs.cancel", result=RunView, scope="tasks:run", mutating=True)
class RunsCancel(Params):
    """Cancel a run: its steps' queued and running tasks are cancelled."""

    run_id: str


@method("schedules.list", result=ScheduleList, scope="tasks:read")
class SchedulesList(Params):
    """The schedules, each with its clock, its last and next fire and whether it is
    paused (a limited caller: those of the agents and workflows it sees)."""


@method("schedules.pause", result=ScheduleEntry, scope="tasks:run", mutating=True)
class SchedulesPause(Params):
    """Pause a schedule: it fires nothing until resumed (kept across restarts)."""

    name: str


@method("teams.list", result=TeamList, scope="tasks:read")
class TeamsList(Params):
    """The teams (the config file's and those added at runtime), with their members."""


@method("teams.add", result=AddResult, scope="agents:write", mutating=True)
class TeamsAdd(Params):
    """Add teams at runtime from [teams.NAME] tables (all or nothing, each checked
    whole); they survive a daemon restart, each change a revision."""

    teams: dict[str, Any]


@method("teams.describe", result=TeamDescription, scope="tasks:read")
class TeamsDescribe(DefinitionNamed):
    """A team's definition, where it comes from and its revision."""


@method("schedules.resume", result=ScheduleEntry, scope="tasks:run", mutating=True)
class SchedulesResume(Params):
    """Resume a paused schedule: its next fire is its clock's next from now (what it
    missed while paused is not caught up)."""

    name: str


@method("teams.update", result=UpdateResult, scope="agents:write", mutating=True)
class TeamsUpdate(DefinitionUpdate):
    """Change a team added at runtime: `set` merged into its table (a JSON merge patch;
    a list, such as members, replaced whole); calls under way keep their definition."""


@method("teams.remove", result=RemoveResult, scope="agents:write", mutating=True)
class TeamsRemove(DefinitionsRemove):
    """Remove teams added at runtime (calls under way end on their definition)."""


@method("teams.history", result=TeamHistory, scope="tasks:read")
class TeamsHistory(DefinitionHistory):
    """A runtime team's revisions: who changed what, when."""


@method("teams.rollback", result=RollbackResult, scope="agents:write", mutating=True)
class TeamsRollback(DefinitionRollback):
    """Back to an earlier revision of a runtime team (default: the one before the
    newest; a removed team comes back so)."""
