"""`corral upgrade`: the daemon re-executes itself in place and keeps its agents (what it
keeps, what a client sees, when it is refused: docs/operations.md, "Upgrades").

The old image checks the new install in a child (`preflight`), waits until every worker's
channel can be handed whole (supervisor/adopt.py), holds dispatch across a last look,
writes the state file (handoff.py), keeps the fds it lists open and execs the new image:
the same pid, so every agent process stays its child. The new image (`Takeover`) continues
the incarnation and adopts each handed process when its replica starts.

A new image that cannot start falls back: `BOOT`, the program the old image execs (its own
text, so a new install that cannot even be imported still runs it), catches any failure
before the new image commits (boot.py's `committed`) and execs the old interpreter with the
old environment on the same state file, the reason in `CORRAL_UPGRADE_FAILED`; the old
image adopts everything back. What fails after the commit is a failed start, as any. A
release whose state needs a full stop takes a handoff layout of its own (handoff.py's
`HANDOFF_VERSION`): the old image refuses the upgrade (decision 1523).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import msgspec

from .. import __version__, jsonrpc
from ..cluster import handover
from ..jsonrpc import RpcError
from ..methods import DaemonUpgrade, UpgradeReport
from ..supervisor.adopt import (
    Adoptions,
    HandedProcess,
    close_all,
    close_on_exec,
    hand,
    hand_plain,
    keep_open,
)
from ..supervisor.containment import (
    Containment,
    ProcessRecord,
    end_all,
    open_verified,
    read_stat,
    try_reap,
)
from ..supervisor.mcproutes import updates_to
from ..supervisor.plain import PlainReplica
from ..supervisor.procstat import since_start
from ..supervisor.replica import Replica
from ..supervisor.replicaparts import Transition
from ..supervisor.tasks import AttemptEnded, CompactTask, TaskFinished, TaskRecord, Unfinished
from ..text import plural
from ..timeouts import kept, within
from . import handoff
from .control import ControlServer, any_set
from .handoff import FAILED_VARIABLE, VARIABLE, Fallback, Handoff, Listeners, ResourceSubscription
from .localgateway import NAME as LOCAL

if TYPE_CHECKING:
    from ..cluster.node import ClusterNode
    from ..supervisor.config import Config
    from ..supervisor.core import Supervisor
    from ..supervisor.process_replica import ProcessReplica
    from .gatewayaccess import GatewayService
    from .logs import LogHub
    from .notify import Notifier
    from .services import Services
    from .store import StateStore

# how long the hand-over waits for every worker's channel to be quiet (a request of its
# own answered, a handshake or a stop over) before it gives up and changes nothing
QUIESCE_TIMEOUT = 10.0
PREFLIGHT_TIMEOUT = 60.0
# how long the new image waits for the replicas of handed processes to be started (an
# agent not started at all, autostart = false, is given up on then)
STARTED_WAIT = 10.0
# the hand-over's longest wait between two looks at the channels: it is told of what
# ends a wait but bytes still in a pipe (a worker reading its stdin backlog)
QUIET_LOOK = 0.05
# adoptions begun per turn of the loop: each is a pidfd and three pipes, no spawn, so a
# slice is larger than a mass start's (pacing.BATCH) and the loop still serves between
ADOPT_BATCH = 64
# how long a zygote or plain program of the old image has to exit (its stdin is closed by
# the exec) before SIGKILL
END_GRACE = 2.0
# where the image to exec imports corral from, first (before the directory it runs in,
# which `python -c` puts first as `-m` does): --pythonpath, or the old image's own
IMPORT_VARIABLE = "CORRAL_IMPORT_FROM"
# (the collector off: the check imports what the daemon imports, reads the config and
# exits; nothing it makes needs collecting; and its exit is its streams flushed and no
# teardown of every module it imported, most of what the check did after its answer, as
# the daemon's own exit: an exception still ends it as the interpreter's would)
PREFLIGHT = ("import gc, os, sys; gc.disable(); sys.path[0:0] = [p for p in os.environ.pop("
             "'CORRAL_IMPORT_FROM', '').split(os.pathsep) if p]; "
             "from corral.daemon.boot import preflight; status = preflight(sys.argv[1]); "
             "sys.stdout.flush(); sys.stderr.flush(); os._exit(status)")

BOOT = r'''
import gc, os, sys
gc.disable()  # until the handed processes are adopted (Takeover.settle): dispatch waits
sys.path[0:0] = [p for p in os.environ.pop("CORRAL_IMPORT_FROM", "").split(os.pathsep) if p]
def fall_back(why):
    import json
    path = os.environ["CORRAL_HANDOFF"]
    if os.environ.get("CORRAL_UPGRADE_FAILED"):
        sys.stderr.write("corral: the image fallen back to cannot start either: %s\n" % why)
        sys.exit(1)
    with open(path, "rb") as f:
        back = json.load(f)["fallback"]
    env = dict(back["env"])
    env["CORRAL_HANDOFF"] = path
    env["CORRAL_UPGRADE_FAILED"] = why[-4000:] or "the new image failed"
    sys.stderr.write("corral: the new image cannot start (%s); going back to the old one\n"
                     % why)
    sys.stderr.flush()
    os.execve(back["python"], [back["python"], "-c", back["boot"]], env)
try:
    from corral.daemon import boot
    rc = boot.resume()
except BaseException as exc:
    mod = sys.modules.get("corral.daemon.boot")
    if mod is not None and getattr(mod, "committed", False):
        raise
    import traceback
    fall_back("".join(traceback.format_exception_only(type(exc), exc)).strip())
sys.exit(rc)
'''


class UpgradeRefusal(Exception):
    """Nothing was handed over; the text says why."""


class Host(Protocol):
    """What the upgrade needs of the daemon (daemon.Daemon; what its set-up made is
    read-only)."""

    @property
    def sup(self) -> Supervisor: ...
    @property
    def hub(self) -> LogHub: ...
    @property
    def store(self) -> StateStore: ...
    @property
    def control(self) -> ControlServer: ...
    @property
    def cluster(self) -> ClusterNode | None: ...
    @property
    def services(self) -> Services: ...

    notifier: Notifier
    config_path: Path
    socket_override: str | None
    spared: set[int]  # children of the daemon's own that the subreaper leaves alone


class Target:
    """The image to exec: an interpreter, and the environment it runs with."""

    def __init__(self, python: str | None, pythonpath: str | None,
                 notifier: Notifier, spared: set[int]) -> None:
        self.python = python or sys.executable
        self.spared = spared
        self.compiled = True  # the new install's byte-code written by its check
        self.env = environment(notifier)
        if pythonpath is not None:
            self.env["PYTHONPATH"] = self.env[IMPORT_VARIABLE] = pythonpath

    async def check(self, config: Path) -> str:
        """The new install's version; UpgradeRefusal if it cannot run the daemon here."""
        try:
            proc = await asyncio.create_subprocess_exec(
                self.python, "-c", PREFLIGHT, str(config), env=self.env,
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE)
        except OSError as exc:
            raise UpgradeRefusal(f"{self.python} cannot be run: {exc.strerror}") from None
        self.spared.add(proc.pid)  # its status is its own waiter's, not the subreaper's tick's
        try:
            out, err = await within(proc.communicate(), PREFLIGHT_TIMEOUT)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise UpgradeRefusal(f"the new install's check did not answer within "
                                 f"{PREFLIGHT_TIMEOUT:g} s") from None
        finally:
            self.spared.discard(proc.pid)
        if proc.returncode != 0:
            lines = err.decode(errors="replace").strip().splitlines()
            raise UpgradeRefusal(f"the new install does not start: {lines[-1] if lines else ''}"
                                 f" (exit status {proc.returncode})")
        try:
            said = json.loads(out.decode().strip().splitlines()[-1])
        except (ValueError, IndexError):
            raise UpgradeRefusal(f"the new install's check said nothing readable: {out[:200]!r}"
                                 ) from None
        self.compiled = said.get("compiled") is not False  # (an older check: unsaid)
        if said.get("handoff") != handoff.HANDOFF_VERSION:
            raise UpgradeRefusal(f"corral {said.get('version')} takes handoff layout "
                                 f"{said.get('handoff')}, this daemon writes "
                                 f"{handoff.HANDOFF_VERSION}: stop and start it instead")
        return str(said.get("version"))


