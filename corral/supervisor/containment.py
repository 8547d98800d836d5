"""Containment: no process corral starts, and no descendant of one, outlives its agent or
corral itself: the subreaper (re-parented orphans found by one pass over /proc per tick at
most), a cgroup per replica where cgroups v2 are delegated, and `ProcessRecord`s by which
`reclaim` stops a crashed incarnation's processes (docs/containment.md)."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import logging
import os
import secrets
import select
import signal
import time
from collections.abc import Callable, Container, Iterable, Iterator
from typing import Any, Literal, NamedTuple, Protocol

import msgspec

from ..timeouts import within
from .config import MIB, Limits
from .stream import Stream

log = logging.getLogger("corral.containment")

PR_SET_CHILD_SUBREAPER = 36
# every process corral starts carries its spawn token; descendants inherit it
TOKEN_VARIABLE = "CORRAL_SPAWN"
STAT_BYTES = 4096  # more than a /proc/PID/stat line can be: it is read in one read
SUPERVISOR_LEAF = "supervisor"
# the cgroup of a replica's process started while its previous one still runs (a rolling
# restart, a deploy's switch): "agent-NAME-N.surge" beside "agent-NAME-N"
SURGE = ".surge"
CPU_PERIOD_US = 100_000

CgroupMode = Literal["auto", "on", "off"]


# -- the subreaper ------------------------------------------------------------------------
def set_subreaper(on: bool) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, ctypes.c_ulong(1 if on else 0), 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


# -- /proc --------------------------------------------------------------------------------
class ProcStat(NamedTuple):
    pid: int
    state: str
    ppid: int
    pgid: int
    sid: int
    start_time: int  # clock ticks since boot: with the pid, names one process for ever
    cpu_ticks: int  # user + system CPU time, in clock ticks (the heartbeat's sample)
    rss_pages: int


def read_stat(pid: int) -> ProcStat | None:
    # os.open and one os.read, not open(): a sweep reads every process on the host, and
    # a file object's making was near half of each read's CPU
    try:
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY)
    except OSError:
        return None
    try:
        data = os.read(fd, STAT_BYTES)
    except OSError:
        return None
    finally:
        os.close(fd)
    return parse_stat(pid, data)


def parse_stat(pid: int, data: bytes) -> ProcStat | None:
    # the command name may contain spaces and parentheses: split after the last ')'
    try:
        rest = data[data.rindex(b")") + 2:].split()
        return ProcStat(pid, rest[0].decode(), int(rest[1]), int(rest[2]), int(rest[3]),
                        int(rest[19]), int(rest[11]) + int(rest[12]), int(rest[21]))
    except (ValueError, IndexError):
        return None


def has_children() -> bool:
    """Whether this process has a child, running or not yet reaped: one system call."""
    try:
        os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return False
    return True


def scan_processes() -> Iterator[ProcStat]:
    """One pass over /proc (blocking: callers run it in a thread)."""
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            st = read_stat(int(entry.name))
            if st is not None:
                yield st


def read_token(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            env = f.read()
    except OSError:
        return None
    key = TOKEN_VARIABLE.encode() + b"="
    for item in env.split(b"\0"):
        if item.startswith(key):
            return item[len(key):].decode("ascii", "replace")
    return None


def token_owner(token: str) -> str:
    return token.rpartition(".")[0]


def open_verified(pid: int, start_time: int) -> int | None:
    """A pidfd for `pid` if it is still the process that started at `start_time`: opened
    first and checked after, so it cannot name a process that took over a recycled pid."""
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return None
    st = read_stat(pid)
    if st is None or st.start_time != start_time:
        os.close(fd)
        return None
    return fd


def signal_fd(pidfd: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        signal.pidfd_send_signal(pidfd, sig)


def group_alive(pgid: int) -> bool:
    """Whether process group `pgid` has a member (a zombie not yet reaped is one)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - as root every group may be signalled
        pass
    return True


