"""Health checks: readiness gates dispatch, liveness restarts, recovery actions
(docs/elastic.md). `CheckCounter` is the pure part; `ReplicaHealth` runs one replica's
checks for one life; `HealthBoard` acts on a flip and restarts one replica of an agent at
a time, so a failure all replicas share never restarts the whole agent at once.

Command checks and `exec` recoveries run as the agent does (its user, caps and sandbox,
never as corral), in their own process group, killed whole at the end or the timeout.
"""

from __future__ import annotations

import asyncio
import functools
import os
import shlex
import signal
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from enum import Enum
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import msgspec

from ..jsonrpc import LineBlock, RpcError
from ..text import plural
from ..timeouts import kept
from .config import CheckSpec, HealthSpec, ProcessSpec
from .lifecycle import Cause
from .probes import probe_http, probe_tcp
from .process import ChildProcess, Launch
from .stream import Stream

if TYPE_CHECKING:
    from ..jsonrpc import Peer
    from .containment import Containment

READINESS = "readiness"
LIVENESS = "liveness"
DEFAULT_RECOVERY = {READINESS: "drain", LIVENESS: "restart"}
HEALTH_TOPIC = "corral.health"  # the event bus's topic of every check's flip
# containment's kind of a check's process: placed in its agent's tenant's cgroup
CHECK_KIND = "health"
KILL_GRACE = 5.0  # then containment reaps it when it does die
KEEP_OUTPUT = 5  # the last lines of a command's output, for the failure's message
MESSAGE_MAX = 300  # a worker's message beyond this is cut (it goes into reasons, logs)


class Verdict(NamedTuple):
    ok: bool
    message: str = ""


class Flip(Enum):
    PASSED = "passed"  # passing now (enough consecutive passes)
    FAILED = "failed"  # failed now (enough consecutive counted failures)
    FAILING = "failing"  # one more failure while failed: an action held back may go now


class CheckCounter:
    """One check's consecutive outcomes for one life of a replica."""

    __slots__ = ("failures", "failures_needed", "grace_until", "message", "ok", "previous",
                 "successes", "successes_needed")

    def __init__(self, failures: int, successes: int, grace_until: float) -> None:
        self.failures_needed = failures
        self.successes_needed = successes
        self.grace_until = grace_until  # failures before this (start_period) are not counted
        self.ok: bool | None = None  # None: not passed nor failed yet
        self.previous: bool | None = None  # `ok` before the last flip
        self.failures = 0  # consecutive, counted
        self.successes = 0  # consecutive
        self.message = ""  # the last verdict's

    def record(self, v: Verdict, now: float) -> Flip | None:
        self.message = v.message
        if v.ok:
            self.failures = 0
            self.successes += 1
            if self.ok is not True and self.successes >= self.successes_needed:
                self.previous, self.ok = self.ok, True
                return Flip.PASSED
            return None
        self.successes = 0
        if now < self.grace_until:
            return None
        self.failures += 1
        if self.failures < self.failures_needed:
            return None
        if self.ok is False:
            return Flip.FAILING
        self.previous, self.ok = self.ok, False
        return Flip.FAILED


def check_label(kind: str, spec: CheckSpec) -> str:
    """How reasons and events name a check: `liveness check "db"`."""
    if spec.check is not None:
        return f'{kind} check "{spec.check}"'
    if spec.command is not None:
        return f'{kind} check "{shlex.join(spec.command)}"'
    if spec.tcp is not None:
        return f'{kind} check "tcp {spec.tcp}"'
    if spec.http is not None:
        return f'{kind} check "http {spec.http}"'
    return f"{kind} check"


def worker_verdict(fut: asyncio.Future[Any]) -> Verdict:
    """The worker's answer to `health/check` as a verdict (an error answer fails)."""
    if fut.cancelled():
        return Verdict(False, "health/check cancelled")
    exc = fut.exception()
    if exc is not None:
        return Verdict(False, exc.message if isinstance(exc, RpcError) else str(exc))
    raw = fut.result()
    try:
        value = msgspec.json.decode(raw) if isinstance(raw, (bytes, msgspec.Raw)) else raw
    except msgspec.DecodeError:
        value = None
    if not isinstance(value, dict) or not isinstance(value.get("ok"), bool):
        return Verdict(False, "health/check answer has no boolean ok")
    message = value.get("message")
    text = message[:MESSAGE_MAX] if isinstance(message, str) else ""
    return Verdict(value["ok"], text)


