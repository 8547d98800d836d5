"""What the command handlers are given: the daemon's services, each set up before the
first handler runs, so no handler reaches a part that may not exist yet."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import msgspec

from ..mcp.pins import Pins
from ..methods import DaemonUpgrade, DrainReport, ExtraStatus, ReloadResult, UpgradeReport
from ..supervisor.agents import Agents
from ..supervisor.containment import Containment
from ..supervisor.elastic import Elastic
from ..supervisor.events import EventBus
from ..supervisor.health import HealthBoard
from ..supervisor.quotas import Tenancy
from ..supervisor.refusals import BoundaryRefusals
from ..supervisor.stats import HeartbeatWork, Stats
from ..supervisor.stream import Stream
from ..supervisor.tasks import TaskManager
from ..supervisor.tasks.budget import Budgets
from ..supervisor.tasks.output import TaskOutputs
from ..supervisor.tasks.sessions import Sessions
from ..supervisor.tools import Tools
from .audit import Audit
from .caller import Caller
from .clusterpeer import ClusterPeer
from .filewatch import FileWatches
from .fleet import Fleet
from .fleetwatch import FleetWatch
from .gatewayaccess import GatewayService
from .history import History
from .logs import LogHub
from .packages.service import Packages
from .revisions import RevisionLog
from .schedules import ScheduleService
from .store import StateStore
from .taskjournal import TaskJournalDB
from .tasks import TaskFront
from .teams import TeamService
from .tenantregistry import TenantRegistry
from .traces import Traces
from .workflows import WorkflowService

if TYPE_CHECKING:  # (aiohttp's: imported where [models] names any)
    from .models.gateway import ModelGateway


class Logins(Protocol):
    """The dashboard's one-time login codes (http/ui.py's Sessions implements it): a
    Protocol, so that the services never import the HTTP server's parts (no cycle)."""

    @property
    def url(self) -> str: ...

    def issue(self, issuer: Caller) -> tuple[str, float]: ...


class Web(msgspec.Struct):
    """What [http] and [gateway] listen make (aiohttp's): set as they are entered, which
    an upgrade's new image does once its agents are adopted (Daemon._web)."""

    gateway: Any = None  # the HTTP gateway (http/mcp.py HttpGateway)
    logins: Logins | None = None  # the dashboard's logins, where [http] serves it
    server: Any = None  # the [http] server (http/server.py's), once it serves


class Services(msgspec.Struct, frozen=True, kw_only=True):
    # the engine's parts (supervisor/parts.py), each handed over on its own
    agents: Agents  # add, remove, scale, pause, status; the agents by name
    tools: Tools  # the MCP tool-server pool
    pins: Pins  # its tools' pinned definitions
    quotas: Tenancy  # the tenants' quotas
    elastic: Elastic  # autoscaling: each elastic agent's state and decisions
    bus: EventBus  # the event bus (events.publish, events.follow)
    task_engine: TaskManager  # the engine's tasks: their counts (stats)
    budgets: Budgets  # the agents' token and cost budgets
    sessions: Sessions  # the tasks' sessions (docs/durable.md#sessions)
    outputs: TaskOutputs  # the tasks' live output
    containment: Containment
    health: HealthBoard  # health checks' failures (/metrics)
    refusals: BoundaryRefusals  # the boundary's refusals by agent and kind (/metrics)
    stream: Stream  # every event, to subscribers that cannot break it
    heartbeat: HeartbeatWork
    runtime_stats: Callable[[], Stats]
    cluster: ClusterPeer  # this node with [cluster], else NotANode: never branched on
    # the daemon's services
    hub: LogHub
    store: StateStore
    audit: Audit  # its rows (audit.py), a submission's among them (submitted.py)
    revisions: RevisionLog
    fleet: Fleet
    tasks: TaskFront  # local, or the cluster's: chosen once, at start-up
    gateway: GatewayService
    web: Web  # the HTTP gateway, the dashboard's logins, the [http] server
    journal: TaskJournalDB | None  # the task journal, or None: `task_journal = false`
    history: History  # the metrics history (its sampler starts once the services exist)
    packages: Packages  # agent packages: deploy, releases
    dev_watch: FileWatches  # development mode (`watch = [...]`)
    watch: FleetWatch  # the fleet's changes for agents.watch
    tenants: TenantRegistry  # the tenants: the file's and the runtime's
    workflows: WorkflowService  # [workflows.NAME] and their runs (docs/workflows.md)
    teams: TeamService  # [teams.NAME] and their calls (docs/teams.md)
    schedules: ScheduleService  # [schedules.NAME] fired (docs/workflows.md#schedules)
    config_path: Path
    socket_path: Path
    started_at: float
    reload: Callable[[str], Awaitable[ReloadResult]]  # who asked -> what changed
    request_stop: Callable[[bool], None]  # now: no drain (or cut the one under way)
    drained: Callable[[], Awaitable[DrainReport]]  # what the stop's drain did, once it is over
    status_line: Callable[[], str]
    notices: Callable[[], list[str]]  # the daemon's own: a drain, an extra not serving
    extras: Callable[[], list[ExtraStatus]]  # the HTTP server's, the gateway's (extras.py)
    draining: Callable[[], str | None]  # how far a drain under way is
    # corral upgrade: checks the new install and hands over (daemon/upgrade.py)
    upgrade: Callable[[DaemonUpgrade], Awaitable[UpgradeReport]]
    traces: Traces | None = None  # with [tracing]: the exporter and the local store
    models: ModelGateway | None = None  # with [models]: the model gateway (docs/models.md)

    @property
    def http(self) -> Any:
        """The HTTP gateway: /mcp of [http], [gateway] listen; or None."""
        return self.web.gateway

    @property
    def ui(self) -> Logins | None:
        return self.web.logins

    def gateway_status(self) -> dict[str, Any]:
        return {**self.gateway.stats(),
                "http": self.http.status() if self.http is not None else None,
                "models": self.models.stats() if self.models is not None else None}