def try_reap(pid: int) -> bool:
    """True when nothing is left of `pid` (reaped now, or not our child)."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True  # not our child (or already reaped)
    return done == pid


# -- cgroups v2 ---------------------------------------------------------------------------
def write_knob(path: str, value: str) -> None:
    """Write a cgroup file. No O_CREAT: in a directory that is not a cgroup (or one removed
    meanwhile) that is an error, not a plain file created."""
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def enable(cgroup: str, controllers: set[str]) -> set[str]:
    """`controllers` enabled for `cgroup`'s children: those the kernel took."""
    enabled: set[str] = set()
    for ctl in sorted(controllers):
        try:
            write_knob(os.path.join(cgroup, "cgroup.subtree_control"), f"+{ctl}")
            enabled.add(ctl)
        except OSError as exc:  # e.g. EBUSY: a process still sits in the cgroup itself
            log.warning("cgroups: cannot enable %s in %s: %s", ctl, cgroup, exc)
    return enabled


def place(cgroup_dir: str, pid: int) -> None:
    """Move process `pid` into the cgroup: between fork and the agent's first instruction
    (the child waits at the gate of its shell prologue)."""
    write_knob(os.path.join(cgroup_dir, "cgroup.procs"), str(pid))


def cgroup_pids(cgroup_dir: str) -> list[int]:
    try:
        with open(os.path.join(cgroup_dir, "cgroup.procs")) as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def subtree_pids(cgroup_dir: str) -> list[int]:
    """The processes in the cgroup and every cgroup below it (a tenant's node holds
    none itself: its replicas' leaves do)."""
    return [pid for dirpath, _, _ in os.walk(cgroup_dir) for pid in cgroup_pids(dirpath)]


def cgroup_kill(cgroup_dir: str) -> None:
    """SIGKILL everything in the cgroup and below (cgroup.kill, Linux 5.14+; before that
    each listed process, repeated until none is left to fork)."""
    try:
        write_knob(os.path.join(cgroup_dir, "cgroup.kill"), "1")
        return
    except FileNotFoundError:
        pass
    except OSError as exc:
        if exc.errno != errno.ENOENT:
            log.warning("cgroup.kill in %s failed: %s", cgroup_dir, exc)
        return
    for _ in range(10):  # pragma: no cover - kernels before 5.14
        pids = cgroup_pids(cgroup_dir)
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def remove_cgroup(cgroup_dir: str) -> bool:
    """False while any of the cgroup and its children is busy."""
    ok = True
    for dirpath, _, _ in os.walk(cgroup_dir, topdown=False):
        try:
            os.rmdir(dirpath)
        except FileNotFoundError:
            pass
        except OSError:
            ok = False
    return ok


def cap_knobs(memory_mb: int, cpu_percent: float, processes: int) -> dict[str, tuple[str, str]]:
    """The cgroup files of a cap on memory, CPU and processes (0: none), as file -> (its
    controller, the value): a replica's leaf and a tenant's node are written alike."""
    return {"memory.max": ("memory", str(memory_mb * MIB) if memory_mb else "max"),
            "cpu.max": ("cpu", f"{int(cpu_percent * CPU_PERIOD_US / 100)} {CPU_PERIOD_US}"
                        if cpu_percent else f"max {CPU_PERIOD_US}"),
            "pids.max": ("pids", str(processes) if processes else "max")}


def oom_kills(cgroup_dir: str) -> int:
    try:
        with open(os.path.join(cgroup_dir, "memory.events")) as f:
            for line in f:
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
    except (OSError, ValueError):
        pass
    return 0


# -- the freezer (corral pause) ----------------------------------------------------------
def set_frozen(cgroup_dir: str, on: bool) -> None:
    write_knob(os.path.join(cgroup_dir, "cgroup.freeze"), "1" if on else "0")


def _events_say_frozen(fd: int, frozen: bool) -> bool:
    # a read from the start is what re-arms the kernel's notification of the next change
    for line in os.pread(fd, 4096, 0).decode().splitlines():
        key, _, value = line.partition(" ")
        if key == "frozen":
            return value.strip() == ("1" if frozen else "0")
    return False


def populated(cgroup_dir: str) -> bool:
    """Whether a process is left in the cgroup (`populated 1` in cgroup.events; True when
    the file cannot be read: nothing is known to be gone)."""
    try:
        with open(os.path.join(cgroup_dir, "cgroup.events")) as f:
            return "populated 0" not in f.read().splitlines()
    except OSError:
        return True


