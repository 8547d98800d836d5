"""`corral daemon`: the supervisor as a service, and the composition root of its parts.

`Daemon.run` sets the parts up in order, each with its teardown pushed on one
`AsyncExitStack` (so a start-up that fails half-way tears down exactly what it set up,
in reverse), then runs the arbiter loop: signals are queued into the event loop and
handled there, gunicorn-style — SIGTERM/SIGINT (or `daemon.shutdown`) drain (drain.py:
no new task to a worker, running tasks finish within drain_timeout; the same signal
again, or `shutdown --now`, cuts it short), stop every agent gracefully and exit 0;
SIGHUP reloads the config. It speaks sd_notify when systemd started it: READY=1 once
every autostart agent is up, WATCHDOG=1 from the heartbeat loop, STATUS= lines
(`draining 3 tasks ...` during a drain), RELOADING=1, STOPPING=1. The HTTP server and
the gateway's site are extras (extras.py): a failure to start one is reported and
retried, never a failure of the daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from .. import __version__, redact
from ..jsonrpc import LineBlock, RpcError
from ..methods import Drained, ReloadResult
from ..paths import default_log_dir, default_socket, default_state_dir, resolve
from ..supervisor.config import ClusterSettings, Config, ConfigError
from ..supervisor.configload import check_sandboxes, config_files, load_config
from ..supervisor.containment import Containment, ProcessEnded, ProcessStarted, read_stat
from ..supervisor.core import Supervisor
from ..supervisor.elastic import Scaling
from ..supervisor.health import AgentReadiness, HealthChange
from ..supervisor.lifecycle import UNSETTLED, State
from ..supervisor.parts import Parts
from ..supervisor.process_replica import Exited, LogLines, Transition
from ..supervisor.stream import Checkpoint, ListChanged, Stall, Tick
from ..supervisor.tasks import TaskRecord
from ..supervisor.tasks.budget import DAY
from ..supervisor.tenantcgroups import TenantOomKill
from ..text import plural
from ..timeouts import within
from . import journald
from .api import Dispatcher
from .background import Background
from .caller import Caller
from .clusterpeer import NotANode
from .commands import HANDLERS, fleet_line, owner_of
from .control import AlreadyRunning, ControlServer
from .drain import Drain
from .extras import Extras
from .filewatch import FileWatches
from .fleet import Fleet
from .fleetwatch import FleetWatch
from .gatewayaccess import GatewayService
from .history import History
from .journald import JournalSender, StderrEcho
from .logs import LogDirError, LogHub
from .notify import Notifier
from .packages.service import Packages
from .revisions import RevisionLog, describe_change, spec_table
from .services import Services
from .store import StateStore
from .storeschema import StoreError
from .storewriter import StoreWriter
from .taskjournal import TaskJournalDB
from .tasks import LocalFront, TaskFront
from .tenantdirs import TenantDirs
from .tenantregistry import TenantRegistry, groups_of
from .tokens import tokens_of
from .traces import start as start_traces
from .upgrade import Taken, Upgrades

if TYPE_CHECKING:
    from ..cluster.node import ClusterNode
    from .http.server import HttpServer

log = logging.getLogger("corral.daemon")
# states in which a replica is neither up nor settled down: READY=1 waits for none to be
STOP = -1  # queued like a signal: `daemon.shutdown`
STOP_NOW = -2  # `daemon.shutdown` with now: no drain
UPGRADE = -3  # `daemon.upgrade`, checked: hand over and exec (upgrade.py)


class StartupError(Exception):
    """The daemon cannot start; the text says why, for stderr."""


@dataclass
class Paths:
    socket: Path
    state_dir: Path
    log_dir: Path


class Daemon:
    def __init__(self, config_path: Path, *, socket: str | None = None,
                 notifier: Notifier | None = None, freeze_heap: bool = False,
                 spared: set[int] | None = None,
                 taken: Taken | None = None) -> None:
        self.config_path = config_path.resolve()
        # an embedding program's own children, left to it (containment.Containment), and
        # the daemon's own it waits for itself (an upgrade's check of the new install)
        self.spared: set[int] = spared if spared is not None else set()
        # whether what start-up made is taken out of the collector's passes: a decision
        # for the whole process, so only `corral daemon`'s own (run_daemon) makes it
        self.freeze_heap = freeze_heap
        self.socket_override = socket
        self.notifier = notifier or Notifier()
        self.started_at = time.time()
        self._signals: asyncio.Queue[int] = asyncio.Queue()
        # set once the parts are up and the agents added: what an embedding program (a
        # test running the daemon in its own loop) waits for before it uses `services`
        self.set_up = asyncio.Event()
        self._ready_sent = False
        # a stop asked for (not a start-up that failed): what was started ends gracefully
        self._graceful = False
        self.cluster: ClusterNode | None = None  # with [cluster]: this node
        self.drain_timeout = 0.0  # [supervisor] drain_timeout (set from the config)
        self.drain: Drain | None = None  # a stop's drain, while it runs
        self._drained: asyncio.Future[Drained] | None = None  # what it did, once over
        self.extras: Extras | None = None
        self._faults: tuple[str | None, str | None] = (None, None)  # told by STATUS=
        # corral upgrade (upgrade.py): asked, handed over; `taken`: this image took one
        self.taken = taken
        if taken is not None:
            self.started_at = taken.handoff.started_at
        self.upgrades = Upgrades(self, lambda: self._signals.put_nowait(UPGRADE), taken)

    def _paths(self, cfg: Config) -> Paths:
        base = self.config_path.parent
        s = cfg.supervisor
        sock = (Path(self.socket_override) if self.socket_override
                else resolve(base, s.socket) or default_socket())
        state_dir = resolve(base, s.state_dir) or default_state_dir()
        return Paths(sock, state_dir, resolve(base, s.log_dir) or default_log_dir(state_dir))

    def _protected(self, cfg: Config, paths: Paths) -> list[tuple[str, str]]:
        """What no sandboxed agent may write or reach: corral's config files, its state,
        logs and control socket (the socket is where `paths` says, even before it is
        bound: the sandbox masks it if it is there when an agent starts)."""
        return [*config_files(cfg, self.config_path),
                (str(paths.state_dir), "corral's state directory"),
                (str(paths.log_dir), "corral's log directory"),
                (str(paths.socket), "corral's control socket")]

    # -- the arbiter ------------------------------------------------------------------------
    async def run(self) -> int:
        """Run until told to stop; the exit status of `corral daemon`."""
        async with contextlib.AsyncExitStack() as stack:
            try:
                services = await self._setup(stack)
            except StartupError as exc:
                print(f"corral: {exc}", file=sys.stderr)
                return 1
            self.set_up.set()
            await self._arbiter(services)
        return 0

    async def _arbiter(self, s: Services) -> None:
        """The daemon's loop: what the kernel and the operator ask for, one at a time."""
        while True:
            sig = await self._signals.get()
            if sig == signal.SIGHUP:
                s.hub.daemon("received SIGHUP: reloading")
                try:  # as `corral reload` is: through the Dispatcher, audited
                    await self.dispatcher.call(Caller(
                        via="signal", uid=os.geteuid(), pid=os.getpid(),
                        name="signal SIGHUP"), "config.reload")
                except RpcError as exc:
                    s.hub.daemon(exc.message, priority=4)
                continue
            if sig in (signal.SIGUSR2, UPGRADE):
                if sig == signal.SIGUSR2:
                    s.hub.daemon("received SIGUSR2: upgrading")
                    self.upgrades.signalled()
                await self.upgrades.hand_over()  # returns only if nothing was handed over
                continue
            if sig not in (STOP, STOP_NOW):
                s.hub.daemon(f"received {signal.Signals(sig).name}")
            break
        self._graceful = True
        drained = await self._drain(s, now=sig == STOP_NOW)
        self.notifier.stopping("stopping agents")
        s.hub.daemon("shutting down: stopping all agents")
        self._stopped_drain().set_result(drained)

    async def _drain(self, s: Services, *, now: bool) -> Drained:
        """Before the agents stop: no new task to a worker, and the running ones finish
        within their drain_timeout (drain.py). Signals are still heard meanwhile: a
        second SIGTERM or SIGINT, or `shutdown --now`, cuts it short."""
        drain = self.drain = Drain(s.task_engine, s.agents, self.drain_timeout,
                                   s.hub.daemon, self.notifier.status_changed)
        if now:
            s.hub.daemon("stopping at once (no drain): running tasks are handed to the "
                         "next daemon")
            drain.cut()
        if self.cluster is not None:
            # this node's queued cluster tasks go to the other nodes at once
            try:
                await self.cluster.stop_taking()
            except Exception as exc:  # the stop goes on: hand_back tries again
                s.hub.daemon(f"cluster: the waiting tasks were not handed back before "
                             f"the drain: {type(exc).__name__}: {exc}", priority=4)
        run = asyncio.ensure_future(drain.run())
        while not run.done():
            get = asyncio.ensure_future(self._signals.get())
            await asyncio.wait([run, get], return_when=asyncio.FIRST_COMPLETED)
            if not get.done():
                get.cancel()
                continue
            sig = get.result()
            if sig == STOP:
                continue  # another `corral shutdown`: it waits for this one
            if sig == signal.SIGHUP:
                s.hub.daemon("received SIGHUP while stopping: not reloaded", priority=4)
                continue
            name = "shutdown --now" if sig == STOP_NOW else signal.Signals(sig).name
            s.hub.daemon(f"received {name} while draining: stopping at once, running "
                         "tasks are handed to the next daemon", priority=4)
            drain.cut()
        self.drain = None
        self.notifier.status_changed()
        try:
            return run.result()
        except Exception as exc:  # a bug must not keep the daemon from stopping
            s.hub.daemon(f"the drain failed: {type(exc).__name__}: {exc}", priority=3)
            return Drained(seconds=0.0, tasks=[], waiting=0, cut_short=True)

    def _stopped_drain(self) -> asyncio.Future[Drained]:
        if self._drained is None:
            self._drained = asyncio.get_running_loop().create_future()
        return self._drained

    async def drained(self) -> Drained:
        """What the stop's drain did: waits for a stop to be asked for and drained."""
        return await asyncio.shield(self._stopped_drain())

    async def _hand_back(self) -> None:
        if self.cluster is not None:
            await self.cluster.hand_back()

    async def _leave_cluster(self) -> None:
        if self.cluster is not None:
            await self.cluster.close()

    def _stopped(self, hub: LogHub) -> None:
        if self._graceful:  # a start-up that failed has said why on stderr
            hub.daemon("stopped")

    def request_stop(self, now: bool = False) -> None:
        self._signals.put_nowait(STOP_NOW if now else STOP)

    # -- set-up, each part with its teardown --------------------------------------------------
    async def _setup(self, stack: contextlib.AsyncExitStack) -> Services:
        try:
            cfg = load_config(self.config_path)
            paths = self._paths(cfg)
            check_sandboxes(cfg.agents, cfg.supervisor.bwrap, str(self.config_path),
                            self._protected(cfg, paths))
        except ConfigError as exc:
            raise StartupError(f"invalid config: {exc}") from None
        sc = cfg.supervisor
        self.drain_timeout = sc.drain_timeout
        try:
            hub = LogHub(paths.log_dir, max_bytes=sc.log_max_bytes, backups=sc.log_backups,
                         tail_lines=sc.log_tail_lines, tail_bytes=sc.log_tail_bytes,
                         raw=sc.log_format == "raw")
        except LogDirError as exc:
            raise StartupError(str(exc)) from None
        stack.callback(self.notifier.close)
        stack.callback(hub.close)
        hub.echo = StderrEcho(sc.log_level)
        self.hub = hub
        extras = self.extras = Extras(lambda text, priority: hub.daemon(text,
                                                                        priority=priority),
                                      self.notifier.status_changed)
        stack.push_async_callback(extras.close)  # a start-up that fails half-way too
        sender = (JournalSender() if sc.log_journal is True or (
            sc.log_journal == "auto" and journald.available()) else None)
        if sender is not None:
            stack.callback(sender.close)
        task_queue = None
        if cfg.cluster is not None:
            # a cluster node's engine waits on its ClusterQueue (no Redis in it: the node
            # that pulls into it is made below)
            from ..cluster.queue import ClusterQueue
            task_queue = ClusterQueue()
        sup = Supervisor(heartbeat_interval=sc.heartbeat_interval,
                         heartbeat_timeout=sc.heartbeat_timeout, cgroups=sc.cgroups,
                         max_replicas=sc.max_replicas, state_dir=paths.state_dir,
                         tasks_kept=sc.tasks_kept,
                         tasks_kept_bytes=int(sc.tasks_kept_mb * 1024 * 1024),
                         task_queue=task_queue, spared=self.spared)
        self.sup = sup  # the engine embedded (tests reach it); services get its parts
        parts = self.parts = sup.parts
        if self.taken is not None:
            self.taken.before_start(sup)
        parts.tuning.sandbox_program = sc.bwrap
        parts.tuning.protected_paths = self._protected(cfg, paths)
        gateway = GatewayService(parts.agents, parts.tools, parts.stream, self._audit)
        try:
            gateway.configure(cfg.gateway, self.config_path.parent)
        except ConfigError as exc:
            raise StartupError(f"invalid config: {exc}") from None
        self._wire(parts, hub, gateway, sender)
        traces = await start_traces(cfg.tracing, parts.tasks, paths.state_dir, self.spared,
                                    gateway)
        if traces is not None:
            stack.push_async_callback(traces.close)  # after the agents stop: their spans
        events = sup.subscribe(maxsize=100_000)

        # the socket answers from here on: calls wait for the services (`Dispatcher.serve`)
        dispatcher: Dispatcher[Services] = Dispatcher(HANDLERS, self._audit,
                                                      lambda services: services.agents,
                                                      owner=owner_of)
        self.dispatcher = dispatcher  # for another front end to call
        control = ControlServer(dispatcher, hub.daemon, paths.socket, sc.group,
                                max_connections=sc.max_connections,
                                idle_timeout=sc.control_idle_timeout)
        # the file's tenants' groups at once: no peer of a tenant is served as an operator
        # while the state database opens (its runtime tenants' come with it)
        control.set_tenant_groups(groups_of(cfg.tenants, hub.daemon))
        try:
            await control.start(self.taken.control if self.taken is not None else None)
        except AlreadyRunning as exc:
            raise StartupError(str(exc)) from None
        except OSError as exc:
            raise StartupError(f"cannot listen on {paths.socket}: {exc.strerror}") from None
        stack.push_async_callback(control.close)
        self.control = control
        stack.callback(self._stopped, hub)

        store, writer, journal, unfinished = await self._open_store(stack, paths.state_dir,
                                                                    cfg)
        self.store = store
        gateway.api_tokens = tokens_of(store).authenticate
        parts.stream.subscribe(
            lambda c: store.save_state(c.agent, c.replica, c.time, c.state), Checkpoint)
        revisions = RevisionLog(store.db)

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR2):
            loop.add_signal_handler(sig, self._signals.put_nowait, sig)
            stack.callback(loop.remove_signal_handler, sig)
        background = Background(hub.daemon)
        background.start("event pump", lambda: self._pump_events(events))
        stack.push_async_callback(_after_a_turn, background.close)

        records: list[ProcessRecords] = []
        stack.push_async_callback(_close_records, records)  # after every process is gone
        # the node leaves its cluster after the agents have stopped (the stack unwinds in
        # reverse): their last outcomes are in its outbox by then
        stack.push_async_callback(self._leave_cluster)
        stack.push_async_callback(lambda: sup.close(graceful=self._graceful))
        # and before they stop, it hands back the cluster tasks it holds
        stack.push_async_callback(self._hand_back)
        sup.open()
        hub.daemon(f"corral {__version__} started, pid {os.getpid()}, "
                   f"config {self.config_path}, socket {paths.socket}")
        hub.daemon(parts.containment.notice)
        # nothing starts before what a crashed incarnation left running is gone
        await self._reclaim(parts.containment, store, hub)
        records.append(ProcessRecords(store, writer, parts.containment))

        http: Any = None
        if cfg.gateway.listen or cfg.http.listen:
            http = await self._start_http(stack, cfg, gateway, hub)
        fleet = Fleet(parts, store, writer, revisions, self.config_path.parent,
                      hub.daemon)
        tenants = TenantRegistry(parts, store, self.config_path, hub.daemon)
        tenants.on_groups = control.set_tenant_groups
        fleet.gateway = cfg.gateway
        # the task front, chosen once: with [cluster], the cluster's (this node's own
        # behind it, for `local`)
        local_tasks = LocalFront(parts.agents, parts.tasks, journal, hub.daemon)
        tasks: TaskFront = local_tasks
        if cfg.cluster is not None:
            from ..cluster.node import ClusterNode  # redis-py only where [cluster] is
            from .tasks.clustered import ClusterFront
            assert task_queue is not None
            self.cluster = ClusterNode(cfg.cluster, sup, parts, task_queue, hub.daemon,
                                       prepare=fleet.fill_paths, apply=fleet.apply_spec,
                                       describe=describe_change,
                                       key=self._cluster_key(cfg.cluster))
            tasks = ClusterFront(local_tasks, self.cluster, parts.quotas)
            await self._one_node(self.cluster, hub)
        history = History(parts.agents, parts.tasks, store, cfg.http)
        packages = Packages(cfg.packages, Path(cfg.packages.dir) if cfg.packages.dir
                            else paths.state_dir / "packages", parts, store, revisions, fleet,
                            hub.daemon)
        if self.cluster is not None:
            packages.refuse = self.cluster.refuse_deploy
        try:
            # interrupted builds and switches are dealt with before any agent starts
            await packages.start()
        except StoreError as exc:
            raise StartupError(str(exc)) from None
        watches = FileWatches(parts.agents, fleet, packages, hub.daemon)
        parts.stream.subscribe(watches.on_transition, Transition)
        stack.push_async_callback(watches.close)
        services = Services(
            **_engine_parts(parts, self.cluster), hub=hub, store=store, revisions=revisions,
            fleet=fleet, tasks=tasks,
            gateway=gateway, http=http, journal=journal, history=history, packages=packages,
            dev_watch=watches, watch=FleetWatch(parts.agents, parts.stream), tenants=tenants,
            config_path=self.config_path,
            socket_path=control.path, started_at=self.started_at,
            reload=lambda who: self._reload(services, who),
            request_stop=self.request_stop, drained=self.drained,
            upgrade=self.upgrades.ask,
            status_line=self.status_line, notices=self.notices, extras=extras.status,
            draining=lambda: self.drain.progress() if self.drain is not None else None,
            ui=_dashboard_sessions() if cfg.http.listen else None, traces=traces)
        self.services = services
        if cfg.http.listen:
            await self._start_http_server(stack, cfg, services, dispatcher)
        # no more attempts at an extra once the stop begins tearing down (before the
        # servers close: the stack unwinds in reverse)
        stack.push_async_callback(extras.close)
        # (issue 21) the metrics history sampler starts here
        history.start()
        stack.push_async_callback(history.close)
        if self.freeze_heap:
            # modules, classes, config and the daemon's own parts live as long as the
            # process: out of every full pass of the cyclic collector from here on, which
            # then walks what the fleet holds and no more (decision 60)
            gc.collect()
            gc.freeze()
        dispatcher.serve(services)
        await asyncio.sleep(0)  # the control socket is served before the agents are added
        tenants.start(cfg)  # before the agents, whose quotas they are
        local, declared = by_placement(cfg)
        fleet.start(local)
        if self.cluster is not None:
            self.cluster.declared.declare(declared)  # registered by its first beat
        watches.sync_all()
        if self.taken is not None:
            unfinished = self.taken.hold_back(unfinished)
        if journal is not None:
            # no await since the agents were added: no task can be accepted before the
            # journal's are back, numbered after theirs
            tasks.recover(unfinished)
            journal.start_pruning()
        else:
            tasks.recover([])
        if self.cluster is not None:
            self.cluster.start()
        if self.taken is not None:
            self.upgrades.report = await self.taken.settle(hub)
        self._check_ready()
        return services

    def _cluster_key(self, settings: ClusterSettings) -> bytes | None:
        """[cluster] key_file's key (decision 162); None, said loudly, without one."""
        from ..cluster.trust import NO_KEY_WARNING, load_key
        if settings.key_file is None:
            self.hub.daemon(f"WARNING: cluster {settings.name}: {NO_KEY_WARNING}",
                            priority=4)
            return None
        try:
            return load_key(resolve(self.config_path.parent, settings.key_file)
                            or Path(settings.key_file))
        except ConfigError as exc:
            raise StartupError(f"invalid config: {exc}") from None

    async def _one_node(self, node: ClusterNode, hub: LogHub) -> None:
        """One daemon per node name (decision 163): refused at start while another
        daemon is this node; Redis away, the membership loop checks at each join."""
        from redis.exceptions import RedisError
        try:
            await within(node.membership.check_unique(), 2 * node.settings.node_ttl
                         + node.settings.beat)
        except RuntimeError as exc:
            raise StartupError(f"cannot start as a node of cluster {node.settings.name}: "
                               f"{exc}") from None
        except (RedisError, OSError, TimeoutError) as exc:
            hub.daemon(f"cluster: whether another daemon is node {node.node} cannot be "
                       f"told now ({type(exc).__name__}: {exc}); it is asked at each join")

    async def _open_store(self, stack: contextlib.AsyncExitStack, state_dir: Path,
                          cfg: Config
                          ) -> tuple[StateStore, StoreWriter, TaskJournalDB | None,
                                     list[TaskRecord]]:
        """The state database, its writer thread and the task journal on it, with the
        journal's unfinished tasks."""
        sc = cfg.supervisor
        try:
            # opening (and migrating) the database is a few commits with their fsyncs: in
            # a thread, as the control socket already answers
            store = await asyncio.to_thread(StateStore, state_dir / "corral.db",
                                            sync=sc.journal_sync, stream=self.parts.stream)
            stack.callback(store.close)
            self.parts.checkpoints.update(await asyncio.to_thread(store.states))
            # every write (records, checkpoints, audit, revisions, commands' records) and
            # the task journal's go through one writer thread, off the loop
            writer = store.open_writer(
                on_error=lambda text: self.hub.daemon(text, priority=3),
                on_notice=lambda text: self.hub.daemon(text, priority=5))
            stack.push_async_callback(store.close_writer)  # checkpoints too
            journal: TaskJournalDB | None = None
            unfinished: list[TaskRecord] = []
            if sc.task_journal:
                journal = TaskJournalDB(store.path, sync=sc.journal_sync,
                                  max_age=sc.journal_max_age, max_tasks=sc.journal_max_tasks,
                                  on_error=lambda text: self.hub.daemon(text, priority=3),
                                  on_notice=lambda text: self.hub.daemon(text, priority=5),
                                  writer=store.thread)
                stack.push_async_callback(journal.close)
                unfinished = await asyncio.to_thread(journal.unfinished)
                self.parts.tasks.journal = journal
                # the budgets' windows as the journaled tasks' usage left them
                budgets = self.parts.tasks.budgets
                for agent, when, tokens, cost in await asyncio.to_thread(
                        journal.usage_since, time.time() - DAY):
                    budgets.restore(agent, tokens, cost, when)
        except StoreError as exc:
            raise StartupError(str(exc)) from None
        return store, writer, journal, unfinished

    def _wire(self, parts: Parts, hub: LogHub, gateway: GatewayService,
              sender: JournalSender | None) -> None:
        """What the daemon hears from the engine."""
        self.sender = sender
        stream = parts.stream
        stream.subscribe(self._on_worker_log, LogLines)
        stream.subscribe(self._on_tick, Tick)
        stream.subscribe(self._on_stall, Stall)
        stream.subscribe(self._on_tenant_oom, TenantOomKill)
        stream.subscribe(self._on_health, HealthChange)
        stream.subscribe(self._on_agent_readiness, AgentReadiness)
        stream.subscribe(self._on_transition, Transition)
        stream.subscribe(self._on_scaling, Scaling)
        self.notifier.track_status(self.status_line)
        stream.subscribe(gateway.on_transition, Transition)
        stream.subscribe(lambda e: gateway.changed([e.kind]), ListChanged)
        stream.subscribe(gateway.forget_replica, Exited)
        dirs = TenantDirs(parts, self.hub, self.hub.daemon)
        parts.tuning.environment = lambda r: {**dirs.starting(r),
                                              **gateway.replica_environment(r)}

    async def _reclaim(self, containment: Containment, store: StateStore, hub: LogHub
                       ) -> None:
        """Stop the processes of earlier incarnations that did not shut down cleanly (a
        crash, SIGKILL, the OOM killer, a watchdog kill), found by their records."""
        crashed = []
        for owner, pid, start_time in store.incarnations():
            if pid == os.getpid():  # this process, before an exec (corral upgrade)
                continue
            st = read_stat(pid)
            if st is not None and st.start_time == start_time:
                hub.daemon(f"the state directory is in use by a running daemon (pid "
                           f"{pid}); its processes are left alone")
                continue
            crashed.append(owner)
        if not crashed:
            return
        records = store.process_records(crashed)
        report = await containment.reclaim(records, crashed)
        hub.daemon(
            f"the previous daemon did not shut down cleanly: {report.found} of its processes "
            f"{'was' if report.found == 1 else 'were'} still running ({report.terminated} "
            f"ended by SIGTERM, {report.killed} by SIGKILL), "
            f"{plural(report.cgroups, 'cgroup')} removed")
        store.end_incarnations(crashed)

    async def _start_http(self, stack: contextlib.AsyncExitStack, cfg: Config,
                          gateway: GatewayService, hub: LogHub) -> Any:
        """The HTTP gateway, before any agent starts (agents are given its URL): at
        `/mcp` of the [http] server (mounted there when it starts), and on a site of its
        own at `[gateway] listen`."""
        from .http.mcp import HttpGateway

        http = HttpGateway(gateway, cfg.gateway, self.config_path.parent)
        stack.push_async_callback(http.close)
        if not cfg.gateway.listen:
            return http

        async def attempt() -> None:
            await http.start()
            gateway.url = http.url
            gateway.socket_path = http.socket_path
            hub.daemon(f"gateway listening on {cfg.gateway.listen} ({http.url})")

        assert self.extras is not None
        await self._extra("gateway", cfg.gateway.listen, attempt)
        return http

    async def _start_http_server(self, stack: contextlib.AsyncExitStack, cfg: Config,
                                 services: Services, dispatcher: Dispatcher[Services]
                                 ) -> None:
        """[http]: the REST API, /metrics and the dashboard, once the services exist
        (aiohttp is imported only then: a daemon without HTTP does not carry it); an
        extra, retried until it binds (a fresh server at each attempt)."""
        from .http.context import HttpContext
        from .http.server import HttpServer

        ctx = HttpContext(services=services, dispatcher=dispatcher, settings=cfg.http,
                          config_dir=self.config_path.parent)
        self.http_server: HttpServer | None = None

        async def close() -> None:
            if self.http_server is not None:
                await self.http_server.close()

        stack.push_async_callback(close)

        async def attempt() -> None:
            server = HttpServer(ctx)
            try:
                await server.start()
            except BaseException:
                await server.close()
                raise
            self.http_server = server
            services.hub.daemon(f"HTTP listening on {cfg.http.listen} ({server.url})")
            http = services.http
            if http is not None:
                # /mcp is mounted: agents are given it unless the gateway has its own site
                listen = cfg.http.listen or ""
                unix = listen.removeprefix("unix:") if listen.startswith("unix:") else None
                http.served_at("http://localhost" if unix else server.url, unix)
                services.gateway.url, services.gateway.socket_path = (http.url,
                                                                      http.socket_path)

        await self._extra("HTTP server", cfg.http.listen or "", attempt)

    async def _extra(self, name: str, listen: str,
                     attempt: Callable[[], Awaitable[None]]) -> None:
        """Start an extra (retried in the background when it fails), unless its config
        is refused: then the daemon does not start, and says why."""
        assert self.extras is not None
        try:
            await self.extras.start(name, listen, attempt)
        except ConfigError as exc:
            raise StartupError(f"cannot start the {name} on {listen}: {exc}") from None

    # -- what the engine tells ------------------------------------------------------------------
    def _on_tick(self, _: Tick) -> None:
        """Every heartbeat: WATCHDOG=1, and the STATUS line again when what no lifecycle
        event tells has changed (a drain's countdown, the cluster's Redis)."""
        self.notifier.watchdog()
        faults = (self.drain.progress() if self.drain is not None else None,
                  self._redis_error())
        if faults != self._faults:
            self._faults = faults
            self.notifier.status_changed()

    def _redis_error(self) -> str | None:
        """Why the cluster's Redis does not answer (the node's loops try again every
        beat), or None."""
        return self.cluster.membership.error if self.cluster is not None else None

    def _on_transition(self, event: Transition) -> None:
        """O(1) per lifecycle event: the STATUS line is marked stale (sent at most every
        100 ms), and READY=1 goes out once every autostart agent is up."""
        self.notifier.status_changed()
        if not self._ready_sent:
            self._check_ready()

    def _check_ready(self) -> None:
        """READY=1 once every autostart agent has answered initialize (or given up)."""
        agents, tools = self.parts.agents, self.parts.tools
        if any(agents.census[s] for s in UNSETTLED):
            return
        # eager tool servers are few; looked at only once the agents are settled
        for entry in tools.servers.values():
            if entry.spec.start == "eager" and not all(i.machine.settled for i in entry.all()):
                return
        self._ready_sent = True
        self.notifier.ready(self.status_line())
        self.hub.daemon(f"ready: {self.status_line()}")

    def status_line(self) -> str:
        """From the supervisor's census: O(1), whatever the size of the fleet; a drain
        under way first (`draining 3 tasks (up to 25 s); ...`), an extra not serving
        last."""
        line = self._fleet_status()
        if self.drain is not None:
            line = f"{self.drain.progress()}; {line}"
        extras = self.extras
        if extras is not None and extras.failing():
            line += "; " + "; ".join(f"{e.title} not serving ({e.error})"
                                     for e in extras.extras if not e.serving)
        redis = self._redis_error()
        if redis is not None:
            line += f"; cluster Redis not answering ({redis})"
        return line

    def notices(self) -> list[str]:
        """What is wrong with the daemon itself, or going on in it: for `corral status`."""
        out = [self.drain.progress()] if self.drain is not None else []
        out += self.extras.problems() if self.extras is not None else []
        redis = self._redis_error()
        if redis is not None:
            out.append(f"cluster: Redis does not answer ({redis}); tried again every "
                       "beat, the local agents run on")
        return out

    def _fleet_status(self) -> str:
        agents, tools = self.parts.agents, self.parts.tools
        line = fleet_line(len(agents), agents.census)
        failed = agents.census[State.FAILED]
        if tools.servers:
            # tool-server instances are few next to agents, and this line is computed at
            # most every 100 ms (notify.py), so they are counted here
            mcp = list(tools.instances())
            serving = sum(1 for r in mcp if r.machine.takes_work)
            failed += sum(1 for r in mcp if r.machine.failed)
            line += (f", {plural(len(tools.servers), 'MCP server')} ({serving}/"
                     f"{plural(len(mcp), 'instance')} serving)")
        return f"{line}, {failed} failed"

    async def _pump_events(self, q: asyncio.Queue[Transition]) -> None:
        while True:
            e = await q.get()
            text = f"{e.previous} -> {e.state}: {e.reason}"
            self.hub.emit(e.name, e.replica, e.pid or 0, "event", LineBlock.one(text),
                          when=e.time)
            if self.sender is not None:
                self.sender.lines(e.kind, e.name, e.replica, e.pid or 0, "event",
                                  [text.encode()])

    def _on_scaling(self, s: Scaling) -> None:
        """An autoscaling decision: a line of the agent's log, as its transitions are."""
        text = f"autoscale {s.direction} {s.previous} -> {s.replicas}: {s.reason}"
        self.hub.emit(s.agent, 0, 0, "event", LineBlock.one(text), when=s.time)

    def _on_health(self, e: HealthChange) -> None:
        """A check flipped: a line in the replica's log (`corral logs`), as transitions."""
        self.hub.emit(e.agent, e.replica, e.pid or 0, "event", LineBlock.one(e.text),
                      when=e.time)
        if self.sender is not None:
            self.sender.lines("agent", e.agent, e.replica, e.pid or 0, "event",
                              [e.text.encode()])

    def _on_agent_readiness(self, e: AgentReadiness) -> None:
        self.hub.emit(e.agent, 0, 0, "event", LineBlock.one(e.text), when=e.time)
        self.hub.daemon(e.text, priority=6 if e.ready else 4)

    def _on_tenant_oom(self, e: TenantOomKill) -> None:
        self.hub.daemon(f"tenant {e.tenant}: the kernel OOM-killed "
                        f"{e.kills} process{'es' if e.kills != 1 else ''} in its cgroup "
                        f"(max_memory_mb; {e.total} since start)", priority=4)

    def _on_stall(self, e: Stall) -> None:
        self.hub.daemon(f"event loop stalled for {e.seconds:.2f} s (not counted against any "
                        f"worker's heartbeat)", priority=4)

    def _on_worker_log(self, e: LogLines) -> None:
        replica, stream, lines = e
        self.hub.emit(replica.name, replica.index, replica.pid or 0, stream, lines)
        if self.sender is not None:
            self.sender.lines(replica.kind, replica.name, replica.index, replica.pid or 0,
                              stream, lines)

    # -- audit ----------------------------------------------------------------------------------
    def _audit(self, caller: Caller, method: str, params: Any, outcome: str) -> None:
        """A command's audit row, whatever front end it came by: in the daemon log, and
        the audit table through the store's writer, so a row that cannot be written never
        changes the command's answer (it is kept and written when the database can be:
        StoreWriter). Params that carry specs are written by the one rule (redact.py):
        neither the table nor the log holds a secret value."""
        shown = redact.params(method, params)
        text = f"{caller.who}: {method} {msgspec.json.encode(shown).decode()} -> {outcome}"
        self.hub.daemon(text, "audit")
        self.store.audit(caller.uid, caller.pid, method, shown, outcome,
                         None if caller.peer else caller.who, caller.tenant)

    # -- reload ---------------------------------------------------------------------------------
    async def _reload(self, s: Services, who: str) -> ReloadResult:
        """Apply the config file's difference; on any error nothing changes."""
        self.notifier.reloading()
        try:
            cfg = load_config(self.config_path)
            protected = self._protected(cfg, self._paths(cfg))
            check_sandboxes(cfg.agents, cfg.supervisor.bwrap, str(self.config_path), protected)
            # the tokens file is re-read: rotating a token is an edit and a reload
            gateway_changes = s.gateway.configure(cfg.gateway, self.config_path.parent)
            s.tenants.check_reload(cfg, [(a.name, a.spec.tenant)
                                         for a in s.agents.values()
                                         if a.name not in s.fleet.from_config])
        except ConfigError:
            self.notifier.ready(self.status_line())
            raise
        s.tenants.apply_config(cfg)  # before the agents, which may name new tenants
        self.parts.tuning.sandbox_program = cfg.supervisor.bwrap
        self.parts.tuning.protected_paths = protected
        self.drain_timeout = cfg.supervisor.drain_timeout
        s.fleet.gateway = cfg.gateway
        local, declared = by_placement(cfg)
        result = await s.fleet.reload(local, who)
        result.gateway = gateway_changes
        if self.cluster is not None:
            result.failed.update(await self.cluster.declare(
                declared, self.cluster.settings.node_ttl))
        self.notifier.ready(self.status_line())
        return result