def environment(notifier: Notifier) -> dict[str, str]:
    """The daemon's environment as it was given (systemd's variables, which the notifier
    took out of it so that agents never see them, put back)."""
    env = {k: v for k, v in os.environ.items()
           if k not in (VARIABLE, FAILED_VARIABLE, IMPORT_VARIABLE)}
    if notifier.address is not None:
        addr = notifier.address
        env["NOTIFY_SOCKET"] = "@" + addr[1:] if addr.startswith("\0") else addr
    if notifier.watchdog_usec:
        env["WATCHDOG_USEC"] = str(notifier.watchdog_usec)
        env["WATCHDOG_PID"] = str(os.getpid())
    return env


# -- the daemon's side ---------------------------------------------------------------------
class Upgrades:
    """A daemon's upgrades: asked for (`ask`), handed over by the arbiter (`hand_over`),
    and, in the image that took a handoff, adopted (`Takeover`)."""

    def __init__(self, host: Host, queue: Callable[[], None],
                 taken: Takeover | None = None) -> None:
        self.host = host
        self._queue = queue  # puts the hand-over in the arbiter's queue
        self.taken = taken
        self.target: Target | None = None
        # the HTTP server's and gateway's sockets: held across the exec, or inherited
        self.listeners = taken.listeners if taken else Listeners()
        # (an image that takes a handoff answers before its set-up is over: under way)
        self.report = UpgradeReport(attempt=taken.handoff.attempt if taken else 0,
                                    state="handing_over" if taken else "none",
                                    pid=os.getpid(), from_version=__version__)

    async def ask(self, p: DaemonUpgrade) -> UpgradeReport:
        """`daemon.upgrade`: the last report, or an upgrade checked and begun."""
        if p.report:
            return self.report
        if self.report.state == "handing_over" or self.target is not None:
            raise RpcError(jsonrpc.CONFLICT, "an upgrade is under way")
        target = Target(p.python, p.pythonpath, self.host.notifier, self.host.spared)
        self.report = UpgradeReport(attempt=self.report.attempt + 1, state="handing_over",
                                    pid=os.getpid(), from_version=__version__)
        try:
            self.report.to_version = await target.check(self.host.config_path)
        except UpgradeRefusal as exc:
            self._refused(str(exc))
            raise RpcError(jsonrpc.REFUSED, f"upgrade refused, nothing changed: {exc}"
                           ) from None
        self.target = target
        self._queue()
        return self.report

    def _refused(self, why: str) -> None:
        self.report.state, self.report.error = "refused", why
        self.target = None
        self.host.hub.daemon(f"upgrade refused, nothing changed: {why}", priority=4)

    async def hand_over(self) -> None:
        """The arbiter's: wait for every worker's channel to be quiet, hold dispatch,
        look again (the journal and the store committed), write the state file and exec.
        Returns only when nothing was handed over."""
        target = self.target
        assert target is not None  # (checked by `ask`, which queued this)
        host = self.host
        tasks = host.sup.parts.tasks
        asked = time.time()
        if not target.compiled:
            host.hub.daemon("upgrading: the new install's byte-code cannot be written; "
                            "the new image compiles its modules as it starts, while "
                            "dispatch is held", priority=4)
        # a task waiting for a person holds its worker's request open, which no image
        # can hand over: each whose calls are journaled gives its attempt back now and
        # resumes by replay in the next image (docs/approvals.md)
        given = tasks.suspensions.suspend_all("suspended while it waited for a person, "
                                              "for the daemon's upgrade")
        if given:
            host.hub.daemon(f"upgrading: {plural(given, 'task')} waiting for a person "
                            f"suspended")
        deadline = time.monotonic() + QUIESCE_TIMEOUT
        # quiet channels waited for while dispatch goes on (a task running is handed with
        # its worker), half the time at most: dispatch is held only across the last
        # looks and the exec (a fleet never quiet all at once under its load is held
        # for the rest of the time, as before)
        with contextlib.suppress(UpgradeRefusal):
            await self._quiet(time.monotonic() + QUIESCE_TIMEOUT / 2)
        tasks.hold("the daemon is upgrading")
        host.hub.daemon(f"upgrading to corral {self.report.to_version} "
                        f"({target.python}): holding dispatch")
        node = host.cluster
        try:
            # no control request is read from here on: each client is answered what was
            # read, told so and let go; what it sends meanwhile it sends again to the
            # next image (or, if nothing is handed over, to this one: come_back)
            await self.listeners.go_away()
            told = await host.control.go_away(
                f"upgrading to corral {self.report.to_version}")
            host.hub.daemon(f"upgrading: {plural(told, 'control connection')} told to "
                            "go away (the socket stays open: clients wait in its backlog)")
            if node is not None:
                await handover.settle(node)
            kept = await self._quiet(deadline, held=True)
            # an outcome or a claim of the cluster's that came meanwhile is settled, and
            # the channels looked at again: the exec follows the last look with no await
            while node is not None and (left := handover.unsettled(node)):
                if time.monotonic() >= deadline:
                    raise UpgradeRefusal(f"{left} within {QUIESCE_TIMEOUT:g} s")
                await asyncio.sleep(QUIET_LOOK)
                await handover.settle(node)
                kept = await self._quiet(deadline, held=True)
            self._exec(target, asked, kept)
        except UpgradeRefusal as exc:
            tasks.release()
            if node is not None:
                handover.resume_taking(node)
            self._refused(str(exc))
            # (the clients that waited in the backlogs meanwhile read the report: refused)
            await host.control.come_back()
            await self.listeners.come_back()

    async def _quiet(self, deadline: float, held: bool = False) -> list[HandedProcess]:
        """Every worker described whole, once nothing is in flight on its channel but
        requests corral sent (and the journal and the store have written what they
        were given): what to keep (the next image ends the rest, found by their records
        in the store as after a crash: `Takeover.go_on`). Between looks it waits
        to be told: a replica's transition on the stream (a start or stop over), a
        request of a waiting replica's channel ended (`Peer.ends`); QUIET_LOOK at
        most, for what nothing tells (bytes still in a pipe, either way).

        `held` (dispatch held: the look the exec follows): a task or an attempt that
        ended while the writes were waited for has its record still to be written, and
        the look waits for it too: described without it, the task could run again in
        the next image, its committed row saying it running on no worker handed over
        (one of ~100 tasks did, once, beside a busy loop per core)."""
        host = self.host
        sup = host.sup
        woken = asyncio.Event()
        ends: list[object] = []  # of tasks and attempts, since the last look

        def wake(*_: object) -> None:
            woken.set()

        stream = sup.parts.stream
        subs = [stream.subscribe(wake, Transition)]
        if held:  # (the running tasks' ends, which come as long as dispatch goes on)
            subs.append(stream.subscribe(ends.append, TaskFinished, AttemptEnded))
        try:
            while True:
                ends.clear()
                await sup.parts.tasks.committed()
                if host.store.writer is not None:
                    await host.store.writer.committed()
                kept, waiting = self._describe(sup)
                if not waiting and not ends:
                    break
                if not waiting:
                    continue  # (the ends' records are written at the next look's waits)
                now = time.monotonic()
                if now >= deadline:
                    labels = ", ".join(r.label for r in waiting[:5])
                    raise UpgradeRefusal(f"{labels} could not be handed over within "
                                         f"{QUIESCE_TIMEOUT:g} s (starting, stopping, or a request "
                                         "of its own still being answered)")
                # woken by a transition, or by a request of a waiting one's ending
                await any_set([woken, *(r.peer.ends() for r in waiting if r.peer is not None)],
                              min(QUIET_LOOK, deadline - now))
        finally:
            for sub in subs:
                stream.unsubscribe(sub)
        return kept

    def _describe(self, sup: Supervisor) -> tuple[list[HandedProcess], list[ProcessReplica]]:
        by_replica: dict[Replica, dict[str, int]] = {}
        for tid, rid in sup.parts.tasks.dispatch.requests.items():
            task = sup.parts.tasks.active.get(tid)
            if task is not None and task.replica is not None and isinstance(rid, int):
                by_replica.setdefault(task.replica, {})[tid] = rid
        kept: list[HandedProcess] = []
        waiting: list[ProcessReplica] = []
        live = sup.parts.containment.live
        gateway, labelled = self.host.services.gateway, sup.parts.tasks.labelled
        replicas: list[ProcessReplica] = [r for agent in sup.parts.agents.values()
                                          for r in agent.replicas]
        for r in [*replicas, *sup.parts.tools.instances()]:
            proc = r.process
            if proc is None:
                continue
            tracked = live.get(proc.token)
            h: HandedProcess | None
            if tracked is None:
                h = None
            elif isinstance(r, PlainReplica):
                h = hand_plain(r, tracked.record.token)
            else:
                h = hand(r, tracked.record.token,
                         by_replica.get(r, {}) if isinstance(r, Replica) else {})
            if h is None:
                waiting.append(r)
            elif isinstance(r, Replica):  # (what an agent's holds of ours: its token, what
                # its calls of no task read)
                kept.append(msgspec.structs.replace(h, gateway=gateway.token_of(r), labels=list(
                    labelled.of_incarnation(r))))
            else:
                kept.append(h)
        return kept, waiting

    def _exec(self, target: Target, asked: float, kept: list[HandedProcess]) -> None:
        """Write the state file and exec; returns (UpgradeRefusal) only if the exec failed."""
        host = self.host
        containment = host.sup.parts.containment
        h = Handoff(
            attempt=self.report.attempt, from_version=__version__, asked_at=asked,
            config=str(host.config_path), issued=containment.issued,
            socket=host.socket_override, control=host.control.fds(),
            fallback=Fallback(python=sys.executable, boot=BOOT, env={
                **environment(host.notifier),
                # the old image imports itself from where it did
                IMPORT_VARIABLE: str(Path(__file__).resolve().parent.parent.parent)}),
            processes=kept, listeners=self.listeners.held(),
            gateway=(host.services.gateway.url or "", host.services.gateway.socket_path),
            subscriptions=[ResourceSubscription(*s) for s in host.sup.parts.tools.subscribed()],
            cluster=None if host.cluster is None else handover.handed(host.cluster))
        path = host.store.path.parent / handoff.NAME
        data = dict(target.env, **{VARIABLE: str(path)})
        fds = handed_fds(h)
        running = sum(len(k.tasks) for k in kept)
        servers = sum(1 for k in kept if k.session is not None)  # (an MCP server's alone)
        try:
            handoff.write(path, h)
        except OSError as exc:
            raise UpgradeRefusal(f"the state file {path} cannot be written: {exc.strerror}"
                                 ) from None
        host.hub.daemon(f"upgrading: handing {kept_text(len(kept) - servers, servers)} and "
                        f"{plural(running, 'running task')} to corral "
                        f"{self.report.to_version} (exec of {target.python}, pid "
                        f"{os.getpid()})")
        host.notifier.send(STATUS=f"upgrading to corral {self.report.to_version}")
        keep_open(fds)
        try:
            os.execve(target.python, [target.python, "-c", BOOT], data)
        except OSError as exc:
            close_on_exec(fds)
            with contextlib.suppress(OSError):
                path.unlink()
            raise UpgradeRefusal(f"exec of {target.python} failed: {exc.strerror}") from None