async def run_command(argv: list[str], r: CheckedReplica, env: dict[str, str], *,
                      containment: Containment, timeout: float) -> Verdict:
    """Run `argv` as `r`'s own process runs to its end or `timeout`, then kill its process
    group (and cgroup) and reap it: nothing it started is left."""
    tail: deque[str] = deque(maxlen=KEEP_OUTPUT)

    def out(line: bytes) -> None:
        tail.append(line.decode("utf-8", "replace").strip())

    def err(lines: LineBlock) -> None:
        for line in lines.last(KEEP_OUTPUT):
            tail.append(line.decode("utf-8", "replace").strip())

    try:
        proc = await ChildProcess.spawn(
            r.beside(argv, env), containment=containment, kind=CHECK_KIND, name=r.name,
            index=r.index, stop_timeout=timeout, on_stdout_line=out,
            on_stderr_lines=err, on_oversize=lambda *_: None, max_line=64 * 1024)
    except Exception as exc:  # a spawn that failed is a failed check, not corral's error
        return Verdict(False, f"cannot run {argv[0]}: {exc}")
    try:
        proc.close_stdin()
        if not await proc.exited_within(timeout):
            proc.kill_group(signal.SIGKILL)
            await proc.exited_within(KILL_GRACE)
            return Verdict(False, f"no exit within {timeout:g} s: killed with its process "
                                  "group")
        proc.kill_group(signal.SIGKILL)  # what it left in its group
        await proc.output_read()  # its last words explain a failure
        rc = proc.exited.result()
        said = next((t for t in reversed(tail) if t), "")
        if rc == 0:
            return Verdict(True, said[:MESSAGE_MAX])
        return Verdict(False, (f"exit status {rc}" + (f": {said}" if said else ""))
                       [:MESSAGE_MAX])
    finally:
        proc.kill_group(signal.SIGKILL)  # what it left in its group, if it ended first
        containment.ended(proc.token)
        proc.close()


class CheckedReplica(Protocol):
    """The replica a ReplicaHealth checks (replica.Replica)."""

    name: str
    index: int
    pid: int | None
    peer: Peer | None

    @property
    def spec(self) -> ProcessSpec: ...

    def beside(self, argv: list[str], env: dict[str, str]) -> Launch:
        """`argv` prepared as the replica's own process was (user, caps, sandbox)."""
        ...

    def take_down(self, reason: str, *, graceful: bool, cause: Cause = ...) -> None: ...

    def note(self, text: str) -> None: ...


class CheckRun:
    """One check of one life: its spec, counter, timer and the attempt in flight."""

    __slots__ = ("counter", "kind", "label", "recovery", "spec", "task", "timer", "turn")

    def __init__(self, kind: str, spec: CheckSpec, grace_until: float) -> None:
        self.kind = kind
        self.spec = spec
        self.label = check_label(kind, spec)
        self.recovery = spec.recovery or DEFAULT_RECOVERY[kind]
        self.counter = CheckCounter(spec.failures, spec.successes, grace_until)
        self.timer: asyncio.Handle | None = None
        self.task: asyncio.Task[None] | None = None  # a command check running
        self.turn = 0  # attempts begun: a late answer to an earlier one is ignored


class HealthChange(NamedTuple):
    """A check of a replica flipped (passed, failed), and what was done."""

    time: float
    agent: str
    replica: int
    pid: int | None
    check: str  # "readiness" or "liveness"
    label: str  # `liveness check "db"`
    ok: bool
    message: str
    action: str  # "ready", "unready", "restart", "restart held", "drain", "exec", "event"
    text: str  # the sentence logs show


class AgentReadiness(NamedTuple):
    """Every serving replica of an agent is unready (ready=False), or one is ready
    again: once per change, never per tick."""

    time: float
    agent: str
    ready: bool
    text: str