def by_placement(cfg: Config) -> tuple[Config, dict[str, dict[str, Any]]]:
    """The config with its local agents alone (the fleet's), and the tables of its
    cluster agents (placement = "cluster": the cluster's, registered in Redis)."""
    local = {n: s for n, s in cfg.agents.items() if s.placement != "cluster"}
    declared = {n: spec_table(s) for n, s in cfg.agents.items() if s.placement == "cluster"}
    return msgspec.structs.replace(cfg, agents=local), declared


def _engine_parts(parts: Parts, cluster: ClusterNode | None) -> dict[str, Any]:
    """The engine's parts as the services hold them (services.py)."""
    return {"agents": parts.agents, "tools": parts.tools, "quotas": parts.quotas,
            "elastic": parts.elastic, "bus": parts.bus, "task_engine": parts.tasks,
            "budgets": parts.tasks.budgets, "containment": parts.containment,
            "health": parts.health, "stream": parts.stream, "heartbeat": parts.heartbeat,
            "runtime_stats": parts.runtime_stats,
            "cluster": cluster if cluster is not None else NotANode()}


def _dashboard_sessions() -> Any:
    from .http.ui import Sessions  # with aiohttp: only where [http] is configured

    return Sessions()


async def _after_a_turn(close: Any) -> None:
    await asyncio.sleep(0)  # the last events reach the log before the pump stops
    await close()


