"""The daemon's parts, each a context manager that sets one thing up, yields what it made
and tears it down: `Daemon._setup` enters them in order on one `AsyncExitStack`, so a
start-up that fails half-way tears down exactly what it set up, in reverse.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from .. import __version__
from ..jsonrpc import RpcError
from ..mcp.pins import PINS_FILE
from ..paths import default_log_dir, default_socket, default_state_dir, resolve
from ..supervisor.config import DEFAULT_TENANT, Config, ConfigError, SupervisorSettings
from ..supervisor.configload import check_sandboxes, config_files, load_config
from ..supervisor.core import Supervisor
from ..supervisor.dynamicusers import DynamicUsers, homes_of, uid_range
from ..supervisor.executor import KILL_GRACE
from ..supervisor.labels import Labels
from ..supervisor.parts import Parts
from ..supervisor.policy import PolicyGuard
from ..supervisor.process_replica import ProcessReplica, ReplicaExit, Transition
from ..supervisor.refusals import BoundaryRefusals, BoundaryRefused
from ..supervisor.stream import Checkpoint, ListChanged, Roster
from ..supervisor.tasks import CompactTask, Unfinished
from ..supervisor.tasks.approvals import Approvals
from ..supervisor.tasks.budget import DAY
from ..supervisor.tasks.inbox import InboxBounds
from ..supervisor.tasks.interceptors import TaskInterceptor
from ..supervisor.tasks.modelapprovals import ModelApprovals
from ..supervisor.tasks.modelbudget import ModelBudget
from ..supervisor.tasks.modelspan import ModelSpan
from ..supervisor.tasks.pingate import PinGate
from ..supervisor.tasks.sessions import SessionsEnding
from ..supervisor.tasks.waitclock import WaitClock
from ..supervisor.teams.tools import LeaderTools
from ..supervisor.tracing import Tracer
from ..timeouts import within
from . import journald
from .api import Auditor, Dispatcher
from .askwebhook import AskWebhook
from .audit import Audit as AuditLog
from .audit import AuditLink
from .background import Background
from .calljournal import CallJournal
from .control import AlreadyRunning, ControlServer
from .enginelog import EngineLog
from .extras import Extras
from .fleet import Fleet
from .gatewayaccess import GatewayService
from .handoff import Listeners
from .inboxjournal import AsksDB
from .incarnation import ProcessRecords, reclaim
from .journald import JournalSender, StderrEcho
from .labeljournal import LabelsDB
from .localgateway import LocalGateway, local_socket
from .logfiles import Rotation
from .logs import LogDirError, LoggedWarnings, LogHub
from .outputjournal import OutputsDB
from .packages.service import Packages
from .pushjournal import PushDB
from .revisions import RevisionLog, describe_change, kept_of, tenant_of
from .schedules import Ledger, LocalLedger, ScheduleService, schedule_agents, starter
from .services import Services
from .sessionjournal import SessionsDB
from .steps import StepsDB
from .store import StateStore
from .storeschema import StoreError
from .storewriter import StoreWriter
from .taskjournal import TaskJournalDB
from .tasks import LocalFront, TaskFront
from .teams import TeamService
from .teardown import TEARDOWN_STEP
from .tenantdirs import TenantDirs
from .tenantregistry import groups_of
from .toolpins import NodePins
from .traces import Traces
from .traces import start as start_traces
from .upgrade import Takeover
from .workflows import WorkflowService
from .workflows.runevents import publish_runs

if TYPE_CHECKING:
    from ..cluster.node import ClusterNode
    from ..cluster.queue import ClusterQueue
    from .http.mcp import HttpGateway
    from .models.gateway import ModelGateway


class StartupError(Exception):
    """The daemon cannot start; the text says why, for stderr."""


@contextlib.contextmanager
def refused(error: type[Exception], said: str = "") -> Iterator[None]:
    """What `error` says, as why the daemon does not start."""
    try:
        yield
    except error as exc:
        raise StartupError(f"{said}{exc}") from None


class Paths(msgspec.Struct, frozen=True):
    socket: Path
    state_dir: Path
    log_dir: Path


class Conf(msgspec.Struct, frozen=True):
    cfg: Config
    path: Path  # the file
    paths: Paths
    protected: list[tuple[str, str]]  # what no sandboxed agent may write or reach

    @property
    def dir(self) -> Path:
        return self.path.parent


def read_config(config_path: Path, socket: str | None, loaded: Config | None = None
                ) -> Conf:
    """The config, checked whole (its sandboxes too): ConfigError where it is not.
    `loaded`: the file's, read a moment ago (by an upgrade's new image)."""
    cfg = loaded if loaded is not None else load_config(config_path)
    base, s = config_path.parent, cfg.supervisor
    sock = Path(socket) if socket else resolve(base, s.socket) or default_socket()
    state_dir = resolve(base, s.state_dir) or default_state_dir()
    paths = Paths(sock, state_dir, resolve(base, s.log_dir) or default_log_dir(state_dir))
    # what no sandboxed agent may write or reach: corral's config files, its state, logs
    # and control socket (masked if it is there when an agent starts)
    guarded = [*config_files(cfg, config_path),
               (str(paths.state_dir), "corral's state directory"),
               (str(paths.log_dir), "corral's log directory"),
               (str(paths.socket), "corral's control socket")]
    check_sandboxes(cfg.agents, cfg.supervisor.bwrap, str(config_path), guarded,
                    cfg.tenants, uid_range(s.dynamic_uids))
    return Conf(cfg, config_path, paths, guarded)


@contextlib.asynccontextmanager
async def closed(close: Callable[[], Awaitable[None]]) -> AsyncIterator[None]:
    try:
        yield
    finally:
        await close()


# -- the parts, in the order they are entered -------------------------------------------------
@contextlib.contextmanager
def log_hub(conf: Conf) -> Iterator[LogHub]:
    sc = conf.cfg.supervisor
    with refused(LogDirError):
        hub = LogHub(conf.paths.log_dir,
                     rotation=Rotation(sc.log_max_bytes, sc.log_backups, sc.log_rotate_every,
                                       sc.log_compress),
                     tail_lines=sc.log_tail_lines, tail_bytes=sc.log_tail_bytes,
                     raw=sc.log_format == "raw", echo=StderrEcho(sc.log_level))
    warnings, parts = LoggedWarnings(hub), logging.getLogger("corral")
    with contextlib.closing(hub):
        parts.addHandler(warnings)
        try:
            yield hub
        finally:  # before the hub closes: no warning is written into a closed one
            parts.removeHandler(warnings)


@contextlib.contextmanager
def journal_sender(conf: Conf) -> Iterator[JournalSender | None]:
    sc = conf.cfg.supervisor
    if not (sc.log_journal is True or (sc.log_journal == "auto" and journald.available())):
        yield None
        return
    with contextlib.closing(JournalSender()) as sender:
        yield sender


def interceptors(tracer: Tracer | None, guard: PolicyGuard, leaders: LeaderTools,
                 refusals: BoundaryRefusals | None = None, audit: AuditLog | None = None
                 ) -> list[TaskInterceptor]:
    """The task path's interceptors, the outermost first: each call audited at its door
    (in `audit`, by the chain's audit link, around every link); a leader's call of a member is
    inside the leader's span; approvals inside the span, around a leader's members too;
    then the tools' pins (a drifted tool's call not approved told to `refusals`). A model
    call's links: its span, its policy rules, labels and approval, then its budget."""
    return [i for i in (AuditLink(audit) if audit is not None else None, tracer,
                        Approvals(guard), PinGate(refusals), leaders,
                        ModelSpan(tracer) if tracer is not None else None,
                        ModelApprovals(guard), ModelBudget()) if i is not None]


