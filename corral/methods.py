"""The control-socket methods, each defined once: name, typed params, help.

The daemon implements them (daemon/commands.py, called through daemon/api.py's one
Dispatcher by every front end); the CLI calls them; both import this module, so a method
cannot drift between the two. A method's docstring is its help text. Methods that change
state are `mutating` and are written to the audit log; each names the scope a caller must
hold (DESIGN section 7).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec

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

    @property
    def doc(self) -> str:
        return (self.params.__doc__ or "").strip()


REGISTRY: dict[str, Method] = {}


def method(name: str, *, scope: str, mutating: bool = False, streaming: bool = False,
           endless: bool = False) -> Any:
    if scope not in SCOPES:  # pragma: no cover - a programming error
        raise RuntimeError(f"method {name}: unknown scope {scope}")

    def register(cls: type[msgspec.Struct]) -> type[msgspec.Struct]:
        if name in REGISTRY:  # pragma: no cover - a programming error
            raise RuntimeError(f"method {name} defined twice")
        REGISTRY[name] = Method(name, cls, mutating, scope, streaming or endless, endless)
        cls.__method_name__ = name  # type: ignore[attr-defined]
        return cls

    return register


class Params(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


# -- daemon ---------------------------------------------------------------------------------
@method("daemon.info", scope="agents:read")
class DaemonInfo(Params):
    """Version, pid, uptime, socket and config of the running daemon."""


@method("daemon.shutdown", scope="admin", mutating=True)
class DaemonShutdown(Params):
    """Stop every agent gracefully, then the daemon."""


@method("config.reload", scope="admin", mutating=True)
class ConfigReload(Params):
    """Re-read the config file and apply the difference: add new agents, remove dropped
    ones, restart changed ones; unchanged agents are not touched."""


# -- agents ---------------------------------------------------------------------------------
@method("agents.status", scope="agents:read")
class AgentsStatus(Params):
    """State, pid, uptime, restarts, last exit, CPU and memory of agents' replicas."""

    names: list[str] = []


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


@method("agents.start", scope="agents:write", mutating=True)
class AgentsStart(Selection):
    """Start agents (all their replicas, or NAME#N); a Failed agent is given a fresh start."""


@method("agents.stop", scope="agents:write", mutating=True)
class AgentsStop(Selection):
    """Stop agents gracefully: shutdown request, SIGTERM after the grace, then SIGKILL."""


@method("agents.restart", scope="agents:write", mutating=True)
class AgentsRestart(Selection):
    """Restart agents: stop then start every replica, or with rolling, replace replicas one
    at a time, each new one ready before the old one stops."""

    rolling: bool = False


@method("agents.signal", scope="agents:write", mutating=True)
class AgentsSignal(Selection):
    """Send a signal (a name like HUP or SIGUSR1, or a number) to agents' processes."""

    signal: str = "TERM"


@method("agents.describe", scope="agents:read")
class AgentsDescribe(Params):
    """An agent's effective spec: command, cwd, environment keys, limits, restart policy,
    revision and origin (the config file, or added at runtime)."""

    name: str


@method("agents.history", scope="agents:read")
class AgentsHistory(Params):
    """An agent's spec revisions: number, time, who, what changed."""

    name: str
    limit: int = 100


@method("agents.rollback", scope="agents:write", mutating=True)
class AgentsRollback(Params):
    """Go back to an earlier spec revision (default: the one before the current), replacing
    replicas one at a time; the rollback is itself a new revision."""

    name: str
    revision: int | None = None


@method("audit.list", scope="audit:read")
class AuditList(Params):
    """The audit log: every state-changing control operation, who asked, and its outcome."""

    limit: int = 100


@method("agents.add", scope="agents:write", mutating=True)
class AgentsAdd(Params):
    """Add agents at runtime from [agents.NAME] tables; they survive a daemon restart.
    A command that is not an executable on PATH or a file is refused, unless --no-check
    (check=false)."""

    agents: dict[str, dict[str, Any]]
    check: bool = True


@method("agents.remove", scope="agents:write", mutating=True)
class AgentsRemove(Params):
    """Stop and remove agents."""

    names: list[str]


@method("agents.scale", scope="agents:write", mutating=True)
class AgentsScale(Params):
    """Set the number of replicas of an agent."""

    name: str
    replicas: int = msgspec.field(default=1)


# -- logs and stats -------------------------------------------------------------------------
@method("logs.tail", scope="logs:read")
class LogsTail(Params):
    """The last lines of agents' logs (all agents and the daemon when no name is given)."""

    names: list[str] = []
    lines: int = 50
    since: float | None = None  # unix time


@method("logs.follow", scope="logs:read", endless=True)
class LogsFollow(LogsTail):
    """Like logs.tail, then new lines as `logs.lines` notifications until the client
    disconnects; a follower too slow to keep up is sent `logs.missed` with a count."""


@method("stats.get", scope="metrics:read")
class StatsGet(Params):
    """Runtime statistics of the supervisor and per agent."""


# -- tasks and events -----------------------------------------------------------------------
@method("tasks.run", scope="tasks:run", streaming=True)
class TasksRun(Params):
    """Run a task on an agent and wait for its outcome (progress arrives as `task.progress`
    notifications); with detach, answer the task id at once."""

    agent: str
    # kept as its JSON bytes: the daemon forwards the input to the worker without a
    # decode and an encode (a 10 MB document is checked once, by the scan that reads it)
    input: msgspec.Raw = msgspec.Raw(b"null")
    timeout: float | None = None
    priority: int = 0
    detach: bool = False