class ReplicaHealth:
    """The checks of one life of one replica."""

    def __init__(self, r: CheckedReplica, spec: HealthSpec, board: HealthBoard) -> None:
        self.r = r
        self.board = board
        grace_until = time.monotonic() + spec.start_period
        self.runs = [CheckRun(kind, c, grace_until) for kind, c in spec.checks()]
        self.closed = False
        self.ready = self._ready_now()
        self.execs: set[asyncio.Task[None]] = set()
        loop = asyncio.get_running_loop()
        for run in self.runs:  # the first check at once: readiness gates the first task
            run.timer = loop.call_soon(self._due, run)

    def _ready_now(self) -> bool:
        for run in self.runs:
            ok = run.counter.ok
            if run.kind == READINESS and ok is not True:
                return False
            if run.recovery == "drain" and ok is False:
                return False
        return True

    @property
    def reason(self) -> str | None:
        """Why the replica is unready or failing a check, or None when all pass."""
        for run in self.runs:
            c = run.counter
            if c.ok is False:
                return f"{run.label} failed: {c.message}" if c.message else \
                    f"{run.label} failed"
            if run.kind == READINESS and c.ok is None:
                return f"{run.label} not passed yet" + (f": {c.message}" if c.message
                                                        else "")
        return None

    def close(self) -> None:
        """The life is over (or leaving serving); a command running is killed with its
        group (its task's clean-up)."""
        if self.closed:
            return
        self.closed = True
        for run in self.runs:
            if run.timer is not None:
                run.timer.cancel()
                run.timer = None
            if run.task is not None:
                run.task.cancel()
                run.task = None
            run.turn += 1
        for task in self.execs:  # bounded by its timeout, but not past the life
            task.cancel()

    # -- one attempt ----------------------------------------------------------------------
    def _due(self, run: CheckRun) -> None:
        run.timer = None
        if self.closed:
            return
        run.turn += 1
        turn = run.turn
        spec = run.spec
        if spec.probe:
            run.task = asyncio.ensure_future(self._probe(run, turn))
            return
        peer = self.r.peer
        if peer is None:  # (not while it serves) looked at again next interval
            self._done(run, Verdict(False, "no channel to the worker"))
            return
        rid, fut = peer.request_future("health/check",
                                       {"name": spec.check} if spec.check else {})
        run.timer = asyncio.get_running_loop().call_later(
            spec.timeout, self._unanswered, run, turn, peer, rid)
        fut.add_done_callback(functools.partial(self._answered, run, turn))

    def _answered(self, run: CheckRun, turn: int, fut: asyncio.Future[Any]) -> None:
        v = worker_verdict(fut)
        if self.closed or turn != run.turn:
            return
        if run.timer is not None:
            run.timer.cancel()
            run.timer = None
        self._done(run, v)

    def _unanswered(self, run: CheckRun, turn: int, peer: Peer, rid: Any) -> None:
        run.timer = None
        if self.closed or turn != run.turn:
            return
        run.turn += 1  # its answer, if it comes, is too late
        peer.forget(rid)
        self._done(run, Verdict(False, f"no answer to health/check within "
                                       f"{run.spec.timeout:g} s"))

    async def _probe(self, run: CheckRun, turn: int) -> None:
        spec = run.spec
        if spec.command is not None:
            v = await run_command(spec.command, self.r, environment_of(self.r),
                                  containment=self.board.containment, timeout=spec.timeout)
        else:
            if spec.tcp is not None:
                ok, said = await probe_tcp(spec.tcp, spec.timeout)
            else:
                assert spec.http is not None
                ok, said = await probe_http(spec.http, spec.timeout)
            v = Verdict(ok, said[:MESSAGE_MAX])
        if self.closed or turn != run.turn:
            return
        run.task = None
        self._done(run, v)

    def _done(self, run: CheckRun, v: Verdict) -> None:
        flip = run.counter.record(v, time.monotonic())
        self.board.checked(self, run, v, flip)
        if not self.closed and run.timer is None:
            run.timer = asyncio.get_running_loop().call_later(run.spec.interval, self._due,
                                                              run)


class BoardAgent(Protocol):
    """An agent as the board sees it: the replicas holding its places now."""

    @property
    def replicas(self) -> Sequence[Any]: ...


