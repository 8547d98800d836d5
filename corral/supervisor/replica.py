"""One replica of an agent: a process that speaks the corral worker protocol. Its own
beside a process replica's: the `initialize` handshake, the `shutdown` request, warm
starts, its sandbox, the worker's requests to the supervisor, and its tasks.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import msgspec

from ..jsonrpc import Peer
from .caps import nice_for_weight
from .config import AgentSpec, Limits
from .dynamicusers import DynamicUsers
from .egressdoors import Doors
from .health import HealthBoard, ReplicaHealth
from .isolation import Isolation, isolation
from .lifecycle import Cause, State
from .process import ChildProcess
from .process_replica import ProcessReplica, ReplicaHost, ReplicaStatus
from .release import release_environment
from .sandbox import (
    GatewayRelay,
    agents_own,
    bound_cwd,
    exit_status,
    host_refusal,
    out_of_reach,
    program_paths,
    resolve_program,
    sandboxed,
    sandboxed_pid,
)
from .seccomp import egress_file, missing
from .tuning import Tuning
from .zygote import Key, Zygotes, ZygoteUnavailable, swallow, warm_argv, warm_pythonpath

PROTOCOL_VERSION = "1"
# corral's package, which a sandboxed agent's worker SDK is imported from
SDK = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))


BOUNDARIES = {
    "held": "bubblewrap, in a network namespace corral holds: its gateways alone",
    "held-empty": "bubblewrap, an empty network namespace corral holds",
    "gateways": "bubblewrap, a network namespace of its own: its gateways alone, relayed",
    "gateway": "bubblewrap, a network namespace of its own: the gateway's socket alone",
    "none": "bubblewrap, an empty network namespace",
    "host": "bubblewrap, the host's network",
}


def boundary(iso: Isolation) -> str | None:
    """What `corral status` says of the layer a process runs under, None without one."""
    said = "" if iso.egress == "any" else f"egress {iso.egress}: "
    if iso.sandbox == "none":
        return f'{said}not enforced (egress_fallback = "warn")' if said else None
    return said + BOUNDARIES[iso.network]


class AgentHost(ReplicaHost, Protocol):
    """What an agent's replica needs of the supervisor besides a process replica's."""

    @property
    def zygotes(self) -> Zygotes: ...

    def zygote_environment(self, agent_env: dict[str, str]) -> dict[str, str]: ...

    @property
    def tuning(self) -> Tuning: ...  # the sandbox program, corral's files, the SDK, the relay

    @property
    def egress_doors(self) -> Doors: ...

    def initial_state(self, r: Replica) -> Any:
        """The state saved by a checkpoint, given back in `initialize`."""

    def worker_request(self, r: Replica, method: str, params: Any) -> Any: ...

    def worker_notification(self, r: Replica, method: str, params: Any) -> None: ...

    def replica_ready(self, r: Replica) -> None: ...

    def replica_down(self, r: Replica) -> None:
        """`r` is Terminated or Failed: tasks waiting for it may have to end."""

    def answers_read(self) -> None:
        """The messages of one read of a worker's stdout are handled: the slots their
        answers freed take their next tasks."""

    @property
    def health_board(self) -> HealthBoard: ...


class Replica(ProcessReplica):
    kind = "agent"
    title_prefix = "corral: agent"
    name_variable = "CORRAL_AGENT"
    handshake = "initialize"
    handshake_failed = "initialize failed"
    host: AgentHost
    spec: AgentSpec

    def __init__(self, host: AgentHost, spec: AgentSpec, name: str, index: int) -> None:
        super().__init__(host, spec, name, index)
        self._inner: tuple[ChildProcess, int] | None = None  # a sandboxed agent's own pid
        self._iso = isolation(spec)  # judged again, with its tenant's, at each start
        self._filter: BinaryIO | None = None  # its egress seccomp filter (`_filtered`)
        self._trips: dict[str, str] = {}  # its trips' binds (egresstrip.py)
        self.health: ReplicaHealth | None = None  # this life's, from Ready till it leaves serving
        # its worker said in `initialize` that it derives a task's trace context from the
        # task's id (docs/protocol.md#trace-context). Not known of an adopted worker,
        # whose handshake was the last image's: it is sent `_meta`.
        self.trace_from_id = False

    # -- health (health.py) ---------------------------------------------------------------
    @property
    def health_ready(self) -> bool:
        """Whether its health lets it take new tasks (no [health]: always)."""
        h = self.health
        return h.ready if h is not None else self.spec.health is None

    @property
    def takes_tasks(self) -> bool:
        """Dispatch may give it a task, slots allowing."""
        if not self.machine.takes_work or self.peer is None:
            return False
        h = self.health  # (health_ready, written out: asked at every task's start)
        return h.ready if h is not None else self.spec.health is None

    def _start_timed_out(self, timeout: float) -> str:
        # what a supervisord or PM2 user meets first: a program that is no worker at
        # all (a web server, a script) never answers; say what would run it
        return (super()._start_timed_out(timeout)
                + ' (not a corral worker? any other program: protocol = "none")')

    def _transitioned(self, previous: State, cause: Cause, reason: str) -> None:
        health = self.health
        if health is not None and not self.machine.takes_work:
            # a new life starts its checks from nothing
            self.health = None
            health.close()
            self.host.health_board.look_at(self.name)
        super()._transitioned(previous, cause, reason)

    def status(self) -> ReplicaStatus:
        st = super().status()
        if self.spec.health is not None:
            h = self.health
            st.ready = h is not None and h.ready
            st.health = h.reason if h is not None else None
        st.boundary = boundary(self._iso)
        return st

    def _environment(self, uid: int | None) -> dict[str, str]:
        env = super()._environment(uid)
        if self.spec.release is not None:  # an agent package's release (release.py)
            sdk = self.host.tuning.release_sdk
            release_environment(env, self.spec.release, sdk() if sdk is not None else None)
        return env

    async def _prestart(self, env: dict[str, str], uid: int | None, gid: int | None,
                        spawning: dict[str, Any]) -> ChildProcess | None:
        """A fork from the zygote of this agent's interpreter, preload set and user, when
        the spec asks for one; None to start cold."""
        spec = self.spec
        # the agent's keys, else its tenant's as it is now: a change of the tenant's
        # applies from a process's next start, and a running one is judged as it started
        self._iso = isolation(spec, self.host.tenant_spec(spec.tenant))
        if self._iso.egress != "any" and spec.egress_fallback == "warn":
            self._iso = self._enforceable(self._iso, uid)
        if self._iso.network == "gateways":
            await self._held(env, spawning)
        elif self._iso.network == "none" and self._iso.egress == "none":
            # as root, a namespace the daemon holds, empty: its refusals seen (egresswatch)
            ns = await self.host.egress_doors.open_allowed(self.label, (), self._one_task)
            if ns is not None:
                spawning["netns"] = ns
                self._iso = self._iso._replace(network="held-empty")
        self._filtered(spawning)
        # an egress sandbox's trips: its listener at the control socket's path, its
        # decoys of the files no agent reads (egresstrip.py)
        self._trips = await self.host.egress_doors.trips.open(
            self.label, self.host.tuning.control_socket, uid, gid, self._one_task) \
            if self._iso.egress != "any" and self._iso.sandbox != "none" else {}
        preload = tuple(spec.preload)
        if not (preload or spec.warm):
            return None
        if self._iso.sandbox != "none":
            # a zygote's fork would be outside the sandbox: a sandboxed agent starts cold
            self.host.stats.cold_fallbacks += 1
            self.note("warm start unavailable, starting cold: the agent is sandboxed")
            return None
        try:
            argv = spec.argv()
            pythonpath = warm_pythonpath(env, spec.cwd)
            key = Key(warm_argv(argv, env), preload, uid, gid, pythonpath)
            zygote = await self.host.zygotes.get(key, lambda: self.host.zygote_environment(
                env if pythonpath is None else {**env, "PYTHONPATH": pythonpath}))
            return await zygote.spawn(argv, env=env, cwd=spec.cwd, limits=self._limits(),
                                      **spawning)
        except ZygoteUnavailable as exc:
            self.host.stats.cold_fallbacks += 1
            self.note(f"warm start unavailable, starting cold: {exc}")
            return None

    def _limits(self) -> Limits:
        """The agent's caps, and the nice value its tenant's cpu_weight gives where it is
        lower than the agent's own: a tenant's weight holds on a host whose cgroups cannot
        weigh CPU."""
        limits = super()._limits()
        tenant = self.host.tenant_spec(self.spec.tenant)
        nice = nice_for_weight(tenant.cpu_weight) if tenant is not None else 0
        if nice > limits.nice:
            return msgspec.structs.replace(limits, nice=nice)
        return limits

    def _filtered(self, spawning: dict[str, Any]) -> None:
        """An egress sandbox's seccomp filter, opened afresh for each start (bwrap reads
        it to its end: a descriptor already read gives nothing) and given to the spawn
        at its number; ours closed once the process holds its copy (`_attached`)."""
        self._unfiltered()
        path = egress_file() if self._iso.egress != "any" and \
            self._iso.sandbox != "none" else None
        if path is not None:
            self._filter = open(path, "rb", buffering=0)  # noqa: SIM115 - kept till next
            spawning["passed"] = self._filter.fileno()

    def _unfiltered(self) -> None:
        if self._filter is not None:
            self._filter.close()
            self._filter = None

    def _attached(self, proc: ChildProcess) -> None:
        super()._attached(proc)
        # exec'd with its own copy of the filter: ours closed now, not when the collector
        # finds a replica removed (a churn of egress agents held dozens open)
        self._unfiltered()

    async def _held(self, env: dict[str, str], spawning: dict[str, Any]) -> None:
        """egress = "gateways" over TCP: the spawn made in a namespace the daemon holds
        (root: egressdoors.py), else the relay in the sandbox's own (egressrelay.py)."""
        url, relay = env.get("CORRAL_MCP_URL"), self.host.tuning.gateway_relay
        if "CORRAL_MCP_SOCKET" in env or url is None or relay is None:
            return
        ns = await self.host.egress_doors.open(self.label, url, relay, task_of=self._one_task)
        if ns is not None:
            spawning["netns"] = ns
            self._iso = self._iso._replace(network="held")

    async def regain_gateways(self) -> None:
        """After `corral upgrade` kept this replica's process in a namespace the old image
        held (egressdoors.py), listen in it again. The namespace is the one its processes
        share (not ours); the address is read from the bwrap's environment (the agent's
        own may be its process title's room by now)."""
        spec = self.spec
        iso = isolation(spec, self.host.tenant_spec(spec.tenant))
        outer = self.pid
        inner = sandboxed_pid(outer) if outer is not None else None
        relay = self.host.tuning.gateway_relay
        if iso.network != "gateways" or inner is None or relay is None:
            return
        try:
            env = dict(item.split("=", 1) for item in Path(
                f"/proc/{outer}/environ").read_text().split("\0") if "=" in item)
            nets = [os.stat(f"/proc/{p}/ns/net").st_ino for p in (inner, outer, "self")]
        except (OSError, ValueError):
            return
        url = env.get("CORRAL_MCP_URL")
        if url is None or "CORRAL_MCP_SOCKET" in env or nets[0] != nets[1] or \
                nets[1] == nets[2]:
            return  # a unix gateway's socket, or the relay in its own namespace
        if await self.host.egress_doors.open(self.label, url, relay,
                                             within=f"/proc/{inner}/ns/net") is not None:
            self._iso = iso._replace(network="held")

    def _one_task(self) -> str | None:
        """The task what it does now is of: its one running task's, else none's."""
        return self.last_task if self.tasks_running == 1 else None

    def _dynamic_users(self) -> DynamicUsers | None:
        return self.host.tuning.dynamic_users

    def _enforceable(self, iso: Isolation, uid: int | None) -> Isolation:
        """With egress_fallback = "warn": `iso` where this host can sandbox the agent,
        else none, said in its log (without "warn", the config was refused: configload)."""
        why = host_refusal(self.host.tuning.sandbox_program,
                           None if uid is None else str(uid)) or missing()
        if why is None:
            return iso
        self.note(f'egress = "{iso.egress}" is not enforced (egress_fallback = "warn"): '
                  f"{why}")
        return Isolation("none", "host", iso.egress)

    def _wrap(self, argv: list[str], env: dict[str, str], uid: int | None, *,
              beside: bool = False) -> list[str]:
        """`argv` in the agent's sandbox, when it has one; one run `beside` it (a check)
        in its own made the same way, without the gateway's socket (whose token is the
        replica's, not the check's)."""
        spec = self.spec
        iso = self._iso
        if iso.sandbox == "none":
            return argv
        network = ("none" if beside and iso.network in ("gateway", "gateways", "held",
                                                        "held-empty")
                   else iso.network)
        argv = [resolve_program(argv[0], env, spec.cwd), *argv[1:]]
        # the SDK where the agent's user may reach it (bwrap binds as that user; one that
        # cannot would not import it outside a sandbox either: it has its own, or none)
        sdk = [SDK] if uid is None or out_of_reach(SDK, uid, _gid_of(uid)) is None else []
        # what the agent may write chooses no bind (issue 88): a link or a pyvenv.cfg
        # there is not followed, nor a path there bound apart (its writable bind holds it;
        # a link the agent made on the way to it chose what was bound: decision 1825)
        cwd = spec.cwd or os.getcwd()
        writable = [cwd, *spec.write_paths]
        # a relative PYTHONPATH entry is the agent's cwd's, as its interpreter reads it
        # (and tenantbinds.py judged it), never the daemon's
        pythonpath = warm_pythonpath(env, spec.cwd) or ""
        read_only = [p for p in (*sdk, *spec.sandbox_paths, *spec.read_paths,
                                 *pythonpath.split(os.pathsep))
                     if p and not agents_own(p, writable)]
        read_only += program_paths(argv[0], writable)
        if spec.release is not None:
            # only a release imports the SDK's copy (release_environment): a plain agent's
            # sandbox binds none, so its user need not reach [packages] dir
            read_only.append(spec.release)
            if self.host.tuning.release_sdk is not None:
                read_only.append(self.host.tuning.release_sdk())
        # its cwd as resolved at this start, inside its tenant's dir still (privilege.py
        # judged it at the add alone; another agent of the tenant writes that dir)
        tenant = self.host.tenant_spec(spec.tenant)
        held = bound_cwd(cwd, tenant.dir if tenant is not None else None)
        return sandboxed(
            argv, program=self.host.tuning.sandbox_program, cwd=cwd, env=env,
            network=network, root=(os.geteuid() if uid is None else uid) == 0,
            read_only=map(str, read_only), gateway_socket=env.get("CORRAL_MCP_SOCKET"),
            protected=self.host.tuning.protected_paths,
            notify_socket=None if beside else self._notify_socket(),
            writable=[*spec.write_paths, *(h for h in (self.run and self.run.home,) if h)],
            relay=self._relay(env),
            seccomp=self._seccomp(beside),
            trips=None if beside else self._trips, cwd_from=held)

    def _seccomp(self, beside: bool) -> str | int | None:
        """The filter bwrap is given: the replica's process's by its descriptor (opened
        by `_filtered`), a check's by its file (a shell opens it)."""
        if self._iso.egress == "any":
            return None
        if not beside and self._filter is not None:
            return self._filter.fileno()
        return egress_file()

    def _relay(self, env: dict[str, str]) -> GatewayRelay | None:
        url, path = env.get("CORRAL_MCP_URL"), self.host.tuning.gateway_relay
        return GatewayRelay(url, path, sys.executable) if url and path else None

    def _notify_socket(self) -> str | None:
        """The $NOTIFY_SOCKET the next process is given, bound into its sandbox (a plain
        program's: plain.py)."""
        return None

    def _measured_pid(self, proc: ChildProcess) -> int | None:
        """A sandboxed agent's own process, not the bwrap around it."""
        if self._iso.sandbox == "none":
            return proc.pid
        known = self._inner
        if known is None or known[0] is not proc:
            inner = sandboxed_pid(proc.pid)
            if inner is None:
                return None
            known = self._inner = (proc, inner)
        return known[1]

    def _exit_status(self, rc: int) -> int:
        return exit_status(rc) if self._iso.sandbox != "none" else rc

    def _make_peer(self, proc: ChildProcess) -> Peer | None:
        return Peer(
            f"{self.kind} {self.label}",
            proc.write,
            send_parts=proc.write_parts,
            dispatch=self._dispatch,
            on_notification=self._on_notification,
            on_garbage=self._on_garbage,
        )

    def exit_message(self, reason: str) -> str:
        return f"worker exited: {reason}"

    async def _handshake(self) -> str:
        assert self.peer is not None
        said = await self.peer.request("initialize", {
            "agent": self.name, "replica": self.index, "protocol_version": PROTOCOL_VERSION,
            "config": self.spec.config, "state": self.host.initial_state(self)},
            timeout=self.spec.start_timeout)
        self.trace_from_id = isinstance(said, dict) and said.get("trace_from_task_id") is True
        return "initialized"

    def _ask_to_stop(self, proc: ChildProcess) -> int:
        if self.peer is not None and self.ready_at is not None and self.peer.closed is None:
            _, fut = self.peer.request_future("shutdown", {})
            fut.add_done_callback(swallow)
        return super()._ask_to_stop(proc)

    def _serving(self) -> None:
        if self.spec.health is not None:
            self.health = ReplicaHealth(self, self.spec.health, self.host.health_board)
        self.host.replica_ready(self)

    def _down(self) -> None:
        self.host.replica_down(self)

    def _stdio(self) -> dict[str, Any]:
        return {**super()._stdio(), "on_stdout_end": self.host.answers_read}

    def _dispatch(self, method: str, params: Any, peer: Peer) -> Any:
        return self.host.worker_request(self, method, params)

    def _on_notification(self, method: str, params: Any, peer: Peer) -> None:
        self.host.worker_notification(self, method, params)

    # -- work -----------------------------------------------------------------------------
    def task_started(self, task_id: str) -> None:
        self.tasks_running += 1
        self.last_task = task_id
        if self.machine.moves(_TASK):  # no reason made for nothing
            self.executor.fire(_TASK, f"task {task_id}")

    def task_finished(self, task_id: str) -> None:
        running = self.tasks_running - 1
        self.tasks_running = running = running if running > 0 else 0
        if running == 0 and self.machine.moves(_DONE):
            self.executor.fire(_DONE, f"task {task_id} done")


# the causes every task's start and end give, as names of this module (an enum's member
# read through its class costs its metaclass's lookup, many times a global's)
_TASK, _DONE = Cause.TASK, Cause.DONE


def _gid_of(uid: int) -> int:
    """A user's primary group (how corral starts its process without a `group`)."""
    import pwd

    try:
        return pwd.getpwuid(uid).pw_gid
    except KeyError:
        return uid
