"""`corral daemon`: the supervisor as a service, and the composition root of its parts.

`Daemon.run` enters the parts (startup.py) in order on one `AsyncExitStack`, so that a
start-up that fails half-way tears down exactly what it set up, in reverse; then runs the
arbiter loop, where signals are queued and handled (SIGTERM/SIGINT: drain.py, SIGHUP:
reload, SIGUSR2: upgrade.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import msgspec

from .. import jsonrpc
from ..jsonrpc import RpcError
from ..methods import ConfigReload, DaemonUpgrade, DrainReport, ReloadResult
from ..supervisor.config import Config, ConfigError
from ..supervisor.core import Supervisor
from ..supervisor.parts import Parts
from ..supervisor.policy import PolicyGuard
from ..supervisor.process_replica import Transition
from ..supervisor.refusals import BoundaryRefusals
from ..supervisor.stream import Stream
from ..supervisor.teams.tools import LeaderTools
from . import startup as part
from .agenthandlers import owner_of
from .api import Dispatcher
from .audit import Audit
from .caller import Caller
from .clusterpeer import NotANode
from .commandtable import HANDLERS
from .control import ControlServer
from .cronrestart import ScheduledRestarts
from .dependents import Dependents
from .drain import Drain
from .extras import Extras
from .filewatch import FileWatches
from .fleet import Fleet
from .fleetwatch import FleetWatch
from .heapdump import from_env as heap_dumps
from .history import History
from .logs import LogHub
from .notify import Notifier
from .reloadlist import definitions_changed
from .retention import retaining
from .revisions import spec_table
from .services import Services, Web
from .stackdump import on_signal
from .startup import StartupError
from .status import Status
from .store import StateStore
from .teams import TeamFront
from .teardown import Teardown
from .tenantregistry import TenantRegistry
from .tokens import tokens_of
from .traces import traces_of
from .upgrade import Takeover, Upgrades

if TYPE_CHECKING:
    from ..cluster.node import ClusterNode
    from ..supervisor.tasks import Unfinished
    from .http.server import HttpServer

log = logging.getLogger("corral.daemon")
STOP = -1  # queued like a signal: `daemon.shutdown`
STOP_NOW = -2  # `daemon.shutdown` with now: no drain
UPGRADE = -3  # `daemon.upgrade`, checked: hand over and exec (upgrade.py)
# the signals that are a method's call: what the log says the daemon does, the method, and
# whether the log says the method's refusal too (an upgrade's is said by the upgrade)
SIGNALLED: dict[int, tuple[str, str, bool]] = {
    signal.SIGHUP: ("reloading", ConfigReload.declared.name, True),
    signal.SIGUSR2: ("upgrading", DaemonUpgrade.declared.name, False)}


class Assembly(msgspec.Struct, frozen=True, kw_only=True):
    """What the set-up made that the daemon itself uses once it runs."""

    conf: part.Conf  # the config as it was at start-up
    sup: Supervisor
    control: ControlServer
    dispatcher: Dispatcher[Services]
    cluster: ClusterNode | None
    status: Status
    extras: Extras
    services: Services
    teardown: Teardown
    guard: PolicyGuard  # the policy in force, given each reload's config


class Daemon:
    def __init__(self, config_path: Path, *, socket: str | None = None,
                 freeze_heap: bool = False, spared: set[int] | None = None,
                 taken: Takeover | None = None) -> None:
        self.config_path = config_path.resolve()
        # an embedding program's own children, left to it (containment.Containment), and
        # the daemon's own it waits for itself (an upgrade's check of the new install)
        self.spared: set[int] = spared if spared is not None else set()
        # whether what start-up made is taken out of the collector's passes: a decision
        # for the whole process, so only `corral daemon`'s own (run_daemon) makes it
        self.freeze_heap = freeze_heap
        self.socket_override = socket
        self.notifier = Notifier()
        self.started_at = time.time()
        self._signals: asyncio.Queue[int] = asyncio.Queue()
        # what an embedding program waits for before it uses `services`
        self.set_up = asyncio.Event()
        self.up: Assembly | None = None  # the one attribute bound late: `_setup`'s
        # a stop asked for (not a start-up that failed): what was started ends gracefully
        self._graceful = False
        self.failed: str | None = None  # why an agent stopped the daemon (fatal = true)
        self.applied: Config | None = None  # the config the last start or reload applied
        self._drained: asyncio.Future[DrainReport] | None = None
        self.taken = taken  # this image took over from an upgrade's old one
        if taken is not None:
            self.started_at = taken.started_at
        self.upgrades = Upgrades(self, lambda: self._signals.put_nowait(UPGRADE), taken)

    # -- what the set-up made -------------------------------------------------------------
    def _up(self) -> Assembly:
        if self.up is None:
            raise RuntimeError("the daemon is not set up")
        return self.up

    @property
    def sup(self) -> Supervisor:
        return self._up().sup

    @property
    def services(self) -> Services:
        return self._up().services

    @property
    def dispatcher(self) -> Dispatcher[Services]:
        return self._up().dispatcher

    @property
    def hub(self) -> LogHub:
        return self.services.hub

    @property
    def store(self) -> StateStore:
        return self.services.store

    @property
    def control(self) -> ControlServer:
        return self._up().control

    @property
    def cluster(self) -> ClusterNode | None:
        return self._up().cluster

    @property
    def http_server(self) -> HttpServer | None:
        server: HttpServer | None = self.services.web.server
        return server

    # -- the arbiter ------------------------------------------------------------------------
    async def run(self) -> int:
        """Run until told to stop; the exit status of `corral daemon`."""
        async with contextlib.AsyncExitStack() as stack:
            try:
                up, unfinished = await self._setup(stack)
                self.up = up
                await self._begin(up, unfinished)
            except StartupError as exc:
                print(f"corral: {exc}", file=sys.stderr)
                return 1
            self.set_up.set()
            await self._arbiter(up.services)
        return 0 if self.failed is None else 1

    async def _arbiter(self, s: Services) -> None:
        """The daemon's loop: what the kernel and the operator ask for, one at a time."""
        while True:
            sig = await self._signals.get()
            if sig in SIGNALLED:
                name, (doing, method, refusal_said) = signal.Signals(sig).name, SIGNALLED[sig]
                s.hub.daemon(f"received {name}: {doing}")
                try:  # as `corral reload` or `corral upgrade` (to the daemon's own
                    # interpreter) is: through the Dispatcher, audited
                    await self.dispatcher.call(Caller(
                        via="signal", uid=os.geteuid(), pid=os.getpid(),
                        name=f"signal {name}"), method)
                except RpcError as exc:
                    if exc.code != jsonrpc.REFUSED or refusal_said:
                        s.hub.daemon(exc.message, priority=4)
                continue
            if sig == UPGRADE:  # (`daemon.upgrade`'s, checked)
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

    async def _drain(self, s: Services, *, now: bool) -> DrainReport:
        """Before the agents stop: signals are heard meanwhile, a second stop cuts it short."""
        status, applied = self._up().status, self.applied
        assert applied is not None  # (set at start, and by each reload)
        drain = status.drain = Drain(s.task_engine, s.agents, applied.supervisor.drain_timeout,
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
        status.drain = None
        self.notifier.status_changed()
        try:
            return run.result()
        except Exception as exc:  # a bug must not keep the daemon from stopping
            s.hub.daemon(f"the drain failed: {type(exc).__name__}: {exc}", priority=3)
            return DrainReport(seconds=0.0, tasks=[], waiting=0, cut_short=True)

    def _stopped_drain(self) -> asyncio.Future[DrainReport]:
        if self._drained is None:
            self._drained = asyncio.get_running_loop().create_future()
        return self._drained

    async def drained(self) -> DrainReport:
        """What the stop's drain did, once a stop was asked for and drained."""
        return await asyncio.shield(self._stopped_drain())

    def request_stop(self, now: bool = False) -> None:
        self._signals.put_nowait(STOP_NOW if now else STOP)

    def fail(self, hub: LogHub, why: str) -> None:
        """Stop, the exit status 1 (an agent with `fatal = true` failed for good)."""
        if self.failed is None:
            self.failed = why
            hub.daemon(why, priority=3)
            self.request_stop()

    # -- set-up: the parts, in order; the stack tears them down in reverse ---------------------
    async def _setup(self, stack: contextlib.AsyncExitStack) -> tuple[Assembly, list[Unfinished]]:
        """To add a part: one line here, where what it needs exists and where its
        teardown is to come (the reverse of this order)."""
        keep = stack.enter_context
        with part.refused(ConfigError, "invalid config: "):
            conf = part.read_config(self.config_path, self.socket_override,
                                    self.taken.config if self.taken is not None else None)
        cfg = conf.cfg
        self.applied = cfg
        keep(contextlib.closing(self.notifier))
        hub = keep(part.log_hub(conf))
        keep(on_signal(hub.daemon))  # SIGUSR1: every task's stack in the log
        keep(heap_dumps())  # CORRAL_HEAP_DUMP=DIR alone: the heap, now and then
        teardown = Teardown(stack, lambda text: hub.daemon(text, priority=4))
        enter = teardown.enter
        extras = Extras(lambda text, priority: hub.daemon(text, priority=priority),
                        self.notifier.status_changed)
        await enter("the extras' retries", part.closed(extras.close))  # a failed start's too
        sender = keep(part.journal_sender(conf))
        traces = traces_of(cfg.tracing, conf.paths.state_dir, self.spared)
        leaders = LeaderTools()
        tracer = traces.tracer if traces is not None else None
        audit = Audit(hub)
        refusals = BoundaryRefusals(Stream())  # told by every layer (the chain too)
        # policy rules and taint, on every path (their decisions traced and audited)
        guard = PolicyGuard(cfg, tracer, audit.policy, refusals)
        sup, queue = part.engine(conf, self.spared, part.interceptors(
            tracer, guard, leaders, refusals, audit), refusals, audit.refusal, guard.labels)
        parts = sup.parts
        dispatcher = Dispatcher(HANDLERS, audit, lambda services: services.agents, owner=owner_of)
        gateway = part.gateway_service(conf, parts, audit, dispatcher, traces, guard)
        if self.taken is not None:  # its HTTP parts start late: the address goes on
            self.taken.gateway_address(gateway, cfg)
        models = await enter("the model gateway",
                             part.model_gateway(conf, parts, gateway))
        heard = part.hear(parts, hub, sender, gateway)
        environment = part.replica_environment(parts, hub, gateway, models)
        # closed after the agents stop (entered before `running`): their last spans kept
        await enter("the trace exporter", part.tracing(conf, traces),
                    lambda: part.export_bound(cfg))
        control = await enter("the control socket", part.control_socket(
            conf, dispatcher, hub, self.taken, lambda: self._graceful))
        opened = await enter("the state database", part.state_store(conf, parts, hub))
        store = opened.store
        audit.to(store)
        gateway.open_tokens(tokens_of(store).authenticate)
        keep(part.signals(self._signals.put_nowait))
        await enter("the event pump", part.event_pump(sup, heard))
        fleet = Fleet(parts, store, opened.writer, opened.revisions, conf.dir, hub.daemon)
        fleet.gateway = cfg.gateway
        tenants = TenantRegistry(parts, store, self.config_path, hub.daemon,
                                 control.set_tenant_groups)
        node = await enter("the cluster node", part.cluster_node(conf, sup, queue, fleet,
                                                                 hub, self.taken, store))
        status = Status(self.notifier, parts, extras, hub, node)
        await enter("the agents' stop", part.running(sup, conf, opened, hub, environment,
                                                     self.taken, lambda: self._graceful),
                    lambda: part.stop_bound(sup))
        if node is not None:
            await enter("the cluster tasks' hand-back", part.closed(node.hand_back))
        tasks = part.task_front(parts, opened.journal, node, hub)
        workflows = await enter("the workflows",
                                part.workflows(conf, parts, store, hub, traces, node))
        teams = await enter("the teams", part.teams(conf, parts, store, hub, leaders, node))
        tasks = TeamFront(tasks, teams)  # a task naming a team is a call of it
        schedules = await enter("the schedules", part.schedules(conf, parts, store, tasks,
                                                                workflows, node, hub))
        history = History(parts.agents, parts.tasks, store, cfg.http)
        packages = await part.packages(conf, parts, opened, fleet, node, hub)
        await enter("the packages' builds", part.closed(packages.close))
        watches = FileWatches(parts.agents, fleet, packages, hub.daemon)
        parts.stream.subscribe(watches.on_transition, Transition)
        await enter("the file watches", part.closed(watches.close))
        scheduled = ScheduledRestarts(parts.agents, fleet, hub.daemon, parts.tasks.clock)
        parts.stream.subscribe(scheduled.on_transition, Transition)
        await enter("the scheduled restarts", part.closed(scheduled.close))
        dependents = Dependents(parts.agents, hub.daemon, lambda why: self.fail(hub, why))
        parts.stream.subscribe(dependents.on_transition, Transition)
        await enter("the dependents", part.closed(dependents.close))
        services = Services(
            **_engine_parts(parts, node), hub=hub, store=store, revisions=opened.revisions,
            audit=audit, fleet=fleet, tasks=tasks, gateway=gateway, web=Web(),
            journal=opened.journal, history=history, packages=packages, dev_watch=watches,
            watch=FleetWatch(parts.agents, parts.stream), tenants=tenants, workflows=workflows,
            teams=teams, schedules=schedules, models=models,
            config_path=self.config_path, socket_path=control.path,
            started_at=self.started_at, reload=lambda who: self._reload(services, who),
            request_stop=self.request_stop, drained=self.drained,
            upgrade=self.upgrades.ask, status_line=status.line, notices=status.notices,
            extras=extras.status, draining=status.draining,
            traces=traces)
        if self.taken is None:  # (an upgrade's new image: once its agents are adopted)
            await self._web(teardown, conf, services, dispatcher, extras, control)
        history.start()
        await enter("the metrics history", part.closed(history.close))
        if self.freeze_heap:
            part.freeze_heap(collect=self.taken is None)
        return Assembly(conf=conf, sup=sup, control=control, dispatcher=dispatcher,
                        cluster=node, status=status, extras=extras, services=services,
                        teardown=teardown, guard=guard), opened.unfinished

    async def _web(self, teardown: Teardown, conf: part.Conf, s: Services,
                   dispatcher: Dispatcher[Services], extras: Extras,
                   control: ControlServer) -> None:
        """[http] and [gateway] listen: before the agents start (they are given the
        gateway's address), but in an upgrade's new image once its agents are adopted: the
        sockets are inherited, so a client waits in the backlog meanwhile."""
        enter, listeners, web = teardown.enter, self.upgrades.listeners, s.web
        web.gateway = await enter("the HTTP gateway", part.http_gateway(
            conf, s.gateway, s.hub, extras, listeners, control, s.models))
        if conf.cfg.http.listen:
            from .http.ui import LoginSessions  # with aiohttp: only where [http] is configured

            web.logins = LoginSessions(peers=control)
        await enter("the HTTP server", part.http_server(conf, s, dispatcher, extras,
                                                        listeners))
        # no more attempts at an extra once the stop begins tearing down
        await enter("the extras' retries", part.closed(extras.close))

    async def _begin(self, up: Assembly, unfinished: list[Unfinished]) -> None:
        """Once every part is set up: the agents added, then what recovers after them."""
        s, node = up.services, up.cluster
        up.dispatcher.serve(s)
        await asyncio.sleep(0)  # the control socket is served before the agents are added
        s.tenants.apply_config(up.conf.cfg)  # before the agents, whose quotas they are
        local, declared = by_placement(up.conf.cfg)
        s.fleet.start(local)
        if node is not None:
            node.declared.declare(declared)  # registered by its first beat
        for name in list(s.agents):
            s.dev_watch.sync(name)
        records = unfinished if self.taken is None else self.taken.hold_back(unfinished)
        # no await since the agents were added: no task can be accepted before the
        # journal's are back, numbered after theirs
        s.tasks.recover(records if s.journal is not None else [],
                        self.taken.reattached if self.taken is not None else None)
        # the records are the engine's tasks now: start-up's frames, which hold the list
        # for the daemon's life, must not keep thousands of suspended tasks' twice
        unfinished.clear()
        s.workflows.recover()  # after the tasks: a run's recorded task is found
        up.sup.parts.tasks.spawns.node.recover()
        s.teams.recover()
        s.schedules.start()  # after the tasks: a fire's task is numbered after theirs
        if s.journal is not None:
            s.journal.start_pruning()
        # once the agents are back: a removed agent's records are told from them
        await up.teardown.enter("the retention sweeps", retaining(
            s.agents, s.store, s.hub, up.conf.cfg.supervisor, up.sup.parts.stream))
        settled = asyncio.Event()
        if node is not None:
            if self.taken is not None:
                node.place_after(settled)
            node.start()
        if self.taken is not None:
            # aiohttp imported in a thread meanwhile: the loop adopts and dispatches
            try:
                await self.taken.adopt(lambda: asyncio.to_thread(import_web, up.conf.cfg))
                await self._web(up.teardown, up.conf, s, up.dispatcher, up.extras, up.control)
                if self.freeze_heap:
                    part.freeze_heap(collect=False)
                self.upgrades.report = await self.taken.settle(s.hub)
            finally:
                settled.set()
        up.status.check_ready()

    # -- reload ---------------------------------------------------------------------------------
    async def _reload(self, s: Services, who: str) -> ReloadResult:
        """Apply the config file's difference; on any error nothing changes."""
        self.notifier.reloading()
        try:
            conf = part.read_config(self.config_path, self.socket_override)
            cfg = conf.cfg
            # the keys its listener was made with stay as they were (restart_needed says so)
            started = self._up().conf.cfg
            gateway = msgspec.structs.replace(cfg.gateway, **{
                k: getattr(started.gateway, k) for k in GATEWAY_AT_START})
            gateway_changes = s.gateway.configure(gateway, self.config_path.parent,
                                                  s.teams.catalog.runtime)
            if s.models is not None:
                gateway_changes += s.models.configure(cfg.models, self.config_path.parent)
            s.tenants.check_reload(cfg, [(a.name, a.spec.tenant)
                                         for a in s.agents.values()
                                         if a.name not in s.fleet.from_config])
        except ConfigError:
            self.notifier.ready(s.status_line())
            raise
        s.tenants.apply_config(cfg)  # before the agents, which may name new tenants
        self.sup.parts.tuning.sandbox_program = cfg.supervisor.bwrap
        self.sup.parts.tuning.protected_paths = conf.protected
        s.fleet.gateway = gateway
        s.workflows.configure(cfg.workflows)
        s.teams.configure(cfg.teams)
        s.schedules.configure(cfg)
        if s.web.server is not None:
            # who may call the A2A door with no token, from its next request (a push
            # config's addresses stay checked as at start: restart_needed says so)
            s.web.server.ctx.a2a = msgspec.structs.replace(
                cfg.a2a, push_private=started.a2a.push_private)
        before, self.applied = self.applied, cfg
        self._up().guard.configure(cfg)
        local, declared = by_placement(cfg)
        result = await s.fleet.reload(local, who)
        result.gateway = gateway_changes
        result.restart_needed = read_at_start(started, cfg)
        if result.restart_needed:
            s.hub.daemon(f"reload: {', '.join(result.restart_needed)} changed in the file: "
                         "read at start, not applied until the daemon restarts", priority=4)
        if before is not None:
            definitions_changed(before, cfg, result)
        if self.cluster is not None:
            result.failed.update(await self.cluster.declare(
                declared, self.cluster.settings.node_ttl))
        self.notifier.ready(s.status_line())
        return result


def by_placement(cfg: Config) -> tuple[Config, dict[str, dict[str, Any]]]:
    """The config with its local agents alone, and the tables of its cluster agents."""
    local = {n: s for n, s in cfg.agents.items() if s.placement != "cluster"}
    declared = {n: spec_table(s) for n, s in cfg.agents.items() if s.placement == "cluster"}
    return msgspec.structs.replace(cfg, agents=local), declared


# The tables a running daemon took at its start and does not take again on a reload.
START_ONLY = ("tracing", "http", "cluster", "packages", "approvals")


# [a2a]'s keys the A2A door's parts were made with at start: a reload keeps them
A2A_AT_START = ("push_private",)
# [gateway]'s keys its HTTP listener was made with at start: a reload keeps them
GATEWAY_AT_START = ("listen", "allow_remote", "tls_cert", "tls_key", "max_sessions",
                    "session_idle_timeout")


def read_at_start(started: Config, now: Config) -> list[str]:
    """What the file changed since the start that a reload does not apply."""
    said = [f"[{name}]" for name in START_ONLY if getattr(started, name) != getattr(now, name)]
    said += [f"[gateway] {key}" for key in GATEWAY_AT_START
             if getattr(started.gateway, key) != getattr(now.gateway, key)]
    said += [f"[a2a] {key}" for key in A2A_AT_START
             if getattr(started.a2a, key) != getattr(now.a2a, key)]
    if now.models and not started.models:
        said.append("[models]")
    if now.supervisor.dynamic_uids != started.supervisor.dynamic_uids:
        said.append("[supervisor] dynamic_uids")  # (the uids given are the daemon's life's)
    if now.supervisor.group != started.supervisor.group:
        # (the control socket's operators: its owner and the check of each peer's gid
        # were made at start, so a group taken off the file is still the operator's)
        said.append("[supervisor] group")
    return said


def import_web(cfg: Config) -> None:
    """The HTTP parts' modules, where the config serves HTTP (Daemon._web's)."""
    if cfg.http.listen or cfg.gateway.listen:
        for name in ("mcp", "ui", "context", "server"):
            importlib.import_module(f"{__package__}.http.{name}")


def _engine_parts(parts: Parts, cluster: ClusterNode | None) -> dict[str, Any]:
    """The engine's parts as the services hold them (services.py)."""
    return {"agents": parts.agents, "tools": parts.tools, "quotas": parts.quotas,
            "elastic": parts.elastic, "bus": parts.bus, "task_engine": parts.tasks,
            "budgets": parts.tasks.budgets, "sessions": parts.tasks.sessions,
            "containment": parts.containment, "pins": parts.tools.pins,
            "outputs": parts.tasks.outputs,
            "health": parts.health, "refusals": parts.refusals, "stream": parts.stream,
            "heartbeat": parts.heartbeat,
            "runtime_stats": parts.runtime_stats,
            "cluster": cluster if cluster is not None else NotANode()}


def run_daemon(config: Path, socket: str | None, taken: Takeover | None = None) -> int:
    import uvloop

    with contextlib.suppress(ImportError):
        from setproctitle import setproctitle

        setproctitle("corral: supervisor")
    from ..supervisor.caps import disable_own_core_dumps, raise_own_open_files

    disable_own_core_dumps()
    raise_own_open_files()
    from ..supervisor.memory import arena_bound, page_slab

    page_slab()  # SQLite's pages out of the loop's heap, before any connection is open
    arena_bound()  # before the daemon's threads, each of which would take an arena
    logging.basicConfig(level=os.environ.get("CORRAL_LOG_LEVEL", "WARNING"),
                        format="corral: %(levelname)s %(name)s: %(message)s")
    status = uvloop.run(exit_past_skipped(Daemon(config, socket=socket, freeze_heap=True,
                                                 taken=taken)))
    exit_without_finalizing(status)


def exit_without_finalizing(status: int) -> NoReturn:
    """The end of `corral daemon`'s process: what the interpreter's shutdown does that
    anyone can see (threads joined, atexit's functions run, streams flushed), then the
    exit, without the teardown of every module and object: that only frees memory the
    exit frees anyway, and was ~50 ms of CPU, a fifth of an empty daemon's boot and stop."""
    import atexit
    import threading

    threading._shutdown()  # type: ignore[attr-defined]
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(status)


async def exit_past_skipped(daemon: Daemon) -> int:
    """Run `daemon`; when a teardown step was skipped past its deadline, the process
    exits as soon as the rest is torn down: the skipped step may never end, and the event
    loop's close waits for every task and every executor thread."""
    status = await daemon.run()
    if daemon.up is not None and daemon.up.teardown.skipped:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    return status