def engine(conf: Conf, spared: set[int], interceptors: Sequence[TaskInterceptor],
           refusals: BoundaryRefusals | None = None,
           audited: Callable[[BoundaryRefused, str | None], None] | None = None,
           labels: Labels | None = None) -> tuple[Supervisor, ClusterQueue | None]:
    """The engine, not yet open (`running` opens it), and with [cluster] the queue its
    tasks wait on (the node that pulls into it is made later); `audited`: writes each
    refusal of the boundary said (refusals.py), a row of the agent's tenant."""
    sc = conf.cfg.supervisor
    queue = None
    if conf.cfg.cluster is not None:
        from ..cluster.queue import ClusterQueue
        queue = ClusterQueue()
    sup = Supervisor(heartbeat_interval=sc.heartbeat_interval,
                     heartbeat_timeout=sc.heartbeat_timeout, cgroups=sc.cgroups,
                     max_replicas=sc.max_replicas, state_dir=conf.paths.state_dir,
                     keep_tasks=sc.keep_tasks,
                     keep_tasks_bytes=int(sc.keep_tasks_mb * 1024 * 1024),
                     task_queue=queue, spared=spared, interceptors=interceptors,
                     clock=WaitClock(manual=sc.manual_clock), refusals=refusals,
                     labels=labels)
    if audited is not None:
        tenant_of = sup.tenancy.tenant_of
        sup.stream.subscribe(lambda e: audited(e, tenant_of(e.agent)), BoundaryRefused)
    sup.parts.tuning.sandbox_program = sc.bwrap
    sup.parts.tuning.protected_paths = conf.protected
    sup.parts.tuning.gateway_relay = gateway_relay(conf.paths)
    sup.parts.tuning.control_socket = str(conf.paths.socket)
    uids = uid_range(sc.dynamic_uids)
    if uids is not None and os.geteuid() == 0:  # (else every process is the daemon's user)
        sup.parts.tuning.dynamic_users = DynamicUsers(uids, homes_of(conf.paths.state_dir))
    return sup, queue