@method("tasks.get", scope="tasks:read")
class TasksGet(Params):
    """One task: status, progress, output or error, and every attempt."""

    task_id: str
    wait: bool = False


@method("tasks.list", scope="tasks:read")
class TasksList(Params):
    """Recent tasks, newest last (from the task journal: every task until it is pruned)."""

    agent: str | None = None
    limit: int = 100
    status: str | None = None
    since: float | None = None  # seconds ago


@method("tasks.cancel", scope="tasks:run", mutating=True)
class TasksCancel(Params):
    """Cancel a queued or running task."""

    task_id: str


@method("events.publish", scope="events", mutating=True)
class EventsPublish(Params):
    """Publish an event to the workers (and followers) subscribed to its topic."""

    topic: str
    data: Any = None


@method("events.follow", scope="events", endless=True)
class EventsFollow(Params):
    """Every event whose topic matches the pattern, as `events.event` notifications."""

    pattern: str = "*"


# -- MCP tools ------------------------------------------------------------------------------
@method("tools.list", scope="mcp:call")
class ToolsList(Params):
    """The tools of the MCP servers, named SERVER__TOOL; with an agent, those its allowlist
    admits. Servers that are not serving are named in `unavailable` with the reason, and
    in `failed` when they are Failed."""

    agent: str | None = None
    server: str | None = None


@method("tools.call", scope="mcp:call", mutating=True)
class ToolsCall(Params):
    """Call one tool (SERVER__TOOL) with arguments, as an operator."""

    name: str
    arguments: dict[str, Any] = {}


@method("mcp.status", scope="agents:read")
class McpStatus(Params):
    """The MCP servers: state, protocol version, tools, calls, errors per instance."""


class McpSelection(Params):
    """One MCP server by name (all its instances)."""

    name: str


@method("mcp.start", scope="agents:write", mutating=True)
class McpStart(McpSelection):
    """Start an MCP server's instances (a Failed server is given a fresh start)."""


@method("mcp.stop", scope="agents:write", mutating=True)
class McpStop(McpSelection):
    """Stop an MCP server's instances: stdin closed, SIGTERM after the grace, then SIGKILL
    (the MCP stdio shutdown); calls in flight fail with the reason."""


@method("mcp.restart", scope="agents:write", mutating=True)
class McpRestart(McpSelection):
    """Stop then start an MCP server's instances."""


@method("resources.list", scope="mcp:call")
class ResourcesList(Params):
    """The resources (and resource templates) of the MCP servers, or of one; with an
    agent, those its allowlist admits (as SERVER__URI)."""

    server: str | None = None
    agent: str | None = None


@method("resources.read", scope="mcp:call")
class ResourcesRead(Params):
    """Read one resource by its URI, of the server given or else of the one server that
    lists it."""

    uri: str
    server: str | None = None


@method("prompts.list", scope="mcp:call")
class PromptsList(Params):
    """The prompts of the MCP servers, or of one, named SERVER__PROMPT; with an agent,
    those its allowlist admits."""

    server: str | None = None
    agent: str | None = None


@method("prompts.get", scope="mcp:call")
class PromptsGet(Params):
    """Get one prompt (SERVER__PROMPT) with its arguments (strings)."""

    name: str
    arguments: dict[str, str] = {}
# -- the gateway (`corral mcp serve` is a client of these) --------------------------------
class GatewayClient(Params):
    """Whose view: an agent's allowlist, a gateway token's, or (neither) everything."""

    agent: str | None = None
    token: str | None = None


@method("gateway.list", scope="mcp:call")
class GatewayList(GatewayClient):
    """The tools, resources, resource templates or prompts a gateway client may see,
    named SERVER__NAME."""

    kind: str = "tools"


@method("gateway.call", scope="mcp:call", streaming=True)
class GatewayCall(GatewayClient):
    """One MCP request for an upstream server (tools/call, resources/read, prompts/get,
    completion/complete) on behalf of a gateway client: allowlist, limits, accounting and
    audit apply; progress arrives as `gateway.progress` notifications tagged with
    `progress_id`; `request.cancel {id}` cancels it upstream."""

    method: str = "tools/call"
    params: dict[str, Any] = {}
    progress_id: int | None = None


@method("gateway.watch", scope="mcp:call", endless=True)
class GatewayWatch(Params):
    """`gateway.changed {kinds}` notifications whenever what the pool offers changes
    (servers start, stop, are reloaded, or change their lists), until disconnect."""


@method("gateway.status", scope="metrics:read")
class GatewayStatus(Params):
    """Gateway calls per client and per tool: counts, errors, latency percentiles; the
    HTTP gateway's address and sessions."""


# the notification that cancels a request in flight on the control socket
CANCEL = "request.cancel"


# -- results (what the daemon answers; the CLI decodes these) -------------------------------
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
        from datetime import UTC, datetime

        stamp = datetime.fromtimestamp(self.time, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3]
        who = self.source if self.source == "corral" else f"{self.source}#{self.replica}"
        return f"{stamp}Z {who}[{self.pid}] {self.stream}: {self.text}"


class ReloadResult(msgspec.Struct):
    added: list[str]
    removed: list[str]
    changed: list[str]
    unchanged: list[str]
    failed: dict[str, str] = {}  # changed agents whose rollout stopped: name -> why
    mcp_servers: dict[str, list[str]] = {}  # the same four keys, for [mcp_servers]