async def _close_records(records: list[ProcessRecords]) -> None:
    for r in records:
        await r.close()


class ProcessRecords:
    """Keeps the store's records of running processes in step with containment, through
    the store's writer thread (StoreWriter: one transaction per batch, off the loop). The
    incarnation row is committed first, on the loop, before anything is spawned, so even a
    process whose record is not committed yet when the daemon dies is found (by its spawn
    token, process group and session: decision 30)."""

    def __init__(self, store: StateStore, writer: StoreWriter,
                 containment: Containment) -> None:
        self.writer = writer
        self.owner = containment.owner
        me = read_stat(os.getpid())
        store.begin_incarnation(self.owner, os.getpid(), me.start_time if me else 0)
        containment.stream.subscribe(self._on_started, ProcessStarted)
        containment.stream.subscribe(self._on_ended, ProcessEnded)

    def _on_started(self, e: ProcessStarted) -> None:
        self.writer.submit(StateStore.write_processes([e.record], []), "process record")

    def _on_ended(self, e: ProcessEnded) -> None:
        self.writer.submit(StateStore.write_processes([], [e.record.token]), "process record")

    async def close(self) -> None:
        """A clean shutdown: every process is gone, so is this incarnation."""
        self.writer.submit(StateStore.ending_incarnations([self.owner]), "process record")
        await self.writer.committed()


def run_daemon(config: Path, socket: str | None, taken: Taken | None = None) -> int:
    import uvloop

    try:
        from setproctitle import setproctitle

        setproctitle("corral: supervisor")
    except ImportError:  # pragma: no cover
        pass
    from ..supervisor.caps import disable_own_core_dumps, raise_own_open_files

    disable_own_core_dumps()
    raise_own_open_files()
    logging.basicConfig(level=os.environ.get("CORRAL_LOG_LEVEL", "WARNING"),
                        format="corral: %(levelname)s %(name)s: %(message)s")
    return uvloop.run(Daemon(config, socket=socket, freeze_heap=True, taken=taken).run())