def gateway_relay(paths: Paths) -> str | None:
    """The unix socket TCP gateways are also served on, for egress = "gateways"
    sandboxes, beside the control socket; None where that path is too long."""
    path = f"{paths.socket}.gw"
    return path if len(os.fsencode(path)) <= SOCKET_PATH_MAX else None


def gateway_service(conf: Conf, parts: Parts, audit: Auditor, calls: Dispatcher[Services],
                    traces: Traces | None, guard: PolicyGuard | None = None) -> GatewayService:
    """The MCP gateway's service, configured (its tokens file read); `guard`: the
    policy its replicas' calls of no task pass."""
    gateway = GatewayService(parts.agents, parts.tools, parts.stream, audit, calls=calls,
                             tasks=parts.tasks,
                             tracer=traces.tracer if traces is not None else None,
                             guard=guard)
    with refused(ConfigError, "invalid config: "):
        gateway.configure(conf.cfg.gateway, conf.dir)
    return gateway


@contextlib.asynccontextmanager
async def model_gateway(conf: Conf, parts: Parts, gateway: GatewayService
                        ) -> AsyncIterator[ModelGateway | None]:
    """The model gateway, where [models] names any: its callers known by the MCP
    gateway's per-replica tokens; its keys read now (one unreadable stops the start)."""
    if not conf.cfg.models:
        yield None
        return
    from .models.gateway import ModelGateway

    models = ModelGateway(parts.tasks, gateway, gateway.attribution)
    with refused(ConfigError, "invalid config: "):
        models.configure(conf.cfg.models, conf.dir)
    async with closed(models.close):
        yield models


def hear(parts: Parts, hub: LogHub, sender: JournalSender | None,
         gateway: GatewayService) -> EngineLog:
    heard = EngineLog(hub, sender)
    heard.subscribe(parts.stream)
    parts.stream.subscribe(gateway.on_transition, Transition)
    parts.stream.subscribe(lambda e: gateway.changed([e.kind]), ListChanged)
    parts.stream.subscribe(gateway.forget_replica, ReplicaExit)
    # a removed agent's log is no next owner's of its name (LogHub.forget)
    parts.stream.subscribe(lambda e: None if e.agent in parts.agents else hub.forget(e.agent),
                           Roster)
    return heard


def replica_environment(parts: Parts, hub: LogHub, gateway: GatewayService,
                        models: ModelGateway | None = None
                        ) -> Callable[[ProcessReplica], dict[str, str]]:
    """Each replica's environment (its tenant's directories, the gateways' addresses and
    its token), asked by the engine as each process is about to start."""
    dirs = TenantDirs(parts, hub, hub.daemon)

    def environment(r: ProcessReplica) -> dict[str, str]:
        mcp = gateway.replica_environment(r)
        return {**dirs.starting(r), **mcp,
                **(models.environment(mcp) if models is not None else {})}

    return environment


# a unix socket's path is at most this many bytes (sun_path's 108, its last a NUL)
SOCKET_PATH_MAX = 107


def unheard(exc: OSError, path: str | Path) -> str:
    """Why the control socket could not listen: a path too long for a unix socket has no
    errno (Python's own check), so its reason names the bound."""
    size = len(os.fsencode(path))
    if exc.strerror is None and size > SOCKET_PATH_MAX:
        return f"its path is {size} bytes, over SOCKET_PATH_MAX ({SOCKET_PATH_MAX})"
    return str(exc.strerror or exc)