def handed_fds(h: Handoff) -> list[int]:
    """The fds handoff `h` keeps open across the exec: the control socket's and its lock
    file's, the kept processes' pipes (and notify sockets), the listening sockets."""
    return [*h.control, *(fd for k in h.processes for fd in k.fds if fd >= 0),
            *(listener.fd for listener in h.listeners)]


# -- the image that takes a handoff --------------------------------------------------------
class Takeover:
    """A handoff being taken: the new image's set-up asks it at each of its steps."""

    def __init__(self, h: Handoff, path: Path, failed: str | None,
                 config: Config | None = None) -> None:
        self.handoff = h
        # the same process: the exec kept its pid and start time (its uptime, and its
        # incarnation's row in the state database: `go_on`)
        me = read_stat(os.getpid())
        assert me is not None  # (its own /proc entry)
        self.me, self.started_at = me, time.time() - since_start(me.start_time)
        # inherited by the exec only: the tracing exporter, spawned before the adoptions
        # and the control socket, held them all (an MCP server never read its stdin's end)
        close_on_exec(handed_fds(h))
        self.config = config  # the config file as boot.resume read it (read once)
        self.path = path
        self.failed = failed  # the new image's failure, in the image fallen back to
        self.held: dict[str, TaskRecord] = {}  # running tasks kept, till re-attached
        self._coming: dict[str, asyncio.Future[None]] = {}  # (`reattached`)
        self.kept_tasks = 0
        self.kept_servers = 0
        self.lost: list[str] = []
        self.ended: list[ProcessRecord] = []  # not handed over: `settle` ends them
        self.sup: Supervisor | None = None
        self.adoptions = Adoptions(self._adopted, self._lost)  # (`go_on`: what it waits for)
        self._first = asyncio.Event()  # a handed process adopted (or lost): dispatch goes on
        self._regains: set[asyncio.Future[None]] = set()  # (`_adopted`)
        self.listeners = Listeners(h.listeners)  # taken by the HTTP server and gateway
        self.gateway: GatewayService | None = None  # (`gateway_address`: its tokens go on)
        # a cluster node's running claims with their records, read once its node reaches
        # Redis (startup's, cluster/handover.py `kept`), re-attached by the node
        self.claims: dict[str, handover.KeptClaim] = {}
        self.node: ClusterNode | None = None

    def gateway_address(self, gateway: GatewayService, cfg: Config) -> None:
        """The gateway's address as the old image gave its agents, where the sockets it
        was served on are inherited for the same addresses: a replica that starts
        before the HTTP parts do (they start once the handed processes are adopted) is
        given it, and a client of it waits in the backlog."""
        self.gateway = gateway
        url, socket_path = self.handoff.gateway
        configured = {name: listen for name, listen in (("http", cfg.http.listen),
                                                        ("gateway", cfg.gateway.listen))
                      if listen}
        if url and configured == {i.name: i.listen for i in self.handoff.listeners
                                  if i.name != LOCAL}:
            gateway.url, gateway.socket_path = url, socket_path

    def go_on(self, sup: Supervisor, store: StateStore) -> None:
        """Once the store is open, before anything is spawned: the same incarnation (the
        state database's row of this process, which `incarnation.reclaim` leaves), the
        replicas' starts taking the handed processes by their records (one of none is
        no one's, as after a crash: its pipes closed); the old image's others found by
        their records as a crash's are (incarnation.py), tracked until `settle` ends them
        (not taken for orphans, their cgroups not given to those started in their place)."""
        self.sup = sup
        owner = next(o for o, pid, start in store.incarnations()
                     if (pid, start) == (self.me.pid, self.me.start_time))
        records = {r.token: r for r in store.process_records([owner])}
        for h in self.adoptions.expect(self.handoff.processes, records):
            close_all(h.fds)
            self.lost.append(f"process {h.token} (no record of it in the state database)")
        sup.parts.containment.go_on_from(owner, self.handoff.issued, self.adoptions.take)
        kept = {h.token for h in self.handoff.processes}
        self.ended = [r for r in records.values() if r.token not in kept]
        for rec in self.ended:
            sup.parts.containment.adopted(rec)

    def hold_back(self, unfinished: list[Unfinished]) -> list[Unfinished]:
        """The journal's unfinished tasks less those running on a kept worker: they
        are re-attached to it, not recovered."""
        running = {t.task_id for h in self.handoff.processes for t in h.tasks
                   if h.token in self.adoptions.records}
        rest: list[Unfinished] = []
        for rec in unfinished:
            if (not isinstance(rec, CompactTask)  # (suspended: on no worker)
                    and rec.task_id in running and rec.status == "running"):
                self.held[rec.task_id] = rec
            else:
                rest.append(rec)
        loop = asyncio.get_running_loop()
        self._coming = {tid: loop.create_future() for tid in self.held}
        return rest

    async def reattached(self, task_id: str) -> None:
        """Until the running task `task_id`, if the handoff carries it, is re-attached
        to its adopted worker, given back to the queue (its worker lost), or the
        adoptions are over: a wait for it (`corral run`'s again, asked at once after the
        old image's drain) would read its journal row meanwhile, "running", and end."""
        fut = self._coming.get(task_id)
        if fut is not None:
            await asyncio.shield(fut)

    def _back(self, task_id: str | None = None) -> None:
        """Task `task_id` is back in the engine (None: all, the adoptions over)."""
        for tid in [task_id] if task_id is not None else list(self._coming):
            fut = self._coming.pop(tid, None)
            if fut is not None and not fut.done():
                fut.set_result(None)

    def _adopted(self, r: Replica, h: HandedProcess) -> None:
        assert self.sup is not None
        if h.gateway is not None and self.gateway is not None:
            self.gateway.kept(r, h.gateway)  # (before it is Ready: a call may come at once)
        if h.labels:  # (its incarnation is the process's, kept: spawned_at is set)
            self.sup.parts.tasks.labelled.mark(r, None, h.labels)
        if r.kind == "agent":
            # its listener made again where the old image held its sandbox's network
            # (egressdoors.py): the coroutine's first step makes it, before dispatch
            kept(self._regains, asyncio.ensure_future(r.regain_gateways()))
        self._first.set()
        if r.kind == "mcp":
            self.kept_servers += 1
        for t in h.tasks:
            assert r.peer is not None  # (a plain program runs no task)
            rec = self.held.pop(t.task_id, None)
            claim = self.claims.pop(t.task_id, None)
            if claim is not None and self.node is not None and handover.adopt(
                    self.node, claim, r, t.rid):
                self.kept_tasks += 1
                continue
            if rec is None:  # not journaled (task_journal = false), or a claim whose
                # record was not read: its answer is dropped
                r.peer.take_over(0, [t.rid])
                continue
            self.sup.parts.tasks.recovery.adopt_running(rec, r, t.rid)
            self._back(rec.task_id)
            self.kept_tasks += 1

    def _lost(self, h: HandedProcess, why: str) -> None:
        assert self.sup is not None
        self._first.set()
        proc = self.adoptions.records[h.token]
        self.lost.append(f"{proc.name}#{proc.replica} ({why})")
        recs = [r for t in h.tasks if (r := self.held.pop(t.task_id, None)) is not None]
        claims = [c for t in h.tasks if (c := self.claims.pop(t.task_id, None)) is not None]
        if claims and self.node is not None:
            handover.give_back(self.node, claims, why)
        if recs:
            self.sup.parts.tasks.recovery.restore(recs)
            for rec in recs:
                self._back(rec.task_id)

    def _adopt_now(self) -> list[ProcessReplica]:
        """Every replica with a handed process is started by the upgrade itself,
        ADOPT_BATCH a turn, not at the pace of the fleet's mass start (an adoption spawns
        nothing; the fleet's start of a replica adopted already does nothing); the kept
        MCP servers that no config start takes (`start = "lazy"`, or an agent's own,
        `scope = "per-agent"`) too. The agents' subscriptions on those servers are
        listened to again (the servers hold them). The replicas it starts."""
        assert self.sup is not None
        tools, agents = self.sup.parts.tools, self.sup.parts.agents
        starts: list[ProcessReplica] = []
        for kind, name, index in list(self.adoptions.waiting):
            h = self.adoptions.waiting[(kind, name, index)]
            r: ProcessReplica | None
            if kind == "mcp":
                r = tools.instance_of(name, index, h.owner)
            else:
                agent = agents.get(name)
                r = (agent.replicas[index] if agent is not None and agent.spec.autostart
                     and index < len(agent.replicas) else None)
            if r is not None and r.machine.untouched:
                starts.append(r)
        starts = firsts_first(starts)
        # the first alone, the next slice once the first adoption is attached (dispatch
        # goes on as soon as one replica is Ready: the turns its attach takes, crowded
        # with other starts, would delay it; Adoptions.first_over), then slices doubling
        # up to ADOPT_BATCH a turn, as the loop serves its sockets between them
        loop = asyncio.get_running_loop()
        rest = deque(starts)

        def adopt_slice(size: int) -> None:
            for _ in range(min(size, len(rest))):
                rest.popleft().start(by_hand=True)
            if not rest:
                return
            after, over = min(ADOPT_BATCH, size * 2), self.adoptions.first_over
            if over is not None and not over.done():
                over.add_done_callback(lambda _: adopt_slice(after))
            else:
                loop.call_soon(adopt_slice, after)

        adopt_slice(1)
        replicas = {r.label: r for agent in self.sup.parts.agents.values()
                    for r in agent.replicas}
        for s in self.handoff.subscriptions:
            r = replicas.get(s.subscriber)
            if r is not None:
                tools.resubscribe(s.server, s.uri, s.subscriber, updates_to(r))
        return starts

    async def _started(self, starts: list[ProcessReplica]) -> None:
        """Until each agent replica of `starts` has been started (its start is paced over
        loop turns: `_adopt_now`), STARTED_WAIT at most: told by each replica's first
        transition on the stream (a kept MCP server's start took it already)."""
        sup = self.sup
        assert sup is not None
        unstarted = {(r.kind, r.name, r.index) for r in starts
                     if r.kind == "agent" and r.machine.untouched}
        if not unstarted:
            return
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def moved(e: Transition) -> None:
            unstarted.discard((e.kind, e.name, e.replica))
            if not unstarted and not done.done():
                done.set_result(None)

        sub = sup.parts.stream.subscribe(moved, Transition)
        try:
            with contextlib.suppress(TimeoutError):
                await within(done, STARTED_WAIT)
        finally:
            sup.parts.stream.unsubscribe(sub)

    async def adopt(self, meanwhile: Callable[[], Awaitable[object]]) -> None:
        """Once the set-up is over: every handed process adopted by its replica (dispatch
        goes on with each agent's first), and the others' starts begun. `meanwhile`
        runs from the first adoption on (not before: it would slow the one dispatch
        waits for) and is awaited with the rest."""
        started = asyncio.ensure_future(self._started(self._adopt_now()))
        first = asyncio.ensure_future(self._first.wait())
        try:
            await asyncio.wait([started, first], return_when=asyncio.FIRST_COMPLETED)
            side = asyncio.ensure_future(meanwhile())
            try:
                await started
            finally:
                await side
        except BaseException:
            gc.enable()
            started.cancel()
            raise
        finally:
            first.cancel()

    async def settle(self, hub: LogHub) -> UpgradeReport:
        """Once the processes are adopted (and the HTTP parts started): what no replica
        took is ended, the old image's zygotes too; the state file goes; the report."""
        gc.enable()  # (BOOT turned it off: nothing waits for the adoptions any more)
        left = self.adoptions.left()
        await self.adoptions.settled()
        assert self.sup is not None
        self._back()  # (what is still held was not handed: the journal's)
        containment = self.sup.parts.containment
        left_records = [self.adoptions.records[lost.token] for lost in left]
        for rec in left_records:
            containment.adopted(rec)
        if self.claims and self.node is not None:  # their workers not kept
            handover.give_back(self.node, list(self.claims.values()), "its worker was not kept")
            self.claims.clear()
        ended = [*self.ended, *left_records]
        await end_processes(ended, containment)
        for rec in ended:
            containment.ended(rec.token)  # their cgroups and records go
        self.listeners.close_unused()  # (an address the config no longer serves)
        with contextlib.suppress(OSError):
            self.path.unlink()
        h = self.handoff
        report = UpgradeReport(
            attempt=h.attempt, state="fell_back" if self.failed else "done",
            pid=os.getpid(), from_version=h.from_version, to_version=__version__,
            seconds=round(time.time() - h.asked_at, 3),
            kept=self.adoptions.adopted - self.kept_servers, tasks=self.kept_tasks,
            servers=self.kept_servers,
            restarted=[f"{r.kind} {r.name}#{r.replica}" for r in ended] + self.lost,
            error=self.failed)
        if self.failed:
            hub.daemon(f"upgrade failed, fell back to corral {__version__}: the new image "
                       f"could not start: {self.failed}; every agent kept "
                       f"({report.kept} processes, {report.tasks} running tasks)",
                       priority=3)
        else:
            hub.daemon(f"upgraded from corral {h.from_version} to {__version__} in "
                       f"{report.seconds:.3f} s: {kept_text(report.kept, report.servers)} and "
                       f"{plural(report.tasks, 'running task')} kept, "
                       f"{plural(len(ended), 'process', 'processes')} started again")
        return report


