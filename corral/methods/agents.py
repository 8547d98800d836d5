# ruff: noqa: F405 - the results are corral.results', named by the methods
"""The agents: their replicas' state, start and stop, changes, the fleet's watch."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

from ..results import *  # noqa: F403
from .declaration import ONE, Params, method, rest


@method("agents.status", result=AgentsStatusResult, scope="agents:read", seen="fleet", cli="status",
        dashboard=True, routes=(
    rest("GET", "/agents", "Agents' replicas: state, pid, restarts, "
         "CPU, memory, tasks", query=("names", "tenant")),
    rest("GET", "/agents/{name}/replicas", "One agent's replicas",
         path_params=ONE),
))
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
    if not index.isdecimal():
        raise ValueError(f"{target}: the replica after '#' must be a number")
    return name, int(index)


class Selection(Params):
    """Some agents by name (NAME, or NAME#N for one replica), or all of them."""

    names: list[str] = []
    all: bool = False


@method("agents.start", result=StartResult, scope="agents:write", mutating=True, seen="targets",
        cli="start", dashboard=True, routes=(
    rest("POST", "/agents/{name}/start", "Start an agent", path_params=ONE),
))
class AgentsStart(Selection):
    """Start agents (all their replicas, or NAME#N); a Failed agent is given a fresh start."""


@method("agents.stop", result=StopResult, scope="agents:write", mutating=True, seen="targets",
        cli="stop", dashboard=True, routes=(
    rest("POST", "/agents/{name}/stop", "Stop an agent", path_params=ONE),
))
class AgentsStop(Selection):
    """Stop agents gracefully: shutdown request, SIGTERM after the grace, then SIGKILL."""


@method("agents.restart", result=RestartResult, scope="agents:write", mutating=True, seen="targets",
        cli="restart", dashboard=True, routes=(
    rest("POST", "/agents/{name}/restart",
         "Restart an agent (rolling: one replica at a time)", path_params=ONE,
         body=("rolling",)),
))
class AgentsRestart(Selection):
    """Restart agents: stop then start every replica, or with rolling, replace replicas one
    at a time, each new one ready before the old one stops."""

    rolling: bool = False


@method("agents.signal", result=SignalResult, scope="agents:write", mutating=True, seen="targets",
        cli="signal", routes=(
    rest("POST", "/agents/{name}/signal", "Signal an agent's processes",
         path_params=ONE, body=("signal",)),
))
class AgentsSignal(Selection, kw_only=True):
    """Send a signal (a name like HUP or SIGUSR1, or a number) to agents' processes."""

    signal: str  # no default: a request that names none is refused, not taken for TERM


@method("agents.pause", result=PauseResult, scope="agents:write", mutating=True, seen="agent_name",
        cli="pause", dashboard=True, routes=(
    rest("POST", "/agents/{name}/pause",
         "Pause an agent: freeze its replicas, memory kept"),
    rest("POST", "/agents/{name}/replicas/{replica}/pause",
         "Pause one replica"),
))
class AgentsPause(Params):
    """Freeze an agent's replicas (or replica N) where they are, memory and process kept:
    no task goes to them (tasks wait in the queue) and no heartbeat judges them until
    resumed. Refused when a replica named is not running."""

    name: str
    replica: int | None = None


@method("agents.resume", result=PauseResult, scope="agents:write", mutating=True, seen="agent_name",
        cli="resume", dashboard=True, routes=(
    rest("POST", "/agents/{name}/resume", "Resume an agent's paused replicas"),
    rest("POST", "/agents/{name}/replicas/{replica}/resume",
         "Resume one paused replica"),
))
class AgentsResume(Params):
    """Let paused replicas run on, each as it was (same process, no restart counted);
    the tasks that waited go to them."""

    name: str
    replica: int | None = None


@method("agents.describe", result=DescribeResult, scope="agents:read", seen="agent_name",
        cli="describe", dashboard=True, routes=(
    rest("GET", "/agents/{name}", "One agent's effective spec"),
))
class AgentsDescribe(Params):
    """An agent's effective spec: command, cwd, environment keys, limits, restart policy,
    revision and origin (the config file, added at runtime, or the cluster's)."""

    name: str


@method("agents.history", result=HistoryResult, scope="agents:read", seen="agent_name",
        cli="history", dashboard=True, routes=(
    rest("GET", "/agents/{name}/history", "An agent's spec revisions",
         query=("limit",)),
))
class AgentsHistory(Params):
    """An agent's spec revisions: number, time, who, what changed."""

    name: str
    limit: int = 100


@method("agents.update", result=UpdateResult, scope="agents:write", mutating=True,
        seen="agent_name", cli="update", routes=(
    rest("PATCH", "/agents/{name}", "Change an agent added at runtime in "
         "place: `set` merged into its table (a JSON merge patch), rolled out",
         body=("set", "check")),
))
class AgentsUpdate(Params):
    """Change an agent added at runtime in place: `set` is merged into its table as a JSON
    merge patch (a table key by key, null takes a key away), kept as a new revision and
    rolled out as a reload is (replicas replaced one at a time, each new one ready
    first). An agent of the config file is changed there, then `corral reload`."""

    name: str
    set: dict[str, Any]
    check: bool = True  # that the new command is an executable on PATH or a file


@method("agents.rollback", result=RollbackResult, scope="agents:write", mutating=True,
        seen="agent_name", cli="rollback", dashboard=True, routes=(
    rest("POST", "/agents/{name}/rollback",
         "Go back to an earlier spec revision", body=("revision",)),
))
class AgentsRollback(Params):
    """Go back to an earlier spec revision (default: the one before the current), replacing
    replicas one at a time; the rollback is itself a new revision."""

    name: str
    revision: int | None = None
    # an agent package's release, as `corral releases` prints it: the newest revision
    # that ran it (instead of `revision`)
    release: Annotated[str, msgspec.Meta(min_length=1, max_length=200)] | None = None


@method("audit.list", result=AuditResult, scope="audit:read", seen=None, cli="audit",
        dashboard=True, routes=(
    rest("GET", "/audit", "The audit log", query=("limit",)),
))
class AuditList(Params):
    """The audit log: every state-changing control operation, who asked, and its outcome."""

    limit: int = 100


@method("agents.add", result=AddResult, scope="agents:write", mutating=True, seen="adding",
        cli="add", dashboard=True, routes=(
    rest("POST", "/agents", "Add agents from [agents.NAME] tables",
         body=("agents", "check", "cluster"), idempotent=True),
))
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


@method("agents.remove", result=RemoveResult, scope="agents:write", mutating=True, seen="names",
        cli="remove", dashboard=True, routes=(
    rest("DELETE", "/agents/{name}", "Stop and remove an agent",
         path_params=ONE),
))
class AgentsRemove(Params):
    """Stop and remove agents."""

    names: list[str]


@method("agents.scale", result=ScaleResult, scope="agents:write", mutating=True, seen="agent_name",
        cli="scale", dashboard=True, routes=(
    rest("POST", "/agents/{name}/scale", "Set an agent's replicas",
         body=("replicas",)),
))
class AgentsScale(Params):
    """Set the number of replicas of an agent."""

    name: str
    # required: a body that forgets it must not scale the agent to some default; past
    # the fleet's max_replicas (a [supervisor] setting: no document can say it) refused
    replicas: Annotated[int, msgspec.Meta(ge=0)]


@method("agents.watch", result=None, scope="agents:read", endless=True, seen="fleet_stream",
        dashboard=True, routes=(
    rest("GET", "/replicas/stream", "The fleet's replicas, then each state "
         "change as it happens (SSE)", query=("names", "interval"),
         stream="agents.transition"),
))
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