@contextlib.asynccontextmanager
async def control_socket(conf: Conf, calls: Dispatcher[Services], hub: LogHub,
                         taken: Takeover | None, graceful: Callable[[], bool]
                         ) -> AsyncIterator[ControlServer]:
    """The control socket (inherited across an upgrade): it answers from here on. Its
    teardown says `stopped` last, when a stop was asked for."""
    sc = conf.cfg.supervisor
    control = ControlServer(calls, hub.daemon, conf.paths.socket, sc.group,
                            max_connections=sc.max_connections,
                            idle_timeout=sc.control_idle_timeout)
    # the file's tenants' groups at once: no peer of a tenant is served as an operator
    # while the state database opens (its runtime tenants' come with it)
    control.set_tenant_groups(groups_of(conf.cfg.tenants, hub.daemon))
    try:
        with refused(AlreadyRunning):
            await control.start(taken.handoff.control if taken is not None else None)
    except OSError as exc:
        path = conf.paths.socket
        raise StartupError(f"cannot listen on {path}: {unheard(exc, path)}") from None
    try:
        yield control
    finally:
        try:
            if graceful():
                hub.daemon("stopped")
        finally:
            await control.close()


class Stores(msgspec.Struct, frozen=True):
    store: StateStore
    writer: StoreWriter  # every write goes through its thread, off the loop
    revisions: RevisionLog
    journal: TaskJournalDB | None  # None: `task_journal = false`
    unfinished: list[Unfinished]  # the journal's tasks not finished when it last closed


def asks_bounds(sc: SupervisorSettings) -> InboxBounds:
    return InboxBounds(sc.max_pending_asks, sc.max_pending_asks_per_tenant,
                       sc.max_asks_per_task)


@contextlib.asynccontextmanager
async def state_store(conf: Conf, parts: Parts, hub: LogHub) -> AsyncIterator[Stores]:
    """The state database, its writer thread and the journals on it; the engine's
    checkpoints, sessions, tasks and budgets as they left them."""
    sc = conf.cfg.supervisor
    error = partial(hub.daemon, priority=3)
    notice = partial(hub.daemon, priority=5)
    async with contextlib.AsyncExitStack() as own:
        with refused(StoreError):
            # opening (and migrating) the database is a few commits with their fsyncs: in
            # a thread, as the control socket already answers
            store = await asyncio.to_thread(StateStore, conf.paths.state_dir / "corral.db",
                                            sync=sc.journal_sync, stream=parts.stream,
                                            audit_max_rows=sc.audit_max_rows)
            own.callback(store.close)
            parts.checkpoints.update(await asyncio.to_thread(
                lambda: store.states(holders(conf.cfg, store.runtime_agents()))))
            writer = store.open_writer(on_error=error, on_notice=notice)
            own.push_async_callback(store.close_writer)  # checkpoints too
            if conf.cfg.cluster is None:  # (with [cluster]: the cluster's, cluster_node)
                with refused(ValueError):
                    await parts.tools.pins.keep_in(NodePins(store),
                                                   conf.paths.state_dir / PINS_FILE)
            # the sessions back before the journal's tasks, which find theirs in them
            assert store.thread is not None  # open_writer made it
            sessions = SessionsDB(store.path, store.thread, on_error=error)
            own.push_async_callback(sessions.close)
            parts.tasks.sessions.restore(*await asyncio.to_thread(sessions.load))
            parts.tasks.sessions.journal = sessions
            parts.tasks.sessions.hot.budget = int(sc.session_memory_mb * 1024 * 1024)
            journal: TaskJournalDB | None = None
            unfinished: list[Unfinished] = []
            if sc.task_journal:
                journal = TaskJournalDB(store.path, sync=sc.journal_sync,
                                        max_age=sc.journal_max_age,
                                        max_tasks=sc.journal_max_tasks, on_error=error,
                                        on_notice=notice, writer=store.thread,
                                        max_keys=sc.idempotency_keys_per_tenant)
                own.push_async_callback(journal.close)
                steps = StepsDB(store.path, store.thread, sync=sc.journal_sync,
                                on_error=error)
                own.push_async_callback(steps.close)
                # the step log a kill left, into the database before the tasks are read:
                # a task's checkpoint is read with its row, and the last may be only there
                await asyncio.to_thread(steps.recover)
                unfinished = await asyncio.to_thread(journal.unfinished)
                parts.tasks.journal_to(journal, steps)
                parts.tasks.spawns.node.keep_in(CallJournal(store))
                own.push_async_callback(parts.tasks.spawns.node.close)
                outputs = OutputsDB(store.path, store.thread, on_error=error)
                own.push_async_callback(outputs.close)
                await asyncio.to_thread(outputs.load)
                parts.tasks.outputs.journal = outputs
                for agent, when, tokens, cost in await asyncio.to_thread(
                        journal.usage_since, time.time() - DAY):
                    parts.tasks.budgets.restore(agent, tokens, cost, when)
            parts.tasks.labels = LabelsDB(store, journal, sessions)
            parts.tasks.push = PushDB(store)
            parts.tasks.inbox.load(AsksDB(store), asks_bounds(sc),
                # a suspended task's id held once, by the engine and its asks
                {r.task_id: r.task_id for r in unfinished if isinstance(r, CompactTask)})
            own.callback(parts.tasks.inbox.close)
            # asks the last daemon left pending for no unfinished task end withdrawn: a
            # replica's call of no task died with it; a task's end was committed and a
            # kill came before its asks' withdrawal was (askwaits.py)
            live = {r.task_id for r in unfinished}
            for owner in sorted({a.task_id for a in parts.tasks.inbox.pending()} - live):
                await parts.tasks.inbox.withdraw(owner)
            if conf.cfg.approvals is not None:  # each ask made and ended, to a chat tool
                webhook = AskWebhook(conf.cfg.approvals, parts.tasks.stream, error)
                own.push_async_callback(webhook.close)
        parts.stream.subscribe(lambda c: store.save_state(
            c.agent, c.replica, c.time, c.state,
            parts.quotas.tenant_of(c.agent) or DEFAULT_TENANT), Checkpoint)
        parts.stream.subscribe(lambda e: states_end(parts, store, e.owners), SessionsEnding)
        yield Stores(store, writer, RevisionLog(store.db, kept_of(conf.cfg.supervisor)),
                     journal, unfinished)