def _settle(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


async def wait_frozen(cgroup_dir: str, timeout: float, frozen: bool = True) -> bool:
    """Wait until the kernel says the cgroup is frozen (a freeze is done only once every
    task in it has stopped), or thawed with `frozen` False; False after `timeout`. The
    kernel notifies a change of cgroup.events (EPOLLPRI), so nothing polls."""
    fd = os.open(os.path.join(cgroup_dir, "cgroup.events"), os.O_RDONLY | os.O_CLOEXEC)
    ep = select.epoll()
    loop = asyncio.get_running_loop()
    try:
        ep.register(fd, select.EPOLLPRI)
        deadline = loop.time() + timeout
        while not _events_say_frozen(fd, frozen):
            left = deadline - loop.time()
            if left <= 0:
                return False
            changed: asyncio.Future[None] = loop.create_future()
            loop.add_reader(ep.fileno(), _settle, changed)
            try:
                await within(changed, left)
            except TimeoutError:
                pass
            finally:
                loop.remove_reader(ep.fileno())
            ep.poll(0)
        return True
    finally:
        ep.close()
        os.close(fd)


def _cgroup2_mount() -> tuple[str, str] | None:
    """(mount point, root within the hierarchy) of the cgroup v2 mount we see."""
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                left, _, right = line.partition(" - ")
                if right.split(" ", 1)[0] == "cgroup2":
                    fields = left.split()
                    return fields[4], fields[3]
    except OSError:
        pass
    return None


def own_cgroup() -> str | None:
    """The directory of this process's cgroup v2, or None."""
    try:
        with open("/proc/self/cgroup") as f:
            rel = next((line.strip()[3:] for line in f if line.startswith("0::")), None)
    except OSError:
        return None
    mount = _cgroup2_mount()
    if rel is None or mount is None:
        return None
    mountpoint, root = mount
    if root != "/" and rel.startswith(root):
        rel = rel[len(root):] or "/"
    if rel.startswith("/.."):  # our cgroup is outside the mounted part (a cgroup namespace)
        return None
    return os.path.normpath(mountpoint + rel)


def is_delegated(cgroup_dir: str) -> bool:
    """systemd marks a cgroup it delegated (Delegate=yes) with a `delegate` xattr."""
    for key in ("trusted.delegate", "user.delegate"):
        with contextlib.suppress(OSError):
            if os.getxattr(cgroup_dir, key) == b"1":
                return True
    return False


class CgroupTree:
    """The delegated cgroup corral manages: itself in `supervisor`, a child per replica."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.controllers: set[str] = set()

    @classmethod
    def detect(cls, mode: CgroupMode) -> tuple[CgroupTree | None, str]:
        """The tree to use, or None; and a sentence saying why."""
        if mode == "off":
            return None, "cgroups: off (configured); containment by subreaper and records"
        own = own_cgroup()
        fallback = "containment by subreaper and records"
        if own is None:
            return None, f"cgroups: no cgroup v2 hierarchy for this process; {fallback}"
        if os.path.basename(own) == SUPERVISOR_LEAF and is_delegated(os.path.dirname(own)):
            own = os.path.dirname(own)  # an earlier incarnation already moved us
        mount = _cgroup2_mount()
        if mount is not None and os.path.normpath(own) == os.path.normpath(mount[0]):
            return None, f"cgroups: this process is in the root cgroup, not delegated; {fallback}"
        if not os.access(os.path.join(own, "cgroup.procs"), os.W_OK) or not os.access(
                own, os.W_OK):
            return None, f"cgroups: {own} is not writable (no Delegate=yes?); {fallback}"
        if mode == "auto" and not is_delegated(own):
            return None, (f"cgroups: {own} is not delegated (no Delegate=yes); {fallback}")
        tree = cls(own)
        try:
            tree.setup()
        except OSError as exc:
            return None, f"cgroups: cannot set up {own}: {exc.strerror}; {fallback}"
        enabled = ", ".join(sorted(tree.controllers)) or "none"
        return tree, f"cgroups: a cgroup per replica under {own} (controllers: {enabled})"

    def setup(self) -> None:
        leaf = os.path.join(self.root, SUPERVISOR_LEAF)
        os.makedirs(leaf, exist_ok=True)
        # a cgroup with processes cannot hand controllers to its children: move out of the
        # way first (the whole process, every thread)
        place(leaf, os.getpid())
        try:
            with open(os.path.join(self.root, "cgroup.controllers")) as f:
                available = set(f.read().split())
        except OSError:
            available = set()
        self.controllers = enable(self.root, available & {"memory", "pids", "cpu"})

    def path(self, kind: str, name: str, index: int, parent: str | None = None) -> str:
        return os.path.join(parent or self.root, f"{kind}-{name}-{index}")

    def prepare(self, path: str, limits: Limits, controllers: set[str] | None = None) -> None:
        """Create the replica's cgroup and write its limits (those of `controllers`, its
        parent's grant)."""
        os.makedirs(path, exist_ok=True)
        granted = self.controllers if controllers is None else controllers
        for key, (ctl, value) in cap_knobs(limits.memory_mb, limits.cpu_percent,
                                      limits.processes).items():
            if ctl in granted:
                write_knob(os.path.join(path, key), value)

    def children(self) -> list[str]:
        try:
            return [e.path for e in os.scandir(self.root)
                    if e.is_dir() and e.name != SUPERVISOR_LEAF]
        except OSError:
            return []


# -- records ------------------------------------------------------------------------------
class ProcessRecord(msgspec.Struct, frozen=True):
    """What corral knows of a process it started, kept durable by the daemon."""

    token: str
    kind: str
    name: str
    replica: int
    pid: int
    start_time: int
    pgid: int
    sid: int
    cgroup: str | None = None
    stop_timeout: float = 10.0

    @property
    def owner(self) -> str:
        return token_owner(self.token)


class ProcessStarted(NamedTuple):
    record: ProcessRecord


class ProcessEnded(NamedTuple):
    """A tracked process exited and was reaped; its descendants are being killed."""

    record: ProcessRecord


class ProcessWatch(msgspec.Struct):
    record: ProcessRecord
    oom_before: int = 0
    # re-parented descendants attributed to this process: pid -> start time
    escapees: dict[int, int] = msgspec.field(default_factory=dict)


class Ticket(NamedTuple):
    """A spawn in preparation."""

    token: str
    cgroup: str | None


class ContainmentInfo(msgspec.Struct):
    mode: str  # the configured cgroups mode
    cgroup: str | None  # the delegated cgroup corral manages, if any
    controllers: list[str]
    subreaper: bool
    notice: str  # the start-up sentence: which mechanisms are in force, and why
    processes: int  # tracked now
    proc_passes: int  # passes over /proc for re-parented processes, since start
    orphans_killed: int


class ReclaimReport(msgspec.Struct):
    found: int = 0  # processes of earlier incarnations still alive
    terminated: int = 0  # ended by SIGTERM within the grace period
    killed: int = 0  # needed SIGKILL
    cgroups: int = 0  # leftover cgroups removed


class Nodes(Protocol):
    """The cgroup nodes of tenants, where delegated (tenantcgroups.TenantNodes)."""

    def tenant_of(self, kind: str, name: str) -> str | None: ...

    def enter(self, tenant: str) -> tuple[str, set[str]]: ...

    def leave(self, tenant: str) -> None: ...

    def tick(self) -> None: ...


# -- the engine's containment -------------------------------------------------------------
class Containment:
    """Tracks every process a Supervisor starts and everything they leave behind."""

    def __init__(self, cgroups: CgroupMode = "auto", *, stream: Stream | None = None,
                 spared: Container[int] = frozenset()) -> None:
        """`spared`: children of a program that embeds a Supervisor and starts processes
        of its own, as it adds them: not corral's, so neither reaped by the tick (their
        owner's wait would never learn the status) nor killed as orphans."""
        self.stream = stream if stream is not None else Stream()
        self.spared = spared
        # the incarnation: a random id, so tokens of two daemons (or two runs) never meet
        self.owner = f"{os.getpid()}-{secrets.token_hex(6)}"
        self.mode: CgroupMode = cgroups
        self.tree: CgroupTree | None = None
        self.notice = "containment not started"
        self.subreaper = False
        self.live: dict[str, ProcessWatch] = {}  # token -> tracked
        self._by_pid: dict[int, ProcessWatch] = {}
        self._seq = 0
        # tokens issued, process not yet started -> their cgroup
        self._pending: dict[str, str | None] = {}
        self._orphan_fds: dict[int, int] = {}  # pidfd -> pid: killed orphans to reap
        # orphans seen once with no token and no owner, as (pid, start time): a process
        # whose exec is under way reads an empty environment, so it is judged again
        self._unread: set[tuple[int, int]] = set()
        self._sweep_wanted = 0  # sweeps still owed (an exit owes two: now and next tick)
        # the groups of ended processes that had no cgroup to kill: their members die
        # after them (a sandbox's init, by its parent-death signal) and are re-parented
        # to us as they do; emptied groups leave at each tick, close waits for the rest
        self._dying_groups: set[int] = set()
        self._sweep_task: asyncio.Task[int] | None = None
        self._last_sweep = 0.0
        self.sweeps = 0  # passes over /proc, for tests and stats
        self.orphans_killed = 0
        self.min_sweep_interval = 1.0
        self.nodes: Nodes | None = None
        self._tenant_of: dict[str, str] = {}  # token -> the tenant whose node it is in
        # processes the previous image handed over (corral upgrade: adopt.py), taken by
        # their replica's start instead of a spawn: (replica) -> whether it adopted one
        self.handed: Callable[[Any], bool] | None = None

    # -- start and stop -------------------------------------------------------------------
    def open(self) -> None:
        if not self.subreaper:
            try:
                set_subreaper(True)
                self.subreaper = True
            except OSError as exc:  # pragma: no cover - Linux < 3.4
                log.warning("cannot become a child subreaper: %s", exc)
        if self.tree is None:
            self.tree, self.notice = CgroupTree.detect(self.mode)

    async def close(self) -> None:
        """After every tracked process ended: last sweeps, reap, stop being a subreaper."""
        for _ in range(3 if self.tree is None else 0):  # (cgroup.kill needs no search)
            if not await self._sweep_now():
                break
        await self._wait_orphans(5.0)
        await self._wait_groups(2.0)
        if self.tree is not None:
            for path in self.tree.children():
                cgroup_kill(path)
                await _wait_empty(path, 5.0)  # rmdir fails while a process is dying
                remove_cgroup(path)
        if self.subreaper:
            with contextlib.suppress(OSError):
                set_subreaper(False)
            self.subreaper = False

    def info(self) -> ContainmentInfo:
        return ContainmentInfo(
            mode=self.mode, cgroup=self.tree.root if self.tree else None,
            controllers=sorted(self.tree.controllers) if self.tree else [],
            subreaper=self.subreaper, notice=self.notice, processes=len(self.live),
            proc_passes=self.sweeps, orphans_killed=self.orphans_killed)

    # -- spawning -------------------------------------------------------------------------
    def ticket(self, kind: str, name: str, index: int, limits: Limits) -> Ticket:
        self._seq += 1
        token = f"{self.owner}.{self._seq}"
        path = None
        if self.tree is not None:
            # a replica's new process started beside its old one (a rolling restart, a
            # deploy) must not be in the old one's cgroup, which is killed when it ends
            in_use = {t.record.cgroup for t in self.live.values()}
            in_use.update(self._pending.values())
            parent = controllers = None
            tenant = self.nodes.tenant_of(kind, name) if self.nodes is not None else None
            if tenant is not None:
                assert self.nodes is not None
                parent, controllers = self.nodes.enter(tenant)
                self._tenant_of[token] = tenant
            path = self.tree.path(kind, name, index, parent)
            if path in in_use:  # its process of before runs on: the other
                path += SURGE
            if path in in_use:  # pragma: no cover - a third at once
                path = self.tree.path(kind, name, index, parent) + f".{self._seq}"
            try:
                self.tree.prepare(path, limits, controllers)
            except OSError:
                self._left(token)
                raise
        self._pending[token] = path
        return Ticket(token, path)

    def abandon(self, ticket: Ticket) -> None:
        self._pending.pop(ticket.token, None)
        self._left(ticket.token)

    def _left(self, token: str) -> None:
        tenant = self._tenant_of.pop(token, None)
        if tenant is not None and self.nodes is not None:
            self.nodes.leave(tenant)

    def started(self, ticket: Ticket, pid: int, *, kind: str, name: str, index: int,
                stop_timeout: float) -> ProcessRecord:
        st = read_stat(pid)
        rec = ProcessRecord(
            token=ticket.token, kind=kind, name=name, replica=index, pid=pid,
            start_time=st.start_time if st else 0, pgid=st.pgid if st else pid,
            sid=st.sid if st else pid, cgroup=ticket.cgroup, stop_timeout=stop_timeout)
        self._pending.pop(ticket.token, None)
        self.adopted(rec)
        self.stream.emit(ProcessStarted(rec))
        return rec

    @property
    def issued(self) -> int:
        return self._seq

    def go_on_from(self, owner: str, issued: int, handed: Callable[[Any], bool]) -> None:
        """Be the incarnation of the image before an exec (corral upgrade): its records
        are this one's, its tokens go on, and the processes it handed over are taken by
        their replica's start instead of a spawn (`handed`: adopt.py's)."""
        self.owner, self._seq = owner, issued
        self.handed = handed

    def divide(self, nodes: Nodes) -> None:
        """A process started from now on is placed in its tenant's node."""
        self.nodes = nodes

    def adopted(self, rec: ProcessRecord) -> None:
        """Track a process the image before an exec started (its record the state
        database's): a cgroup not corral's is not its, to freeze, limit or kill."""
        if rec.cgroup is not None and not self.in_tree(rec):
            rec = msgspec.structs.replace(rec, cgroup=None)
        t = ProcessWatch(rec, oom_kills(rec.cgroup) if rec.cgroup else 0)
        self.live[rec.token] = t
        self._by_pid[rec.pid] = t

    def signal(self, token: str, sig: int) -> None:
        """Signal what the process left outside its group: escapees, the cgroup."""
        t = self.live.get(token)
        if t is None:
            return
        for pid, start in list(t.escapees.items()):
            fd = open_verified(pid, start)
            if fd is None:
                del t.escapees[pid]
                continue
            signal_fd(fd, sig)
            os.close(fd)
        if sig == signal.SIGKILL and t.record.cgroup:
            cgroup_kill(t.record.cgroup)

    def cgroup_of(self, token: str) -> str | None:
        t = self.live.get(token)
        return t.record.cgroup if t is not None and self.tree is not None else None

    def throttles_cpu(self, token: str) -> bool:
        """Whether the kernel enforces this process's cpu_percent (cpu.max)."""
        t = self.live.get(token)
        return (t is not None and t.record.cgroup is not None and self.tree is not None
                and "cpu" in self.tree.controllers)

    def oom_killed(self, token: str) -> bool:
        t = self.live.get(token)
        return (t is not None and t.record.cgroup is not None
                and oom_kills(t.record.cgroup) > t.oom_before)

    def ended(self, token: str) -> None:
        """The process of `token` exited: its descendants go now."""
        t = self.live.pop(token, None)
        if t is None:
            return
        self._by_pid.pop(t.record.pid, None)
        self._left(token)
        for pid, start in t.escapees.items():
            self._kill_orphan(pid, start)
        t.escapees.clear()
        if t.record.cgroup:
            cgroup_kill(t.record.cgroup)
        else:
            # the group's other members are dying now and their children are re-parented
            # as they die: look now and once more on the next tick
            self._sweep_wanted = 2
            self._dying_groups.add(t.record.pgid)
            self._maybe_sweep()
        self.stream.emit(ProcessEnded(t.record))

    # -- the tick: zombies and re-parented orphans ----------------------------------------
    def tick(self) -> None:
        self.reap_zombies()
        if self._dying_groups:
            self._dying_groups = {g for g in self._dying_groups if group_alive(g)}
        self._maybe_sweep()
        if self.nodes is not None:
            self.nodes.tick()

    def reap_zombies(self) -> int:
        """Reap exited children that are not ours to reap elsewhere (not a tracked
        process, whose status its Popen collects)."""
        n = 0
        if self._pending:
            # a spawn in flight on another thread: its child may have exited already and
            # is not known by pid yet; its status is its Popen's, so look next time
            return n
        while True:
            try:
                res = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                return n
            if res is None or res.si_pid == 0 or res.si_pid in self._by_pid \
                    or res.si_pid in self.spared:
                # nothing, a tracked process whose pidfd callback reaps it, or one its
                # owner waits for
                return n
            if not try_reap(res.si_pid):
                return n
            n += 1

    def _maybe_sweep(self) -> None:
        if not self._sweep_wanted or (self._sweep_task and not self._sweep_task.done()):
            return
        if time.monotonic() - self._last_sweep < self.min_sweep_interval * 0.9:
            return  # one pass over /proc per tick at most, however many exits
        self._sweep_wanted -= 1
        self._sweep_task = asyncio.ensure_future(self._sweep_now())

    async def _sweep_now(self) -> int:
        """One pass over /proc for processes re-parented to us; kills those whose agent is
        gone, attaches the others to their agent. Returns how many were killed."""
        self._last_sweep = time.monotonic()
        if not has_children():
            # what a sweep looks for is a child of ours: with none at all there is nothing
            # to find, and the pass reads every process on the host (each daemon's stop
            # ends with one, its agents gone)
            return 0
        self.sweeps += 1
        me = os.getpid()
        found = await asyncio.to_thread(
            lambda: [(st, read_token(st.pid)) for st in scan_processes()
                     if st.ppid == me and st.state != "Z"])
        killed = 0
        leaders = {t.record.pid: t for t in self.live.values()}
        unread, self._unread = self._unread, set()
        for st, token in found:
            if st.pid in self._by_pid or st.pid in self.spared:
                continue  # a process we started ourselves, or one the embedder did
            if token in self._pending:
                continue  # being spawned by another thread right now
            if token is None and self._pending:
                # a spawn thread's child between fork and exec still has corral's
                # environment (no token) and is not known by pid yet: look again later
                self._sweep_wanted = max(self._sweep_wanted, 1)
                continue
            owner = leaders.get(st.pgid) or leaders.get(st.sid)
            if owner is None and token is not None:
                owner = self.live.get(token)
            if owner is not None:
                owner.escapees[st.pid] = st.start_time
            elif token is None and (st.pid, st.start_time) not in unread:
                self._unread.add((st.pid, st.start_time))  # mid-exec? look once more
                self._sweep_wanted = max(self._sweep_wanted, 1)
            elif st.pid not in self._orphan_fds.values():  # (not one already dying)
                killed += self._kill_orphan(st.pid, st.start_time)
        if killed:
            self._sweep_wanted = max(self._sweep_wanted, 1)  # their children are next
        return killed

    def _kill_orphan(self, pid: int, start_time: int) -> bool:
        """SIGKILL a re-parented descendant (if it is still that process) and reap it when
        it is gone; True if it was signalled."""
        fd = open_verified(pid, start_time)
        if fd is None:
            return False
        signal_fd(fd, signal.SIGKILL)
        self.orphans_killed += 1
        self._orphan_fds[fd] = pid
        try:
            asyncio.get_running_loop().add_reader(fd, self._orphan_exited, fd)
        except RuntimeError:  # pragma: no cover - no loop: reap what we can now
            self._orphan_exited(fd)
        return True

    def _orphan_exited(self, fd: int) -> None:
        pid = self._orphan_fds.pop(fd, None)
        with contextlib.suppress(RuntimeError, ValueError):
            asyncio.get_running_loop().remove_reader(fd)
        os.close(fd)
        if pid is not None:
            try_reap(pid)

    async def _wait_groups(self, timeout: float) -> None:
        """Reap, until no ended process's group has a member left (or `timeout`): a
        member dying after its leader becomes our zombie moments after the last sweep."""
        deadline = time.monotonic() + timeout
        while True:
            self.reap_zombies()
            self._dying_groups = {g for g in self._dying_groups if group_alive(g)}
            if not self._dying_groups or time.monotonic() >= deadline:
                return
            await asyncio.sleep(0.01)

    async def _wait_orphans(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self._orphan_fds and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        for fd in list(self._orphan_fds):
            self._orphan_exited(fd)

    # -- after a crash --------------------------------------------------------------------
    def in_tree(self, rec: ProcessRecord) -> bool:
        """Whether a record's cgroup is one corral made: below its own tree, never the
        daemon's leaf. A row of the state database (copied from another host, or made)
        naming another service's cgroup or any directory would have its processes killed
        and its empty directories removed."""
        assert rec.cgroup is not None
        if self.tree is not None:
            root = os.path.realpath(self.tree.root)
            path = os.path.realpath(rec.cgroup)
            first = os.path.relpath(path, root).split(os.sep)[0]
            if first not in (os.curdir, os.pardir, SUPERVISOR_LEAF):
                return True
        log.warning("process record %s names cgroup %s, not one of corral's (%s): its "
                    "processes are not stopped by it, nor is it removed", rec.token,
                    rec.cgroup, self.tree.root if self.tree else "no cgroup tree")
        return False

    async def reclaim(self, records: Iterable[ProcessRecord], owners: Iterable[str]
                      ) -> ReclaimReport:
        """Stop every live process of earlier incarnations `owners`: those in `records`
        (pid and start time must both match), their groups' members, anything carrying
        one of their spawn tokens, everything in their cgroups; SIGTERM, the longest
        stop_timeout among them, SIGKILL, cgroup.kill."""
        records = list(records)
        owners = set(owners) | {r.owner for r in records}
        report = ReclaimReport()
        if not owners:
            return report
        grace = max((r.stop_timeout for r in records), default=10.0)
        groups = {r.pgid: r for r in records} | {r.sid: r for r in records}
        cgroups = {r.cgroup for r in records if r.cgroup and self.in_tree(r)}
        if self.tree is not None:
            cgroups.update(self.tree.children())

        def find() -> list[ProcStat]:
            me = os.getpid()
            every = {st.pid: st for st in scan_processes()}

            def ours(group: int) -> bool:
                # a pid is not reused while it names a live group or session: a group of
                # a record is still the recorded one unless its leader's pid now belongs
                # to a process that started at another time
                rec = groups.get(group)
                leader = every.get(group)
                return rec is not None and (leader is None
                                            or leader.start_time == rec.start_time)

            in_cgroups = {pid for cg in cgroups for pid in subtree_pids(cg)}
            out = []
            for st in every.values():
                if st.pid == me or st.state == "Z":
                    continue
                if ours(st.pgid) or ours(st.sid) or st.pid in in_cgroups:
                    out.append(st)
                    continue
                token = read_token(st.pid)
                if token is not None and token_owner(token) in owners:
                    out.append(st)
            return out

        victims = await asyncio.to_thread(find)
        fds = {}
        for st in victims:
            fd = open_verified(st.pid, st.start_time)
            if fd is not None:
                fds[fd] = st.pid
        report.found = len(fds)
        # a process paused (corral pause) when its daemon died must run to handle SIGTERM
        for cg in cgroups:
            with contextlib.suppress(OSError):
                set_frozen(cg, False)
        report.killed = await end_all(set(fds), cgroups, grace)
        report.terminated = len(fds) - report.killed
        for fd in fds:
            os.close(fd)  # their parent (init, or the service manager) reaps them
        for cg in cgroups:
            if os.path.isdir(cg):
                await _wait_empty(cg, 5.0)
                if remove_cgroup(cg):
                    report.cgroups += 1
        return report


async def end_all(fds: set[int], cgroups: Iterable[str], grace: float) -> int:
    """SIGTERM (and SIGCONT: a stopped one must run to handle it) each pidfd's process,
    `grace`, SIGKILL the rest and kill every cgroup; until they are gone (5 s at most).
    How many took SIGKILL. The fds stay the caller's. A crashed incarnation's processes
    (`Containment.reclaim`) and those an upgrade did not keep (daemon/upgrade.py) end
    by it."""
    for fd in fds:
        signal_fd(fd, signal.SIGTERM)
        signal_fd(fd, signal.SIGCONT)
    left = await wait_fds(fds, grace)
    for fd in left:
        signal_fd(fd, signal.SIGKILL)
    for cg in cgroups:
        cgroup_kill(cg)
    await wait_fds(left, 5.0)
    return len(left)


async def wait_fds(fds: set[int], timeout: float) -> set[int]:
    """Wait until every pidfd is readable (its process exited); the ones still open."""
    left = set(fds)
    if not left:
        return left
    loop = asyncio.get_running_loop()
    done = loop.create_future()

    def ready(fd: int) -> None:
        loop.remove_reader(fd)
        left.discard(fd)
        if not left and not done.done():
            done.set_result(None)

    for fd in fds:
        loop.add_reader(fd, ready, fd)
    with contextlib.suppress(TimeoutError):
        await within(done, timeout)
    for fd in left:
        loop.remove_reader(fd)
    return left


async def _wait_empty(cgroup_dir: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while subtree_pids(cgroup_dir) and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