class HealthBoard:
    """The supervisor's side of health: actions, counts, the agent-wide event."""

    def __init__(self, stream: Stream, containment: Containment,
                 agents: Mapping[str, BoardAgent], readiness_changed: Callable[[Any], None],
                 publish: Callable[[str, Any], None]) -> None:
        self.stream = stream
        self.containment = containment
        self.agents = agents  # whose replicas hold each agent's places now
        self.readiness_changed = readiness_changed  # its agent's queue is pumped
        self.publish = publish  # on the event bus
        # failed checks (every failure, counted or not) by (agent, check kind)
        self.failures: Counter[tuple[str, str]] = Counter()
        self.unready_agents: set[str] = set()  # the all-unready event is raised for these
        # replicas taken down for their health whose new life is not ready yet, by agent
        self.restarting: dict[str, set[Any]] = {}
        self.exec_runs = 0  # exec recoveries begun (for tests and stats)
        self.checks = 0  # checks ended, in all (bench/bench_health.py)

    def checked(self, h: ReplicaHealth, run: CheckRun, v: Verdict, flip: Flip | None
                ) -> None:
        r = h.r
        self.checks += 1
        if not v.ok:
            self.failures[r.name, run.kind] += 1
        if flip is None:
            return
        was = h.ready
        h.ready = h._ready_now()
        if flip is Flip.PASSED:
            text = f"{run.label} passed" + (f": {v.message}" if v.message else "")
            if h.ready and not was:
                self._emit(h, run, v, "ready", f"{text}; ready for tasks")
            elif run.counter.previous is False:  # (a first pass changing nothing: quiet)
                self._emit(h, run, v, "passed", text)
        elif self._recover(h, run, v, flip) is None:
            return
        if h.ready != was:
            self.readiness_changed(r)
        self.look_at(r.name)

    def _recover(self, h: ReplicaHealth, run: CheckRun, v: Verdict, flip: Flip
                 ) -> str | None:
        """The recovery of a failed check; the action taken (None: nothing new)."""
        r = h.r
        failed = (f"{run.label} failed {plural(run.counter.failures, 'time')}"
                  + (f": {v.message}" if v.message else ""))
        how = run.recovery
        if how == "restart":
            held = self._restart_held(r)
            if held is not None:
                if flip is Flip.FAILED:
                    self._emit(h, run, v, "restart held",
                               f"{failed}; restart held: {held} is restarting for its "
                               "health already")
                return "restart held" if flip is Flip.FAILED else None
            self.restarting.setdefault(r.name, set()).add(r)
            self._emit(h, run, v, "restart", f"{failed}; restarting")
            r.take_down(failed, graceful=True, cause=Cause.UNHEALTHY)
            return "restart"
        if flip is Flip.FAILING:
            return None
        if how == "exec":
            assert run.spec.exec is not None
            self._exec(h, run, run.spec.exec)
            self._emit(h, run, v, "exec", f"{failed}; running {shlex.join(run.spec.exec)}")
        elif how == "drain":
            self._emit(h, run, v, "unready" if not h.ready else "drain",
                       f"{failed}; no new tasks until it passes")
        else:
            self._emit(h, run, v, "event", failed)
        return how

    def _restart_held(self, r: Any) -> str | None:
        """The label of another replica of r's agent restarting for its health (whose new
        life is not ready yet), or None: one at a time."""
        others = self.restarting.get(r.name)
        if not others:
            return None
        places = self._places(r.name)
        for o in list(others):
            h = getattr(o, "health", None)
            # an operator's pause ends the wait too: a frozen replica may stay so for
            # ever, and its siblings' liveness must not be held that long
            m = o.machine
            done = (o not in places or m.failed or m.paused or m.stopped_by_hand
                    or (m.takes_work and (h is None or h.ready)))
            if done:
                others.discard(o)
        if not others:
            del self.restarting[r.name]
            return None
        other = next((o for o in others if o is not r), None)
        return other.label if other is not None else None

    def _exec(self, h: ReplicaHealth, run: CheckRun, argv: list[str]) -> None:
        r = h.r
        env = environment_of(r)
        env["CORRAL_CHECK"] = run.kind
        env["CORRAL_CHECK_MESSAGE"] = run.counter.message
        self.exec_runs += 1

        async def go() -> None:
            v = await run_command(argv, r, env, containment=self.containment,
                                  timeout=run.spec.timeout)
            r.note(f"recovery {shlex.join(argv)}: "
                   + ("done" if v.ok else "failed") + (f": {v.message}" if v.message
                                                       else ""))

        kept(h.execs, asyncio.ensure_future(go()))

    def _emit(self, h: ReplicaHealth, run: CheckRun, v: Verdict, action: str,
              text: str) -> None:
        r = h.r
        self.stream.emit(HealthChange(time.time(), r.name, r.index, r.pid, run.kind,
                                           run.label, v.ok, v.message, action, text))
        self.publish(HEALTH_TOPIC, {"agent": r.name, "replica": r.index, "pid": r.pid,
                                         "check": run.kind, "ok": v.ok, "action": action,
                                         "message": v.message, "text": text})

    def look_at(self, agent: str) -> None:
        """Raise (or end) the agent-wide event: every serving replica unready."""
        places = self._places(agent)
        serving = [r for r in places
                   if r.machine.takes_work and getattr(r, "health", None) is not None]
        if not serving:
            self.unready_agents.discard(agent)
            return
        unready = all(not r.health.ready for r in serving)
        if unready and agent not in self.unready_agents:
            self.unready_agents.add(agent)
            self.stream.emit(AgentReadiness(
                time.time(), agent, False,
                f"every replica of {agent} is unready ({len(serving)} serving of "
                f"{len(places)}); its tasks wait in the queue"))
        elif not unready and agent in self.unready_agents:
            self.unready_agents.discard(agent)
            self.stream.emit(AgentReadiness(time.time(), agent, True,
                                                 f"{agent} has a ready replica again"))

    def _places(self, agent: str) -> Sequence[Any]:
        a = self.agents.get(agent)
        return a.replicas if a is not None else []

    def forget(self, agent: str) -> None:
        self.unready_agents.discard(agent)
        self.restarting.pop(agent, None)
        for key in [k for k in self.failures if k[0] == agent]:
            del self.failures[key]


def environment_of(r: CheckedReplica) -> dict[str, str]:
    """A check's environment: corral's, the agent's `env`, and who it checks."""
    env = dict(os.environ)
    env.update(r.spec.env)
    env["CORRAL_AGENT"] = r.name
    env["CORRAL_REPLICA"] = str(r.index)
    env["CORRAL_PID"] = str(r.pid or "")
    return env