@contextlib.contextmanager
def signals(put: Callable[[int], None]) -> Iterator[None]:
    loop = asyncio.get_running_loop()
    handled = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR2)
    try:
        for sig in handled:
            loop.add_signal_handler(sig, put, sig)
        yield
    finally:
        for sig in handled:
            loop.remove_signal_handler(sig)


@contextlib.asynccontextmanager
async def event_pump(sup: Supervisor, heard: EngineLog) -> AsyncIterator[None]:
    # (a task's start and end are its journal's: a replica's moves between READY, BUSY
    # and IDLE are no line of its log, decision 1440)
    events = sup.subscribe(maxsize=100_000, work=False)
    background = Background(heard.hub.daemon)
    background.start("event pump", lambda: heard.pump(events))
    try:
        yield
    finally:
        await asyncio.sleep(0)  # the last events reach the log before the pump stops
        await background.close()


@contextlib.asynccontextmanager
async def cluster_node(conf: Conf, sup: Supervisor, queue: ClusterQueue | None,
                       fleet: Fleet, hub: LogHub, taken: Takeover | None,
                       store: StateStore) -> AsyncIterator[ClusterNode | None]:
    """With [cluster], this node: made before the engine opens, it leaves its cluster
    after the agents have stopped (their last outcomes are in its outbox by then)."""
    settings = conf.cfg.cluster
    if settings is None:
        yield None
        return
    from ..cluster.node import ClusterNode  # redis-py only where [cluster] is
    assert queue is not None
    node = ClusterNode(settings, sup, sup.parts, queue, hub.daemon,
                       prepare=fleet.fill_paths, apply=fleet.apply_spec,
                       describe=describe_change, key=cluster_key(conf, hub),
                       calls=CallJournal(store),
                       asks_bounds=asks_bounds(conf.cfg.supervisor),
                       key_bound=conf.cfg.supervisor.idempotency_keys_per_tenant)
    handed = taken.handoff.cluster if taken is not None else None
    if handed is not None:
        from ..cluster import handover  # an upgrade's: the same daemon and incarnation
        handover.go_on(node, handed)
        assert taken is not None
        taken.node = node
    async with closed(node.close):
        await one_node(node, hub)
        if handed is not None:  # (its running claims' tasks are their records in Redis)
            assert taken is not None
            taken.claims = await handover.kept(node, handed.claims)
        await cluster_pins(conf, sup, node, hub)
        yield node