def firsts_first(replicas: list[ProcessReplica]) -> list[ProcessReplica]:
    """Each agent's (and MCP server's) first replica before any second, else in order:
    an agent's dispatch goes on as soon as its first is adopted, not after every
    replica of the agents handed before it."""
    firsts: dict[tuple[str, str], ProcessReplica] = {}
    for r in replicas:
        firsts.setdefault((r.kind, r.name), r)
    return [*firsts.values(), *(r for r in replicas if firsts[(r.kind, r.name)] is not r)]


def kept_text(agents: int, servers: int) -> str:
    """"3 agent processes, 1 MCP server" (the servers only when there are)."""
    text = plural(agents, "agent process", "agent processes")
    return text + (f", {plural(servers, 'MCP server')}" if servers else "")


async def end_processes(records: list[ProcessRecord], containment: Containment) -> None:
    """The old image's processes that were not kept (their pipes closed by the exec):
    ended as a crashed incarnation's are (`end_all`: SIGTERM, END_GRACE, SIGKILL, their
    cgroups where corral's: a state database's row may name another service's), then
    reaped (they are this process's children). One whose pid is not its process (gone,
    reaped) is not reaped: its pid may be a child of this image's own now, whose exit
    status is its waiter's."""
    fds = {fd: rec for rec in records
           if (fd := open_verified(rec.pid, rec.start_time)) is not None}
    await end_all(set(fds), {rec.cgroup for rec in fds.values()
                             if rec.cgroup and containment.in_tree(rec)}, END_GRACE)
    for fd, rec in fds.items():  # (a zombie until reaped: its pid still its own)
        os.close(fd)
        try_reap(rec.pid)
