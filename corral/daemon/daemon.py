"""`corral daemon`: the supervisor as a service.

One event loop (uvloop). Signals are queued into it and handled there, gunicorn-style:
SIGTERM/SIGINT stop every agent gracefully and exit 0, SIGHUP reloads the config.
It speaks sd_notify when systemd started it: READY=1 once every autostart agent is up,
WATCHDOG=1 from the heartbeat loop, STATUS= lines, RELOADING=1, STOPPING=1.
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
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from .. import __version__
from ..jsonrpc import LineBlock
from ..methods import ReloadResult
from ..paths import default_log_dir, default_socket, default_state_dir, resolve
from ..supervisor.config import (
    AgentSpec,
    Config,
    ConfigError,
    GatewaySettings,
    load_config,
    parse_agents,
)
from ..supervisor.containment import (
    Containment,
    ProcessEnded,
    ProcessStarted,
    read_stat,
)
from ..supervisor.core import Supervisor, SupervisorError
from ..supervisor.lifecycle import LIVE, SERVING, State
from ..supervisor.names import name_problem, shown
from ..supervisor.process_replica import Event, Exited, LogLines
from ..supervisor.stream import Checkpoint, ListChanged, Stall, Tick
from ..supervisor.tasks import LOST_IN_RESTART, TaskRecord
from ..text import plural
from . import journald
from .background import Background
from .control import AlreadyRunning, ControlServer
from .gateway import GatewayService
from .journal import Journal
from .journald import JournalSender, StderrEcho
from .logs import LogDirError, LogHub
from .notify import Notifier
from .revisions import Revision, RevisionLog, forgetting_scaled, recording, spec_table
from .store import StateStore, StoreError

if TYPE_CHECKING:
    from .control import Connection

log = logging.getLogger("corral.daemon")
# states in which a replica is neither up nor settled down: READY=1 waits for none to be
UNSETTLED = (LIVE - SERVING) | {State.BACKOFF}


class Daemon:
    def __init__(self, config_path: Path, *, socket: str | None = None,
                 notifier: Notifier | None = None, freeze_heap: bool = False) -> None:
        self.config_path = config_path.resolve()
        # whether what start-up made is taken out of the collector's passes: a decision
        # for the whole process, so only `corral daemon`'s own (run_daemon) makes it
        self.freeze_heap = freeze_heap
        self.socket_override = socket
        self.notifier = notifier or Notifier()
        self.sup: Supervisor | None = None
        self.hub: LogHub = LogHub(None)
        self.store: StateStore | None = None
        self.records: ProcessRecords | None = None
        self.task_journal: Journal | None = None
        # task methods wait for this: until the journal's tasks are back in the engine, a
        # task could be answered from a stale journal row, or accepted out of order
        self.tasks_recovered = asyncio.Event()
        self.control: ControlServer | None = None
        self.gateway = GatewayService(self, GatewaySettings())
        self.http: Any = None  # the HTTP gateway (http_gateway.HttpGateway) when configured
        # agents a command is changing (record, then act: decision 61), so two commands
        # on one agent take turns: name -> [lock, commands holding or awaiting it]
        self._changing: dict[str, tuple[asyncio.Lock, list[int]]] = {}
        self.started_at = time.time()
        self.from_config: set[str] = set()  # agents declared by the config file
        # the replica count each config-declared agent has in the file (before a kept
        # `corral scale` is applied)
        self.declared_replicas: dict[str, int] = {}
        self.revisions: RevisionLog | None = None
        self.journal: JournalSender | None = None
        self._stop: asyncio.Future[None] | None = None
        self._signals: asyncio.Queue[int] = asyncio.Queue()
        self._ready_sent = False
        self.background = Background(self.hub_report)

    # -- start-up -------------------------------------------------------------------------
    def _paths(self, cfg: Config) -> tuple[Path, Path, Path]:
        base = self.config_path.parent
        s = cfg.supervisor
        sock = (Path(self.socket_override) if self.socket_override
                else resolve(base, s.socket) or default_socket())
        state_dir = resolve(base, s.state_dir) or default_state_dir()
        log_dir = resolve(base, s.log_dir) or default_log_dir(state_dir)
        return sock, state_dir, log_dir

    async def run(self) -> int:
        """Run until told to stop; the exit status of `corral daemon`."""
        try:
            cfg = load_config(self.config_path)
        except ConfigError as exc:
            print(f"corral: invalid config: {exc}", file=sys.stderr)
            return 1
        sock_path, state_dir, log_dir = self._paths(cfg)
        s = cfg.supervisor
        try:
            self.hub = LogHub(log_dir, max_bytes=s.log_max_bytes, backups=s.log_backups,
                              tail_lines=s.log_tail_lines, tail_bytes=s.log_tail_bytes,
                              raw=s.log_format == "raw")
        except LogDirError as exc:
            print(f"corral: {exc}", file=sys.stderr)
            return 1
        self.sup = Supervisor(heartbeat_interval=s.heartbeat_interval,
                              heartbeat_timeout=s.heartbeat_timeout, cgroups=s.cgroups,
                              max_replicas=s.max_replicas, state_dir=state_dir,
                              tasks_kept=s.tasks_kept,
                              tasks_kept_bytes=int(s.tasks_kept_mb * 1024 * 1024))
        self.hub.echo = StderrEcho(s.log_level)
        self.journal = (JournalSender() if s.log_journal is True or (
            s.log_journal == "auto" and journald.available()) else None)
        stream = self.sup.stream
        stream.subscribe(self._on_worker_log, LogLines)
        stream.subscribe(lambda _: self.notifier.watchdog(), Tick)
        stream.subscribe(self._on_stall, Stall)
        stream.subscribe(self._on_transition, Event)
        self.notifier.track_status(self.status_line)
        try:
            self.gateway.configure(cfg.gateway, self.config_path.parent)
        except ConfigError as exc:
            print(f"corral: invalid config: {exc}", file=sys.stderr)
            self.hub.close()
            return 1
        stream.subscribe(self.gateway.on_transition, Event)
        stream.subscribe(lambda e: self.gateway.changed([e.kind]), ListChanged)
        self.sup.environment_provider = self.gateway.replica_environment
        stream.subscribe(self.gateway.forget_replica, Exited)
        events = self.sup.subscribe(maxsize=100_000)
        self.control = ControlServer(self, sock_path, s.group,
                                     max_connections=s.max_connections,
                                     idle_timeout=s.control_idle_timeout)
        try:
            await self.control.start()
        except AlreadyRunning as exc:
            print(f"corral: {exc}", file=sys.stderr)
            self.hub.close()
            return 1
        except OSError as exc:
            print(f"corral: cannot listen on {sock_path}: {exc.strerror}", file=sys.stderr)
            self.hub.close()
            return 1
        try:
            # opening (and migrating) the database is a few commits with their fsyncs: in a
            # thread, as the control socket already answers
            self.store = await asyncio.to_thread(
                StateStore, state_dir / "corral.db", sync=s.journal_sync)
            self.sup.checkpoints.update(await asyncio.to_thread(self.store.states))
            # every write (records, checkpoints, audit, revisions, commands' records) and
            # the task journal's go through one writer thread, off the loop
            self.store.open_writer(on_error=lambda text: self.hub.daemon(text, priority=3),
                                   on_notice=lambda text: self.hub.daemon(text, priority=5))
            if s.task_journal:
                self.task_journal = Journal(self.store.path, sync=s.journal_sync,
                                            max_age=s.journal_max_age,
                                            max_tasks=s.journal_max_tasks,
                                            on_error=lambda text: self.hub.daemon(
                                                text, priority=3),
                                            on_notice=lambda text: self.hub.daemon(
                                                text, priority=5),
                                            writer=self.store.thread)
                unfinished = await asyncio.to_thread(self.task_journal.unfinished)
                self.sup.tasks.journal = self.task_journal
        except StoreError as exc:
            print(f"corral: {exc}", file=sys.stderr)
            await self.control.close()
            self.hub.close()
            return 1
        store = self.store
        stream.subscribe(lambda c: store.save_state(c.agent, c.replica, c.time, c.state),
                         Checkpoint)
        self.revisions = RevisionLog(self.store.db)
        loop = asyncio.get_running_loop()
        self._stop = loop.create_future()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.add_signal_handler(sig, self._signals.put_nowait, sig)
        self.background.start("signals", self._handle_signals)
        self.background.start("event pump", lambda: self._pump_events(events))
        self.sup.open()
        self.hub.daemon(f"corral {__version__} started, pid {os.getpid()}, "
                        f"config {self.config_path}, socket {sock_path}")
        self.hub.daemon(self.sup.containment.notice)
        # nothing starts before what a crashed incarnation left running is gone
        await self._reclaim()
        self.records = ProcessRecords(self.store, self.sup.containment)
        if cfg.gateway.listen and not await self._start_http(cfg):
            await self.sup.close(graceful=False)
            await self.records.close()  # a clean end: nothing of this incarnation is left
            await self.store.close_writer()
            await self.background.close()
            await self.control.close()
            self.store.close()
            self.hub.close()
            return 1
        if self.freeze_heap:
            # modules, classes, config and the daemon's own parts live as long as the
            # process: out of every full pass of the cyclic collector from here on, which
            # then walks what the fleet holds and no more (decision 60)
            gc.collect()
            gc.freeze()
        await asyncio.sleep(0)  # the control socket is served before the agents are added
        for sspec in cfg.mcp_servers.values():
            self.sup.add_mcp_server(sspec)
        self._apply_scaled(cfg.agents)
        for name, spec in cfg.agents.items():
            try:
                self._add(spec)
            except SupervisorError as exc:  # e.g. over max_replicas: the others still run
                self.hub.daemon(f"could not start agent {name}: {exc.message}")
                continue
            self.from_config.add(name)
            self.record(spec, "config file")
        self._restore_runtime_agents()
        if self.task_journal is not None:
            # no await since the agents were added: no task can be accepted before the
            # journal's are back, numbered after theirs
            self._recover_tasks(*unfinished)
            self.task_journal.start_pruning()
        self.tasks_recovered.set()
        self._check_ready()
        await self._stop
        self.notifier.stopping("stopping agents")
        self.hub.daemon("shutting down: stopping all agents")
        if self.http is not None:
            await self.http.close()
        await self.sup.close(graceful=True)
        assert self.records is not None
        await self.records.close()
        if self.task_journal is not None:
            await self.task_journal.close()
        await self.store.close_writer()  # checkpoints too
        await asyncio.sleep(0)  # let the last events reach the log
        await self.background.close()
        self.hub.daemon("stopped")
        await self.control.close()
        self.store.close()
        self.hub.close()
        self.notifier.close()
        if self.journal is not None:
            self.journal.close()
        return 0

    async def _reclaim(self) -> None:
        """Stop the processes of earlier incarnations that did not shut down cleanly (a
        crash, SIGKILL, the OOM killer, a watchdog kill), found by their records."""
        assert self.store is not None and self.sup is not None
        crashed = []
        for owner, pid, start_time in self.store.incarnations():
            st = read_stat(pid)
            if st is not None and st.start_time == start_time:
                self.hub.daemon(f"the state directory is in use by a running daemon (pid "
                                f"{pid}); its processes are left alone")
                continue
            crashed.append(owner)
        if not crashed:
            return
        records = self.store.process_records(crashed)
        report = await self.sup.containment.reclaim(records, crashed)
        self.hub.daemon(
            f"the previous daemon did not shut down cleanly: {report.found} of its processes "
            f"were still running ({report.terminated} ended by SIGTERM, {report.killed} by "
            f"SIGKILL), {report.cgroups} cgroups removed")
        self.store.end_incarnations(crashed)

    async def _start_http(self, cfg: Config) -> bool:
        """The HTTP gateway, before any agent starts (agents are given its URL)."""
        from .http_gateway import HttpGateway

        http = HttpGateway(self.gateway, cfg.gateway, self.config_path.parent)
        try:
            await http.start()
        except (ConfigError, OSError) as exc:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            print(f"corral: cannot start the gateway on {cfg.gateway.listen}: {why}",
                  file=sys.stderr)
            await http.close()
            return False
        self.http = http
        self.gateway.url = http.url
        self.gateway.socket_path = http.socket_path
        self.hub.daemon(f"gateway listening on {cfg.gateway.listen} ({http.url})")
        return True

    def _recover_tasks(self, records: list[TaskRecord], next_seq: int) -> None:
        """Finish the story of every task the previous daemon accepted (DESIGN section 8)."""
        assert self.sup is not None
        tasks = self.sup.tasks.restore(records, next_seq)
        if tasks:
            was_running = {r.task_id for r in records if r.status == "running"}
            lost = sum(1 for t in tasks if t.status == "lost")
            retried = sum(1 for t in tasks if t.id in was_running and t.status != "lost")
            self.hub.daemon(f"task journal: {len(tasks)} unfinished tasks recovered: "
                            f"{len(tasks) - len(was_running)} queued again, {retried} "
                            f"running ones retried, {lost} lost ({LOST_IN_RESTART})")

    def fill_cwd(self, spec: AgentSpec) -> None:
        """An agent added at runtime without a cwd runs where the config file is, as the
        config's own agents do (load_config)."""
        if spec.cwd is None:
            spec.cwd = str(self.config_path.parent)

    def _add(self, spec: AgentSpec) -> None:
        assert self.sup is not None
        self.fill_cwd(spec)
        self.sup.add(spec)

    def revision_of(self, name: str) -> int | None:
        """The number of the agent's current spec revision in the store."""
        last = self.revisions.latest(name) if self.revisions is not None else None
        return last.revision if last is not None else None

    def record(self, spec: AgentSpec, who: str, change: str | None = None) -> None:
        """A new spec revision of the agent, when its spec changed, through the store's
        writer (kept while the database cannot be written): for a change the config file
        made, which is itself what a restart reads. A command's own revision is committed
        with its change, before it acts (commands.py)."""
        if self.store is not None and self.store.writer is not None:
            out: list[Revision] = []
            self.store.writer.submit(recording(spec, who, change, out), "spec revision",
                                     lambda: self.told_revisions(out))

    def told_revisions(self, revisions: Iterable[Revision]) -> None:
        for rev in revisions:
            self.hub.daemon(f"{rev.agent}: revision {rev.revision} by {rev.who}: "
                            f"{rev.change}")

    @contextlib.asynccontextmanager
    async def changing(self, names: Iterable[str]) -> AsyncIterator[None]:
        """While a command records, then applies, a change of these agents: a second
        command on any of them waits its turn (it sees the first's result)."""
        waiting: list[str] = []
        acquired: list[asyncio.Lock] = []
        try:
            for name in sorted(set(names)):  # in order: two commands never deadlock
                lock, users = self._changing.setdefault(name, (asyncio.Lock(), [0]))
                users[0] += 1
                waiting.append(name)
                await lock.acquire()
                acquired.append(lock)
            yield
        finally:
            for lock in acquired:
                lock.release()
            for name in waiting:
                users = self._changing[name][1]
                users[0] -= 1
                if not users[0]:
                    del self._changing[name]

    def _apply_scaled(self, agents: dict[str, AgentSpec]) -> None:
        """A `corral scale` of a config-declared agent outlives daemon restarts and reloads,
        until the config file itself changes the agent's replica count."""
        assert self.revisions is not None
        self.declared_replicas = {n: s.replicas for n, s in agents.items()}
        for name, (replicas, declared) in self.revisions.scaled().items():
            spec = agents.get(name)
            if spec is None:
                continue
            if spec.replicas == declared:
                spec.replicas = replicas
            elif self.store is not None and self.store.writer is not None:
                # the file says otherwise now: the file wins (kept while the database
                # cannot be written; a restart would decide the same from the file)
                self.store.writer.submit(forgetting_scaled(name), "kept scale")

    async def apply_spec(self, name: str, spec: AgentSpec) -> None:
        """Bring a running agent to `spec` without downtime: a change of `replicas` alone
        scales; any other change replaces replicas one at a time (Agent.roll), then
        scales. Raises SupervisorError when a new process does not become ready."""
        assert self.sup is not None
        agent = self.sup.agent(name)
        want = spec.replicas
        old, new = spec_table(agent.spec), spec_table(spec)
        old.pop("replicas", None)
        new.pop("replicas", None)
        if old != new:
            await agent.roll(spec, start_stopped=False)
        await agent.scale(want)

    def _restore_runtime_agents(self) -> None:
        assert self.store is not None
        for name, table in self.store.runtime_agents().items():
            problem = name_problem(name)
            if problem:  # stored by an older corral, before names were checked
                self.hub.daemon(f"skipped runtime agent {shown(name)} from the state "
                                f"database: {problem}")
                continue
            if self.sup is not None and name in self.sup.agents:
                continue
            try:
                spec = parse_agents({"agents": {name: table}}, "state database")[name]
                self._add(spec)
                self.record(spec, "corral add (restored)")
            except Exception as exc:  # a restore is never fatal: the others still run
                self.hub.daemon(f"could not restore runtime agent {name}: {exc}", priority=4)

    def _on_transition(self, event: Event) -> None:
        """O(1) per lifecycle event: the STATUS line is marked stale (sent at most every
        100 ms), and READY=1 goes out once every autostart agent is up."""
        self.notifier.status_changed()
        if not self._ready_sent:
            self._check_ready()

    def _check_ready(self) -> None:
        """READY=1 once every autostart agent has answered initialize (or given up)."""
        assert self.sup is not None
        sup = self.sup
        if any(sup.census[s] for s in UNSETTLED):
            return
        # eager tool servers are few; looked at only once the agents are settled
        for entry in sup.mcp.servers.values():
            if entry.spec.start == "eager" and any(i.state in UNSETTLED for i in entry.all()):
                return
        self._ready_sent = True
        self.notifier.ready(self.status_line())
        self.hub.daemon(f"ready: {self.status_line()}")

    def status_line(self) -> str:
        """From the supervisor's census: O(1), whatever the size of the fleet."""
        assert self.sup is not None
        c = self.sup.census
        up = sum(c[s] for s in SERVING)
        line = f"{plural(len(self.sup.agents), 'agent')}, {up}/{plural(c.total(), 'replica')} ready"
        failed = c[State.FAILED]
        if self.sup.mcp.servers:
            # tool-server instances are few next to agents, and this line is computed at
            # most every 100 ms (notify.py), so they are counted here
            mcp = list(self.sup.mcp_instances())
            serving = sum(1 for r in mcp if r.state in SERVING)
            failed += sum(1 for r in mcp if r.state == State.FAILED)
            line += (f", {plural(len(self.sup.mcp.servers), 'MCP server')} ({serving}/"
                     f"{plural(len(mcp), 'instance')} serving)")
        return f"{line}, {failed} failed"

    def hub_report(self, text: str) -> None:
        self.hub.daemon(text)

    # -- loops ----------------------------------------------------------------------------
    async def _handle_signals(self) -> None:
        while True:
            sig = await self._signals.get()
            if sig in (signal.SIGTERM, signal.SIGINT):
                self.hub.daemon(f"received {signal.Signals(sig).name}")
                self.request_stop()
            elif sig == signal.SIGHUP:
                self.hub.daemon("received SIGHUP: reloading")
                try:
                    await self.reload("SIGHUP")
                except ConfigError as exc:
                    self.hub.daemon(f"reload rejected: {exc}", priority=4)

    async def _pump_events(self, q: asyncio.Queue[Event]) -> None:
        while True:
            e = await q.get()
            text = f"{e.previous} -> {e.state}: {e.reason}"
            self.hub.emit(e.name, e.replica, e.pid or 0, "event", LineBlock.one(text),
                          when=e.time)
            if self.journal is not None:
                self.journal.lines(e.kind, e.name, e.replica, e.pid or 0, "event",
                                   [text.encode()])

    def _on_stall(self, e: Stall) -> None:
        self.hub.daemon(f"event loop stalled for {e.seconds:.2f} s (not counted against any "
                        f"worker's heartbeat)", priority=4)

    def _on_worker_log(self, e: LogLines) -> None:
        replica, stream, lines = e
        self.hub.emit(replica.name, replica.index, replica.pid or 0, stream, lines)
        if self.journal is not None:
            self.journal.lines(replica.kind, replica.name, replica.index, replica.pid or 0,
                               stream, lines)

    def request_stop(self) -> None:
        if self._stop is not None and not self._stop.done():
            self._stop.set_result(None)

    # -- operations -----------------------------------------------------------------------
    def audit(self, conn: Connection, method: str, params: Any, outcome: str) -> None:
        """A control command's audit row: in the daemon log, and the audit table through
        the store's writer, so a row that cannot be written never changes the command's
        answer (it is kept and written when the database can be: StoreWriter)."""
        text = (f"uid {conn.uid} pid {conn.pid}: {method} "
                f"{msgspec.json.encode(params).decode()} -> {outcome}")
        self.hub.daemon(text, "audit")
        if self.store is not None:
            self.store.audit(conn.uid, conn.pid, method, params, outcome)

    def gateway_audit(self, client: str, tool: str, outcome: str,
                      who: tuple[int, int]) -> None:
        """Every call by a gateway client, in the daemon log and the audit table (the
        writer commits the rows of a loop turn in one transaction)."""
        self.hub.daemon(f"gateway client {client}: tools/call {tool} -> {outcome}", "audit")
        if self.store is not None:
            self.store.audit(who[0], who[1], "gateway.call",
                             {"client": client, "tool": tool}, outcome)

    def gateway_status(self) -> dict[str, Any]:
        return {**self.gateway.stats(),
                "http": self.http.status() if self.http is not None else None}

    async def reload(self, who: str = "reload") -> ReloadResult:
        """Apply the config file's difference; on any error nothing changes. Changed agents
        are brought to their new spec without downtime (apply_spec)."""
        assert self.sup is not None
        self.notifier.reloading()
        try:
            cfg = load_config(self.config_path)
            # the tokens file is re-read: rotating a token is an edit and a reload
            self.gateway.configure(cfg.gateway, self.config_path.parent)
        except ConfigError:
            self.notifier.ready(self.status_line())
            raise
        # the agents' turns (as commands take them: `changing`), so a command's record and
        # the reload's own changes of an agent never interleave; every agent's, since a
        # reload may add, remove, scale or change any of them
        async with self.changing(set(cfg.agents) | set(self.sup.agents)):
            agents, failed = await self._reload_agents(cfg, who)
        # calls in flight to a removed or changed tool server fail with the reason
        servers = _diff({n: e.spec for n, e in self.sup.mcp.servers.items()}, cfg.mcp_servers)
        # new roots or log level are told to the running server (roots/list_changed)
        restart = [n for n in servers["changed"]
                   if not self.sup.retune_mcp_server(cfg.mcp_servers[n])]
        await asyncio.gather(*(self.sup.mcp.remove(n)
                               for n in servers["removed"] + restart))
        for n in servers["added"] + restart:
            self.sup.add_mcp_server(cfg.mcp_servers[n])
        self.sup.heartbeat_interval = cfg.supervisor.heartbeat_interval
        self.sup.heartbeat_timeout = cfg.supervisor.heartbeat_timeout
        result = ReloadResult(**agents, failed=failed, mcp_servers=servers)
        self.hub.daemon(f"reloaded: added {agents['added']}, removed {agents['removed']}, "
                        f"changed {agents['changed']}; MCP servers: {servers}")
        self.notifier.ready(self.status_line())
        return result

    async def _reload_agents(self, cfg: Config, who: str
                             ) -> tuple[dict[str, list[str]], dict[str, str]]:
        """A reload's changes of the agents (their turns held): the diff applied, and the
        agents whose change failed (name -> why)."""
        assert self.sup is not None
        self._apply_scaled(cfg.agents)
        agents = _diff({n: self.sup.agents[n].spec for n in self.from_config
                        if n in self.sup.agents}, cfg.agents)
        for n in agents["added"]:
            if n in self.sup.agents:  # added at runtime before, declared now: the file wins
                await self.sup.remove(n)
                assert self.store is not None and self.store.writer is not None
                # kept while the database cannot be written; a restart adds the file's
                # agent first and skips the stored one of the same name anyway
                self.store.writer.submit(StateStore.forgetting_runtime_agent(n),
                                         "runtime agent")
        await asyncio.gather(*(self.sup.remove(n) for n in agents["removed"]))
        for n in agents["added"]:
            self._add(cfg.agents[n])
            self.record(cfg.agents[n], who)
        failed: dict[str, str] = {}

        async def change(name: str) -> None:
            spec = cfg.agents[name]
            self.fill_cwd(spec)
            try:
                await self.apply_spec(name, spec)
            except SupervisorError as exc:
                failed[name] = exc.message
                self.hub.daemon(f"reload: {exc.message}", priority=4)
                return
            self.record(spec, who)

        await asyncio.gather(*(change(n) for n in agents["changed"]))
        self.from_config = set(cfg.agents)
        return agents, failed


class ProcessRecords:
    """Keeps the store's records of running processes in step with containment, through
    the store's writer thread (StoreWriter: one transaction per batch, off the loop). The
    incarnation row is committed first, on the loop, before anything is spawned, so even a
    process whose record is not committed yet when the daemon dies is found (by its spawn
    token, process group and session: decision 30)."""

    def __init__(self, store: StateStore, containment: Containment) -> None:
        assert store.writer is not None
        self.writer = store.writer
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


def _diff(old: dict[str, Any], new: dict[str, Any]) -> dict[str, list[str]]:
    """Names added, removed, changed and unchanged between two sets of specs."""
    both = set(old) & set(new)
    changed = sorted(n for n in both if not _same(old[n], new[n]))
    return {"added": sorted(set(new) - set(old)), "removed": sorted(set(old) - set(new)),
            "changed": changed, "unchanged": sorted(both - set(changed))}


def _same(a: msgspec.Struct, b: msgspec.Struct) -> bool:
    return msgspec.json.encode(a) == msgspec.json.encode(b)


def run_daemon(config: Path, socket: str | None) -> int:
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
    return uvloop.run(Daemon(config, socket=socket, freeze_heap=True).run())