async def cluster_pins(conf: Conf, sup: Supervisor, node: ClusterNode, hub: LogHub) -> None:
    """The tools' pins kept in the cluster's Redis; Redis away, each is asked of it at
    its tool's next sight (a pins file of an earlier corral stops the start: decision 1470)."""
    from redis.exceptions import RedisError

    from ..cluster.toolpins import ClusterPins
    home = ClusterPins(node.redis, node.keys, node.trust, hub.daemon)
    with refused(ValueError):
        try:
            await sup.mcp.pins.keep_in(home, conf.paths.state_dir / PINS_FILE)
        except (RedisError, OSError, RpcError) as exc:
            hub.daemon(f"cluster: the tools' pins not read from Redis now ({exc}): each "
                       "is read at its tool's next sight")


def cluster_key(conf: Conf, hub: LogHub) -> bytes | None:
    from ..cluster.trust import NO_KEY_WARNING, load_key
    settings = conf.cfg.cluster
    assert settings is not None
    if settings.key_file is None:
        hub.daemon(f"WARNING: cluster {settings.name}: {NO_KEY_WARNING}", priority=4)
        return None
    with refused(ConfigError, "invalid config: "):
        return load_key(resolve(conf.dir, settings.key_file) or Path(settings.key_file))


async def one_node(node: ClusterNode, hub: LogHub) -> None:
    """One daemon per node name: refused at start while another daemon is this node;
    Redis away, the membership loop checks at each join."""
    from redis.exceptions import RedisError
    try:
        await within(node.membership.check_unique(), 2 * node.settings.node_ttl
                     + node.settings.beat)
    except RuntimeError as exc:
        raise StartupError(f"cannot start as a node of cluster {node.settings.name}: "
                           f"{exc}") from None
    except (RedisError, OSError, TimeoutError) as exc:
        hub.daemon(f"cluster: whether another daemon is node {node.node} cannot be told "
                   f"now ({type(exc).__name__}: {exc}); it is asked at each join")


@contextlib.asynccontextmanager
async def running(sup: Supervisor, conf: Conf, opened: Stores, hub: LogHub,
                  environment: Callable[[ProcessReplica], dict[str, str]],
                  taken: Takeover | None, graceful: Callable[[], bool]
                  ) -> AsyncIterator[None]:
    """The engine open: what a crashed incarnation left running is stopped before
    anything starts (an upgrade's new image goes on as the old one: `Takeover.go_on`),
    and this one's processes are recorded. Its teardown stops every agent (gracefully
    when a stop was asked for), then ends the incarnation."""
    if taken is not None:
        taken.go_on(sup, opened.store)
    sup.open(environment)
    records: ProcessRecords | None = None
    try:
        hub.daemon(f"corral {__version__} started, pid {os.getpid()}, "
                   f"config {conf.path}, socket {conf.paths.socket}")
        hub.daemon(sup.parts.containment.notice)
        await reclaim(sup.parts.containment, opened.store, hub)
        records = ProcessRecords(opened.store, opened.writer, sup.parts.containment)
        yield
    finally:
        try:
            await sup.close(graceful=graceful())
        finally:
            if records is not None:  # after every process is gone
                await records.close()


def stop_bound(sup: Supervisor) -> float:
    """Seconds the agents' stop (`running`'s teardown) may take before it is more than a
    slow stop: the checkpoints, each layer, the tool servers and containment's last sweep,
    each as long as the longest replica's stop, and a step's own deadline on top."""
    replicas = [*sup.agents.replicas(), *sup.mcp.instances()]
    longest = max((r.spec.stop_timeout for r in replicas), default=0.0)
    steps = len(sup.agents.stop_layers()) + 3
    return steps * (2 * longest + KILL_GRACE) + TEARDOWN_STEP


def holders(cfg: Config, runtime: dict[str, dict[str, Any]]) -> dict[str, str]:
    """The tenant each agent's name is held by as the daemon starts (the file wins)."""
    held = {name: tenant_of(table) for name, table in runtime.items()}
    held.update((name, spec.tenant) for name, spec in cfg.agents.items())
    return held


def states_end(parts: Parts, store: StateStore, owners: Mapping[str, str]) -> None:
    """Removed agents' (name -> its tenant) state checkpoints end with them, in memory
    and in the database: a later agent of the name, whoever's, starts with none. A
    checkpoint still waiting for the writer is written before the delete."""
    for key in [k for k in parts.checkpoints if k[0] in owners]:
        del parts.checkpoints[key]
    if store.writer is not None:
        store.writer.submit(StateStore.forgetting_states(owners.items()),
                            "state checkpoints")


@contextlib.asynccontextmanager
async def workflows(conf: Conf, parts: Parts, store: StateStore, hub: LogHub,
                    traces: Traces | None, node: ClusterNode | None
                    ) -> AsyncIterator[WorkflowService]:
    """[workflows.NAME] and their runs; entered after the engine runs, so a stop ends
    the runs' drivers (resumed at the next start) before the agents stop under them.
    With [cluster], the runs are the cluster's (cluster/clustercalls.py)."""
    service = WorkflowService(parts.agents, parts.tasks, store, hub.daemon,
                              traces.tracer if traces is not None else None,
                              node.durables if node is not None else None)
    service.configure(conf.cfg.workflows)
    publish_runs(parts.stream, parts.bus)
    sc = conf.cfg.supervisor
    service.max_age, service.max_runs = sc.journal_max_age, sc.journal_max_tasks
    async with closed(service.close):
        yield service


@contextlib.asynccontextmanager
async def teams(conf: Conf, parts: Parts, store: StateStore, hub: LogHub,
                leaders: LeaderTools, node: ClusterNode | None
                ) -> AsyncIterator[TeamService]:
    """[teams.NAME] and their calls, entered after the engine runs as `workflows` is.
    `leaders`: the engine's interceptor that gives a leader its members as tools."""
    service = TeamService(parts.agents, parts.tasks, store, hub.daemon, leaders,
                          traced=conf.cfg.tracing is not None, tools=parts.tools,
                          durables=node.durables if node is not None else None)
    service.configure(conf.cfg.teams)
    async with closed(service.close):
        yield service


@contextlib.asynccontextmanager
async def schedules(conf: Conf, parts: Parts, store: StateStore, tasks: TaskFront,
                    workflows: WorkflowService, node: ClusterNode | None, hub: LogHub
                    ) -> AsyncIterator[ScheduleService]:
    """[schedules.NAME]: configured now, fired once the tasks are recovered; with
    [cluster], each fired by the node holding its lease in Redis."""
    ledger: Ledger = LocalLedger(store)
    if node is not None:
        from ..cluster.schedules import ClusterLedger

        ledger = ClusterLedger(node.redis, node.keys.prefix, node.membership,
                               node.settings.node_ttl, hub.daemon)
    service = ScheduleService(ledger, starter(tasks, workflows), parts.stream, hub.daemon,
                              schedule_agents(workflows), parts.agents)
    service.configure(conf.cfg)
    async with closed(service.close):
        yield service


def task_front(parts: Parts, journal: TaskJournalDB | None, node: ClusterNode | None,
                hub: LogHub) -> TaskFront:
    local = LocalFront(parts.agents, parts.tasks, journal, hub.daemon)
    if node is None:
        return local
    from .tasks.clustered import ClusterFront
    return ClusterFront(local, node, parts.quotas)


async def packages(conf: Conf, parts: Parts, opened: Stores, fleet: Fleet,
                    node: ClusterNode | None, hub: LogHub) -> Packages:
    """Agent packages, their interrupted builds and switches dealt with before any
    agent starts."""
    pkg = conf.cfg.packages
    packages = Packages(pkg, Path(pkg.dir) if pkg.dir else conf.paths.state_dir
                        / "packages", parts, opened.store, opened.revisions, fleet,
                        hub.daemon, node.refuse_deploy if node is not None else None)
    with refused(StoreError):
        await packages.start()
    return packages


@contextlib.asynccontextmanager
async def http_gateway(conf: Conf, gateway: GatewayService, hub: LogHub, extras: Extras,
                       listeners: Listeners, control: ControlServer,
                       models: ModelGateway | None = None
                       ) -> AsyncIterator[HttpGateway | None]:
    """The HTTP gateway, before any agent starts (agents are given its URL): at `/mcp`
    of the [http] server, on a site of its own at `[gateway] listen`, an extra, and on
    the local socket (localgateway.py), made for it alone at its first client when
    neither is configured."""
    cfg = conf.cfg
    made: list[HttpGateway] = []

    def make() -> HttpGateway:
        if not made:
            from .http.mcp import HttpGateway

            made.append(HttpGateway(gateway, cfg.gateway, conf.dir, listeners, models,
                                    relay=gateway_relay(conf.paths)))
        return made[0]

    path = local_socket(conf.paths.socket)
    local = LocalGateway(path, control, gateway, listeners, make) \
        if len(os.fsencode(path)) <= SOCKET_PATH_MAX else None
    try:
        try:
            if local is not None:
                await local.start()
        except OSError as exc:  # (an extra: the daemon serves on without it)
            hub.daemon(f"the MCP gateway's local socket {path} cannot be served "
                       f"({exc.strerror or exc}): corral mcp serve cannot reach this daemon",
                       priority=4)
            local = None
        if not (cfg.gateway.listen or cfg.http.listen):
            yield None
            return
        http = make()
        if cfg.gateway.listen:
            async def attempt() -> None:
                await http.start()
                gateway.url = http.url
                gateway.socket_path = http.socket_path
                hub.daemon(f"gateway listening on {cfg.gateway.listen} ({http.url})")

            await extra(extras, "gateway", cfg.gateway.listen, attempt)
        yield http
    finally:
        if local is not None:
            await local.close()
        if made:
            await made[0].close()


@contextlib.asynccontextmanager
async def http_server(conf: Conf, services: Services, calls: Dispatcher[Services],
                      extras: Extras, listeners: Listeners) -> AsyncIterator[None]:
    """[http]: the REST API, /metrics and the dashboard, once the services exist
    (aiohttp imported only then); an extra, retried until it binds (`web.server`)."""
    settings = conf.cfg.http
    if not settings.listen:
        yield
        return
    from .http.context import HttpContext
    from .http.server import HttpServer

    ctx = HttpContext(services=services, dispatcher=calls, settings=settings,
                      a2a=conf.cfg.a2a)
    web = services.web

    async def attempt() -> None:
        server = HttpServer(ctx, listeners)  # an inherited socket (corral upgrade) first
        try:
            await server.start()
        except BaseException:
            await server.close()
            raise
        web.server = server
        services.hub.daemon(f"HTTP listening on {settings.listen} ({server.url})")
        http = services.http
        if http is not None:
            # /mcp is mounted: agents are given it unless the gateway has its own site
            listen = settings.listen or ""
            unix = listen.removeprefix("unix:") if listen.startswith("unix:") else None
            http.served_at("http://localhost" if unix else server.url, unix)
            services.gateway.url, services.gateway.socket_path = (http.url,
                                                                  http.socket_path)

    try:
        await extra(extras, "HTTP server", settings.listen, attempt)
        yield
    finally:
        if web.server is not None:
            await web.server.close()


async def extra(extras: Extras, name: str, listen: str,
                attempt: Callable[[], Awaitable[None]]) -> None:
    """Start an extra (retried in the background when it fails), unless its config is
    refused: then the daemon does not start."""
    with refused(ConfigError, f"cannot start the {name} on {listen}: "):
        await extras.start(name, listen, attempt)


def freeze_heap(*, collect: bool = True) -> None:
    """Modules, classes, config and the daemon's own parts live as long as the process:
    out of every full pass of the cyclic collector from here on. `collect`: a pass over
    the young generations first (not in an upgrade's image, whose dispatch waits). Not a
    full pass: it took ~17 ms of a boot and found nothing to free. Then the youngest
    generation is let grow to YOUNG_OBJECTS before its pass (decision 2135)."""
    if collect:
        gc.collect(1)
    gc.freeze()
    gc.set_threshold(YOUNG_OBJECTS, *gc.get_threshold()[1:])


# the tracked objects made (less those freed) before the collector's pass over the youngest
# generation: the requests in flight at once hold about as many as Python's default, so at
# its default a pass came every few dozen of them and found what they still held
YOUNG_OBJECTS = 10_000


def export_bound(cfg: Config) -> float:
    """Seconds the trace exporter's teardown may take: its last export's timeout, and
    the wait for its process to end."""
    return (cfg.tracing.export_timeout if cfg.tracing is not None else 0.0) + TEARDOWN_STEP


@contextlib.asynccontextmanager
async def tracing(conf: Conf, traces: Traces | None) -> AsyncIterator[Traces | None]:
    """[tracing]: the spans' exporter and local store; closed after the agents stop,
    so that their last spans are kept."""
    try:
        await start_traces(traces)
    except OSError as exc:  # its store's files (a link in their place: statefiles.py)
        raise StartupError(f"the trace store cannot be made in {conf.paths.state_dir} "
                           f"({exc.strerror})") from None
    try:
        yield traces
    finally:
        if traces is not None:
            await traces.close()
