"""Soak (issue 52, item 5): days of a multi-tenant daemon's use in minutes, watched for
growth and for one tenant's records reaching the other.

One real `corral daemon` in a temporary directory serves two tenants, acme and globex,
each through a token of its own on the HTTP API. Each tenant, in a thread of its own,
churns without pause: it takes an agent name from a pool both share (chat0..chat2, so a
name one tenant freed is soon the other's), adds its agent under it, runs tasks on it
(plain ones, turns of session s1, named steps, a spawn tree, one that asks it a question
it answers through the inbox, one whose worker crashes, one its timeout caps), scales it
to two replicas and back, adds a workflow and a team under names both reuse too, runs
the workflow and calls the team, reads a trace, and goes to corral's edges (issue 88,
bench/soak_edges.py: every other round's agent runs under `egress = "gateways"` and
tries to connect out, each try refused and counted; tool calls through the MCP gateway
that the operator's policy allows, denies and holds for the tenant's approval; A2A
sends, streams abandoned, subscriptions and pushes to a receiver), then removes all
three. The config
file's schedules fire a task of each tenant's own agent every few seconds. The operator,
between the tenants' rounds, reloads the config (the schedules' clocks and the base
agents' environment changed), restarts the daemon and upgrades it (`corral upgrade`) at
set points.

Meanwhile the gauges (bench/soak_fit.py) are read every INTERVAL s: the daemon's RSS,
open fds and threads, the state database's and the trace store's bytes; each gauge's
least-squares slope per hour, past the first minutes, is set against its bound. After
each of its rounds a tenant reads its views (tasks, runs, team calls, sessions, traces,
steps, definitions and their history, schedules, logs) and asks for some of the other
tenant's ids directly (tasks, runs, asks): bench/soak_views.py notes every record of the
other tenant seen; right after each restart and upgrade, before any round, each tenant
looks too (what the new life read back), its sightings counted apart. The stores are
bounded small (`journal_max_tasks`, `audit_max_rows`, `keep_spans`, `log_max_bytes`,
`event_ring`: --kept) so that minutes of churn take them to their bound, as days would
with the defaults.

    .venv/bin/python -m bench.soak [--minutes 20] [--warmup 120] [--interval 2]
        [--restarts 2] [--upgrades 1] [--reload-every 120] [--kept 300] [--event-ring N]
        [--pause 0.25] [--max-slope GAUGE=PER_HOUR ...] [--json PATH] [--keep-dir]
        [--fresh-names] [--wrap COMMAND]

Prints a table (with the RSS at each minute, its slope over the second half, and the
state and log directories' bytes on disk); exit status 0 when every slope is within its
bound, nothing was sighted and nothing left at shutdown, 1 on a slope past its bound, any
sighting, a process of the daemon's alive after its stop, a directory past its bound or a
push to the wrong tenant, 2 when the soak itself failed (the daemon did not start, a
tenant's work kept failing).
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from corral.cli.client import CallFailed, Client, Unreachable

from .harness import BIN, ENV, PY, ROOT, CorralDaemon, free_port, workdir
from .soak_edges import POLICY, A2a, Edges, EdgeWork, Metrics, Receiver
from .soak_fit import GAUGES, Sample, Sampler, Slope, fit, orphans
from .soak_views import Ledger, Watch

T = TypeVar("T")
AGENT = ROOT / "bench" / "soak_agent.py"
TENANTS = ("acme", "globex")
NAMES = ("chat0", "chat1", "chat2")  # the agent names both tenants take in turn
SCOPES = ("agents:read", "agents:write", "tasks:run", "tasks:read", "logs:read", "approvals",
          "events")
WAIT = 60  # seconds a task or a run is waited for over HTTP
ENDED = ("succeeded", "failed", "cancelled", "timed_out", "lost")  # a task's last statuses
UPGRADE_TRIES = 3  # a refused upgrade is tried again, as its refusal invites
STOP_WAIT = 120  # seconds the daemon's stop may take (its teardown's own bounds are less)
# the default bounds of the gauges' slopes, per hour, for the 20-minute soak: each above
# what a flat daemon measured here and below a leak worth a day's notice (bench/RESULTS.md)
GAUGE_OF = {g.key: g for g in GAUGES}
BOUNDS = {"rss_mib": 40.0, "fds": 60.0, "threads": 20.0, "state_db_mib": 8.0,
          "trace_store_mib": 8.0}


@dataclass(frozen=True)
class Plan:
    """The soak's shape (its command line)."""

    minutes: float
    warmup: float  # seconds of each life of the daemon its gauges are not fitted over
    interval: float  # seconds between two readings of the gauges
    restarts: int
    upgrades: int
    reload_every: float  # seconds between two reloads of the config
    kept: int  # journal_max_tasks, keep_tasks, log_tail_lines; the trace store: 4 spans each
    pause: float  # seconds a tenant waits between two rounds
    bounds: dict[str, float]
    # a command the daemon is run under (a memory profiler's: `heaptrack -o FILE`)
    wrap: tuple[str, ...] = ()
    event_ring: int = 0  # [http] event_ring (0: kept * 4, filled within the warm-up)
    fresh_names: bool = False  # each round's agent under a name never used before

    def events(self) -> list[tuple[float, str]]:
        """When (seconds from the start) the operator does what: the restarts and the
        upgrades spread evenly, alternating, and the reloads between them."""
        points = self.restarts + self.upgrades
        kinds = ["restart"] * self.restarts
        for i in range(self.upgrades):  # an upgrade after each restart, in turn
            kinds.insert(min(len(kinds), 2 * i + 1), "upgrade")
        span = self.minutes * 60
        marks = [(span * (i + 1) / (points + 1), k) for i, k in enumerate(kinds)]
        t = self.reload_every
        while self.reload_every > 0 and t < span - 5:
            if all(abs(t - at) > 10 for at, _ in marks):
                marks.append((t, "reload"))
            t += self.reload_every
        return sorted(marks)


# -- one tenant's HTTP client --------------------------------------------------------------
class Api:
    """A tenant's keep-alive connection to the HTTP API, as its token."""

    def __init__(self, port: int, token: str) -> None:
        self.port = port
        self.headers = {"Authorization": f"Bearer {token}",
                        "Content-Type": "application/json"}
        self.conn: http.client.HTTPConnection | None = None

    def call(self, verb: str, path: str, body: Any = None) -> tuple[int, Any]:
        """(status, decoded body); a connection the server closed is made again once."""
        data = None if body is None else json.dumps(body).encode()
        for again in (True, False):
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=WAIT + 30)
            try:
                self.conn.request(verb, "/api/v1" + path, body=data, headers=self.headers)
                r = self.conn.getresponse()
                raw = r.read()
            except (http.client.HTTPException, OSError):
                self.close()
                if again:
                    continue
                raise
            return r.status, (json.loads(raw) if raw else None)
        raise AssertionError("unreachable")  # pragma: no cover

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


# -- the operator's hold on the tenants ---------------------------------------------------------
class Gate:
    """Tenants' rounds pass while it is open; the operator closes it (and waits for the
    rounds under way to end) to restart, upgrade or reload."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._open = True
        self._inside = 0

    @contextmanager
    def round(self) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: self._open)
            self._inside += 1
        try:
            yield
        finally:
            with self._cond:
                self._inside -= 1
                self._cond.notify_all()

    @contextmanager
    def closed(self) -> Iterator[None]:
        with self._cond:
            self._open = False
            self._cond.wait_for(lambda: self._inside == 0)
        try:
            yield
        finally:
            with self._cond:
                self._open = True
                self._cond.notify_all()


class NamePool:
    """Who holds each shared name now, who held it last, and how often a name one tenant
    freed was next taken by the other. A tenant takes a free name the other held last
    where there is one: a name crossing between tenants is what the soak is to try, and
    taken at random it crossed on about half the takes, too few for the suite's short run
    on a loaded host.

    With `fresh`, each take of a slot is a name never used before (`chat0-17`): a fleet
    whose agents are made per job, where what the daemon keeps per name and never
    forgets grows with the rounds (issue 90), which reused names cannot show."""

    def __init__(self, fresh: bool = False) -> None:
        self._lock = threading.Lock()
        self.fresh = fresh
        self.holder: dict[str, str | None] = dict.fromkeys(NAMES)
        self.last: dict[str, str | None] = dict.fromkeys(NAMES)
        self.current = {n: n for n in NAMES}  # each slot's name now (fresh: its latest)
        self.taken = 0
        self.crossed = 0

    def take(self, tenant: str, rng: random.Random) -> str | None:
        with self._lock:
            free = [n for n, h in self.holder.items() if h is None]
            if not free:
                return None
            theirs = [n for n in free if self.last[n] not in (None, tenant)]
            slot = rng.choice(theirs or free)
            self.holder[slot] = tenant
            if self.last[slot] not in (None, tenant):
                self.crossed += 1
            self.taken += 1
            if self.fresh:
                self.current[slot] = f"{slot}-{self.taken}"
            return self.current[slot]

    def give_back(self, name: str, tenant: str) -> None:
        with self._lock:
            slot = name.partition("-")[0]
            self.holder[slot] = None
            self.last[slot] = tenant

    def names(self) -> list[str]:
        with self._lock:
            return list(self.current.values())


@dataclass
class Work:
    """What one tenant did, and what failed (the first of each kind kept)."""

    rounds: int = 0
    tasks: int = 0
    turns: int = 0
    runs: int = 0
    team_calls: int = 0
    spawns: int = 0
    asks: int = 0  # questions its tasks asked and it answered through the inbox
    crashes: int = 0  # tasks whose worker exited under them
    caps: int = 0  # tasks ended by their timeout
    scales: int = 0
    agents_added: int = 0
    failures: int = 0
    first_failures: dict[str, str] = field(default_factory=dict)


class Tenant(threading.Thread):
    """One tenant's churn: a round after another, each followed by a look at its views."""

    def __init__(self, ledger: Ledger, api: Api, watch: Watch, gate: Gate,
                 names: NamePool, seed: int, pause: float, a2a: A2a, metrics: Metrics,
                 receiver: Receiver, home: Path) -> None:
        super().__init__(name=f"soak-{ledger.tenant}", daemon=True)
        self.ledger = ledger
        self.name_ = ledger.tenant
        self.api = api
        self.watch = watch
        self.gate = gate
        self.names = names
        self.rng = random.Random(seed)
        self.pause = pause
        self.work = Work()
        self.edges = EdgeWork()
        self.home = home  # its agents' directories, one a name (a sandbox's cwd its own)
        self.edge = Edges(self, a2a, metrics, receiver, closed_port=free_port())
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            with self.gate.round():
                if self.halt.is_set():
                    break
                try:
                    self.one_round()
                except (OSError, http.client.HTTPException) as exc:
                    # when, to be matched with the daemon's log and the events' times
                    self.failed("connection", f"{exc!r} at {time.strftime('%H:%M:%S')}"
                                              f".{int(time.time() * 1000) % 1000:03d} UTC")
                self.work.rounds += 1
            # a breath between rounds: the machine the soak runs on has other work
            self.halt.wait(self.pause)
        self.api.close()

    # -- what it does -------------------------------------------------------------------
    def one_round(self) -> None:
        name = self.names.take(self.name_, self.rng)
        if name is None:
            self.task(f"{self.name_}-base", {"do": "hello"})
            self.look()
            return
        # every other round's agent in the egress sandbox (its tries out refused)
        sandboxed = self.work.rounds % 2 == 1
        try:
            status, body = self.ask("POST", "/agents", {"agents": {
                name: self.spec(name, sandboxed)}})
            if status != 200:
                self.failed("agents.add", f"{status} {body}")
                return
            self.work.agents_added += 1
            for _ in range(3):
                self.task(name, {"do": "hello"})
            for _ in range(2):
                self.task(name, {"do": "turn"}, session="s1")
                self.work.turns += 1
            self.task(name, {"do": "steps", "n": 3})
            spawned = self.task(name, {"do": "spawn", "n": 2})
            if spawned is not None:
                self.ledger.keep("task", (spawned.get("output") or {}).get("children", []))
                self.work.spawns += 1
            self.asked(name)
            self.ended_badly(name, {"do": "crash"}, ("failed", "lost"), "crashes")
            self.ended_badly(name, {"do": "sleep", "seconds": 5}, ("timed_out",), "caps",
                             timeout=0.5)
            self.scaled(name)
            self.workflow(name)
            last = self.team(name)
            if last is not None:
                self.ask("GET", f"/tasks/{last}/trace")
            self.edge.run(name, sandboxed)
            # what a tenant is shown of a name depends on whether it holds it: look while
            # it does (what an earlier holder left would show now) ...
            self.look()
        finally:
            for path in (f"/workflows/wf-{name}", f"/teams/team-{name}", f"/agents/{name}"):
                self.ask("DELETE", path)
            self.names.give_back(name, self.name_)
        self.look()  # ... and once it holds it no longer

    def spec(self, name: str, sandboxed: bool) -> dict[str, Any]:
        # (corral is installed in the venv: no PYTHONPATH, which a tenant may not send)
        cwd = self.home / name
        cwd.mkdir(parents=True, exist_ok=True)
        return {"command": [PY, str(AGENT)], "config": {"owner": self.ledger.mark},
                "cwd": str(cwd),
                "spawns": [name], "max_concurrent_tasks": 4, "stop_timeout": 5,
                "tools": ["notes__*"]} | ({"egress": "gateways"} if sandboxed else {})

    def task(self, agent: str, task_input: dict[str, Any], session: str | None = None
             ) -> dict[str, Any] | None:
        """Run a task and wait for it; its outcome, None if it did not succeed."""
        body: dict[str, Any] = {"agent": agent, "input": task_input | {"mark": self.ledger.mark}}
        if session is not None:
            body["session"] = session
        status, out = self.ask("POST", f"/tasks?wait={WAIT}", body)
        if isinstance(out, dict) and "task_id" in out:
            self.ledger.keep("task", [out["task_id"]])
            self.work.tasks += 1
        if status != 200 or out.get("status") != "succeeded":
            self.failed(f"task {task_input.get('do')}", f"{status} {str(out)[:300]}")
            return None
        return out  # type: ignore[no-any-return]

    def asked(self, name: str) -> None:
        """A task that asks its tenant a question (its mark in the prompt), answered
        through the inbox; the ask's id kept for the other tenant to probe."""
        mark = self.ledger.mark
        status, out = self.ask("POST", "/tasks", {"agent": name,
                                                  "input": {"do": "ask", "mark": mark}})
        if not isinstance(out, dict) or "task_id" not in out:
            self.failed("task ask", f"{status} {str(out)[:300]}")
            return
        tid = str(out["task_id"])
        self.ledger.keep("task", [tid])
        self.work.tasks += 1
        asked = self.until(lambda: next((a["id"] for a in self.ask("GET", "/approvals")[1]
                                         .get("asks", []) if a["task_id"] == tid), None))
        if asked is None:
            if not self.halt.is_set():  # (the soak's end does not wait for it)
                self.failed("ask", f"task {tid} asked nothing within {WAIT} s")
            return
        self.ledger.keep("ask", [asked])
        status, body = self.ask("POST", f"/approvals/{asked}/resolve",
                                {"decision": "answered", "answer": mark})
        if status != 200:
            self.failed("approvals.resolve", f"{status} {str(body)[:300]}")
            return
        done = self.ended(tid)
        if done is None and self.halt.is_set():
            return
        if done is None or done.get("status") != "succeeded" or \
                (done.get("output") or {}).get("answer") != mark:
            self.failed("task ask", str(done)[:300])
            return
        self.work.asks += 1

    def ended_badly(self, name: str, task_input: dict[str, Any], statuses: tuple[str, ...],
                    count: str, timeout: float | None = None) -> None:
        """A task that is to end in one of `statuses` (its worker crashed, its timeout
        capped it); `count` the Work field it adds one to."""
        body: dict[str, Any] = {"agent": name, "input": task_input | {"mark": self.ledger.mark}}
        if timeout is not None:
            body["timeout"] = timeout
        code, out = self.ask("POST", f"/tasks?wait={WAIT}", body)
        if isinstance(out, dict) and "task_id" in out:
            self.ledger.keep("task", [out["task_id"]])
            self.work.tasks += 1
        if not isinstance(out, dict) or out.get("status") not in statuses:
            self.failed(f"task {task_input['do']}", f"{code} {str(out)[:300]}")
            return
        setattr(self.work, count, getattr(self.work, count) + 1)

    def scaled(self, name: str) -> None:
        """Two replicas, then one again."""
        for n in (2, 1):
            status, body = self.ask("POST", f"/agents/{name}/scale", {"replicas": n})
            if status != 200:
                self.failed("agents.scale", f"{status} {str(body)[:300]}")
                return
        self.work.scales += 1

    def ended(self, tid: str) -> dict[str, Any] | None:
        """The task once it has ended (None: not within WAIT)."""
        def last() -> dict[str, Any] | None:
            out = self.ask("GET", f"/tasks/{tid}")[1]
            return out if isinstance(out, dict) and out.get("status") in ENDED else None
        return self.until(last)

    def until(self, look: Callable[[], T | None]) -> T | None:
        """What `look()` answers once it is not None, asked every 0.1 s (None: not
        within WAIT, or the soak ending)."""
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            got = look()
            if got is not None:
                return got
            if self.halt.wait(0.1):
                break
        return None

    def workflow(self, name: str) -> None:
        mark = self.ledger.mark
        steps = [{"name": "first", "agent": name, "input": {"do": "hello", "mark": mark}},
                 {"name": "each", "agent": name, "map": "$input.items",
                  "input": {"do": "hello", "mark": mark, "item": "$item"}}]
        status, body = self.ask("POST", "/workflows", {"workflows": {
            f"wf-{name}": {"description": f"of {mark}", "steps": steps}}})
        if status != 200:
            self.failed("workflows.add", f"{status} {body}")
            return
        status, run = self.ask("POST", f"/workflows/wf-{name}/runs?wait={WAIT}",
                               {"input": {"items": [1, 2], "mark": mark}})
        if isinstance(run, dict) and "run_id" in run:
            self.ledger.keep("run", [run["run_id"]])
            self.ledger.keep("task", [s["task_id"] for s in run.get("steps", [])
                                      if s.get("task_id")])
            self.work.runs += 1
        if status != 200 or run.get("status") != "succeeded":
            self.failed("workflows.run", f"{status} {str(run)[:300]}")

    def team(self, name: str) -> str | None:
        """Add a team of the agent and call it; the call's task id."""
        status, body = self.ask("POST", "/teams", {"teams": {f"team-{name}": {
            "description": f"of {self.ledger.mark}", "mode": "broadcast",
            "members": [name]}}})
        if status != 200:
            self.failed("teams.add", f"{status} {body}")
            return None
        out = self.task(f"team-{name}", {"do": "hello"})
        if out is None:
            return None
        self.work.team_calls += 1
        members = (out.get("output") or {}).values()
        self.ledger.keep("task", [m["task_id"] for m in members
                                  if isinstance(m, dict) and m.get("task_id")])
        return str(out["task_id"])

    # -- what it sees -------------------------------------------------------------------
    def look(self) -> None:
        """Read every view a tenant has of the daemon's records; ask for a few of the
        other tenant's by id."""
        paths = ["/agents", "/tasks?limit=100", "/runs?limit=100", "/sessions",
                 "/workflows", "/teams", "/schedules", "/approvals"]
        for n in self.names.names():
            paths += [f"/tasks?agent={n}&limit=100", f"/agents/{n}", f"/agents/{n}/history",
                      f"/agents/{n}/logs", f"/agents/{n}/sessions/s1",
                      f"/workflows/wf-{n}", f"/workflows/wf-{n}/history",
                      f"/teams/team-{n}", f"/teams/team-{n}/history", f"/runs?workflow=wf-{n}"]
        for tid in self.ledger.sample("task", 3, self.rng):
            paths += [f"/tasks/{tid}?input=true", f"/tasks/{tid}/trace"]
        paths += [f"/runs/{rid}" for rid in self.ledger.sample("run", 2, self.rng)]
        for path in paths:
            self.ask("GET", path)
        for other in self.watch.others(self.name_):
            for tid in other.sample("task", 6, self.rng):
                for path in (f"/tasks/{tid}", f"/tasks/{tid}/trace"):
                    self.watch.probed(self.name_, path, self.api.call("GET", path)[0])
            for rid in other.sample("run", 3, self.rng):
                path = f"/runs/{rid}"
                self.watch.probed(self.name_, path, self.api.call("GET", path)[0])
            for aid in other.sample("ask", 3, self.rng):
                path = f"/approvals/{aid}"
                self.watch.probed(self.name_, path, self.api.call("GET", path)[0])

    def ask(self, verb: str, path: str, body: Any = None) -> tuple[int, Any]:
        """A request of this tenant's; whatever it is answered is looked at."""
        status, out = self.api.call(verb, path, body)
        self.watch.scan(self.name_, f"{verb} {path}", out)
        return status, out

    def failed(self, what: str, why: str) -> None:
        self.work.failures += 1
        self.work.first_failures.setdefault(what, why)


def said(r: subprocess.CompletedProcess[str]) -> str:
    """What a failed command said: with --json its report (a refusal's reason) is on
    stdout, and stderr is empty."""
    return " ".join(x.strip() for x in (r.stderr, r.stdout) if x.strip())


# -- the daemon and its operator -------------------------------------------------------------
class SoakDaemon:
    """The one daemon of the soak (bench/harness.py's), restarted, upgraded and reloaded
    in place; which life of it runs now, for the sampler."""

    def __init__(self, d: Path, port: int, kept: int, marks: dict[str, str],
                 wrap: tuple[str, ...] = (), event_ring: int = 0) -> None:
        self.port = port
        launcher = [*wrap, str(BIN / "corral"), "daemon"] if wrap else None
        self.daemon = CorralDaemon(d, base_agents(marks),
                                   extra=supervisor_extra(port, kept, free_port(),
                                                          d / "homes", event_ring),
                                   launcher=launcher)
        self.state_dir = d / "state"
        for t in TENANTS:
            (d / "homes" / t).mkdir(parents=True, exist_ok=True)
        self.life = -1
        self.began = 0.0
        self.busy = True
        self.generation = 0

    def where(self) -> tuple[int, int, float] | None:
        proc = self.daemon.proc
        if self.busy or proc is None or proc.poll() is not None:
            return None
        return proc.pid, self.life, self.began

    def _new_life(self) -> None:
        self.life += 1
        self.began = time.monotonic()
        self.busy = False

    def start(self) -> None:
        # a READY=1 left from an earlier life (an upgrade's new image sends one) is stale
        sock = self.daemon.notify
        sock.setblocking(False)
        try:
            while True:
                sock.recv(4096)
        except BlockingIOError:
            pass
        sock.setblocking(True)
        self.daemon.start()
        self._new_life()

    def restart(self) -> None:
        self.busy = True
        if not self.stopped():
            raise SoakFailed(f"the daemon did not stop within {STOP_WAIT} s of SIGTERM")
        self.start()

    def stopped(self) -> bool:
        """SIGTERM, and whether the daemon exited within STOP_WAIT; if not, it is asked
        for its stacks (SIGUSR1, decision 517), the end of its log printed (where its
        stop stuck, for the report), and killed."""
        proc = self.daemon.proc
        if proc is None or proc.poll() is not None:
            return True
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_WAIT)
            return True
        except subprocess.TimeoutExpired:
            pass
        proc.send_signal(signal.SIGUSR1)
        time.sleep(2)  # the dump is written on the daemon's loop; nothing to wait on
        log = self.daemon.dir / "logs" / "corral.log"
        tail = log.read_text(errors="replace").splitlines()[-120:] if log.exists() else []
        print("[soak] the daemon did not stop; the end of its log:", *tail, sep="\n",
              file=sys.stderr, flush=True)
        proc.kill()
        proc.wait()
        return False

    def upgrade(self) -> None:
        self.busy = True
        for _ in range(UPGRADE_TRIES):
            r = self.cli("upgrade", "--json", timeout=300)
            if r.returncode == 0:
                break
            # a refusal changed nothing and says to try again (a replica still starting
            # after the last reload's restarts, on a busy host): as an operator would
            if '"refused"' not in r.stdout:
                break
            print(f"[soak] upgrade refused, tried again: {said(r)}", file=sys.stderr,
                  flush=True)
        if r.returncode != 0:
            raise SoakFailed(f"corral upgrade exited {r.returncode}: {said(r)}")
        self._new_life()

    def reload(self) -> None:
        """Change the schedules' clocks and the base agents' environment, and reload."""
        self.generation += 1
        every = ("2s", "3s")[self.generation % 2]
        text = self.daemon.config.read_text()
        text = re.sub(r'every = "\d+s"', f'every = "{every}"', text)
        text = re.sub(r'SOAK_GENERATION = "\d+"', f'SOAK_GENERATION = "{self.generation}"',
                      text)
        self.daemon.config.write_text(text)
        r = self.cli("reload", "--json")
        if r.returncode != 0:
            raise SoakFailed(f"corral reload exited {r.returncode}: {said(r)}")

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run([PY, "-m", "corral", "--socket", str(self.daemon.sock), *args],
                              capture_output=True, text=True, timeout=timeout, env=ENV)

    def token(self, tenant: str | None) -> str:
        """A tenant's token (its SCOPES), or the operator's (None: /metrics alone)."""
        scopes = [a for s in SCOPES for a in ("--scope", s)] if tenant else [
            "--scope", "metrics:read"]
        whose = ["--tenant", tenant] if tenant else []
        r = self.cli("token", "create", tenant or "operator", *whose, *scopes, "--json")
        if r.returncode != 0:
            raise SoakFailed(f"corral token create exited {r.returncode}: {r.stderr}")
        return str(json.loads(r.stdout)["token"])

    def schedule_tasks(self, ledgers: dict[str, Ledger]) -> None:
        """The tasks the schedules fired for each tenant's own agent, as the operator
        lists them on the control socket: that tenant's."""
        try:
            with Client(self.daemon.sock) as c:
                for tenant, ledger in ledgers.items():
                    page = c.call("tasks.list", {"agent": f"{tenant}-base", "limit": 500})
                    ledger.keep("task", [t["task_id"] for t in page["tasks"]])
        except (Unreachable, CallFailed, OSError):
            pass  # a moment the daemon is not there: the next look takes them

    def stop(self) -> bool:
        """Whether the daemon stopped within STOP_WAIT (else it was killed)."""
        self.busy = True
        clean = self.stopped()
        self.daemon.notify.close()
        return clean


class SoakFailed(Exception):
    """The soak could not do what it measures."""


def supervisor_extra(port: int, kept: int, gateway: int, homes: Path, event_ring: int = 0
                     ) -> str:
    """The [supervisor] keys after the harness's, and the daemon's other tables (each
    tenant's agents in a directory of its own: an egress sandbox's cwd is its agent's)."""
    tenants = "".join(f'\n[tenants.{t}]\nmax_agents = 4\ndir = "{homes / t}"\n'
                      for t in TENANTS)
    return textwrap.dedent(f"""
        drain_timeout = 2
        journal_max_tasks = {kept}
        keep_tasks = {kept}
        log_tail_lines = {kept}
        audit_max_rows = {kept * 10}
        # each log file's bound (its size, its copies) reached within the warm-up, as days
        # would reach the default's 10 MiB and 5 copies
        log_max_bytes = {kept * 1024}
        log_backups = 2

        [http]
        listen = "127.0.0.1:{port}"
        rate_per_minute = 0
        # the metrics history's raw samples and minute roll-ups reach their bound
        # within the warm-up, as the task journal's and the trace store's do
        history_raw_hours = 0.05
        history_minute_days = 0.002
        # and so do the events kept for streams' reconnects (the default's 10,000 took
        # the soak's churn past 40 minutes: its growth was their filling, issue 90)
        event_ring = {event_ring or kept * 4}

        [tracing]
        keep_spans = {kept * 4}

        # the tools the tenants' agents call through the gateway (their egress sandbox's
        # way out), under the operator's policy; the soak's push receiver is on loopback
        [gateway]
        listen = "127.0.0.1:{gateway}"

        [mcp_servers.notes]
        command = ["{PY}", "{ROOT / 'examples' / 'notes_server.py'}"]
        start_timeout = 60
        shared = true

        [a2a]
        push_private = true
    """) + POLICY + tenants


def base_agents(marks: dict[str, str]) -> str:
    """Each tenant's agent of the config file, and a schedule firing a task of it."""
    return "".join(textwrap.dedent(f"""
        [agents.{t}-base]
        command = ["{PY}", "{AGENT}"]
        env = {{ PYTHONPATH = "{ROOT}", SOAK_GENERATION = "0" }}
        tenant = "{t}"
        stop_timeout = 5

        [schedules.{t}-tick]
        agent = "{t}-base"
        every = "2s"
        input = {{ do = "hello", mark = "{marks[t]}" }}
    """) for t in TENANTS)


# -- the run -----------------------------------------------------------------------------------
def wait_http(port: int, token: str, within: float = 60) -> None:
    """Until the HTTP API answers (it binds after READY=1, and again after a restart)."""
    api = Api(port, token)
    deadline = time.monotonic() + within
    try:
        while True:
            try:
                if api.call("GET", "/agents")[0] == 200:
                    return
            except (OSError, http.client.HTTPException):
                pass
            if time.monotonic() > deadline:
                raise SoakFailed(f"the HTTP API did not answer within {within} s")
            time.sleep(0.2)
    finally:
        api.close()


@dataclass
class Run:
    """Everything one soak saw, as its report is made from it."""

    plan: Plan
    watch: Watch
    sampler: Sampler
    names: NamePool
    tenants: list[Tenant] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    stopped: bool = True  # the daemon's last stop ended within STOP_WAIT
    answered: float | None = None  # seconds the daemon took to answer at the end
    orphans: list[str] = field(default_factory=list)  # its processes alive after its stop
    pushes_bad: list[str] = field(default_factory=list)  # pushes the receiver refused


def soak(plan: Plan, d: Path) -> Run:
    ledgers = {t: Ledger(t, f"{t}-{secrets.token_hex(4)}") for t in TENANTS}
    daemon = SoakDaemon(d, free_port(), plan.kept, {t: ledgers[t].mark for t in TENANTS},
                        plan.wrap, plan.event_ring)
    run = Run(plan, Watch(ledgers), Sampler(daemon.where, daemon.state_dir, plan.interval,
                                            d / "logs"), NamePool(plan.fresh_names))
    gate = Gate()
    receiver = Receiver(run.watch)
    receiver.start()
    t0 = time.monotonic()
    try:
        daemon.start()
        tokens = {t: daemon.token(t) for t in TENANTS}
        metrics = Metrics(daemon.port, daemon.token(None))
        wait_http(daemon.port, tokens[TENANTS[0]])
        run.sampler.start()
        run.tenants = [Tenant(ledgers[t], Api(daemon.port, tokens[t]), run.watch, gate,
                              run.names, seed=i, pause=plan.pause,
                              a2a=A2a(daemon.port, tokens[t], t, run.watch),
                              metrics=metrics, receiver=receiver, home=d / "homes" / t)
                       for i, t in enumerate(TENANTS)]
        for tenant in run.tenants:
            tenant.start()
        for at, kind in [*plan.events(), (plan.minutes * 60, "end")]:
            while time.monotonic() - t0 < at:
                if not all(t.is_alive() for t in run.tenants):
                    raise SoakFailed("a tenant's thread ended: " + ", ".join(
                        f"{t.name_}: {t.work.first_failures}" for t in run.tenants))
                daemon.schedule_tasks(ledgers)
                time.sleep(min(10.0, max(0.0, at - (time.monotonic() - t0))))
            if kind == "end":
                break
            began = time.monotonic()
            with gate.closed():
                getattr(daemon, kind)()
                wait_http(daemon.port, tokens[TENANTS[0]])
                took = time.monotonic() - began
                seen = looked_after(run) if kind != "reload" else None
            run.events.append({"at": round(began - t0, 1), "kind": kind,
                               "seconds": round(took, 2)}
                              | ({} if seen is None else {"sightings": seen}))
            print(f"[soak] {began - t0:7.1f} s: {kind} ({took:.1f} s)"
                  + ("" if seen is None else f"; each tenant looked: {seen} sightings"),
                  file=sys.stderr, flush=True)
        for tenant in run.tenants:
            tenant.halt.set()
        for tenant in run.tenants:
            tenant.join(WAIT * 3)
        daemon.schedule_tasks(ledgers)
        for tenant in run.tenants:  # a last look, every id of the other's known
            tenant.look()
        # the daemon still answers at the end, at once
        answered = time.monotonic()
        wait_http(daemon.port, tokens[TENANTS[0]], within=30)
        run.answered = round(time.monotonic() - answered, 2)
    except SoakFailed as exc:
        raise SoakFailed(f"{exc}\n{why_failed(run, daemon)}") from exc
    finally:
        for tenant in run.tenants:
            tenant.halt.set()
        run.sampler.halt.set()
        run.stopped = daemon.stop()
        run.seconds = time.monotonic() - t0
        receiver.close()
        run.pushes_bad = receiver.bad[:10]
        run.orphans = orphans(run.sampler.below)
    return run


def looked_after(run: Run) -> int:
    """Each tenant's look at every view and probe of the other's ids, at once after a
    restart or an upgrade (before any round: what the new life read back from disk):
    the sightings in them."""
    before = run.watch.sightings
    for tenant in run.tenants:  # their rounds wait at the gate: their connections are free
        try:
            tenant.look()
        except (OSError, http.client.HTTPException) as exc:
            tenant.failed("look after a restart", repr(exc))
    return run.watch.sightings - before


def why_failed(run: Run, daemon: SoakDaemon) -> str:
    """What the tenants saw fail and how the daemon's log ends: a soak that stops early
    writes no report, and a CI run keeps only what it printed."""
    seen = "; ".join(f"{t.name_}: {t.work.failures} failures, the first of each kind "
                     f"{t.work.first_failures}" for t in run.tenants)
    log = daemon.daemon.dir / "logs" / "corral.log"
    tail = log.read_text(errors="replace").splitlines()[-60:] if log.exists() else []
    return "\n".join([f"the tenants: {seen or 'none started'}", "the daemon's log ends:",
                       *tail])


def report(run: Run) -> dict[str, Any]:
    plan, samples = run.plan, run.sampler.samples
    gauges: dict[str, Any] = {}
    for g in GAUGES:
        slope: Slope | None = fit(samples, g, plan.warmup)
        fitted = [s.values[g.key] for s in samples
                  if (s.since_start if g.per_life else s.t) >= plan.warmup]
        bound = plan.bounds[g.key]
        gauges[g.key] = {
            "title": g.title, "bound_per_hour": bound,
            "first": round(fitted[0], 2) if fitted else None,
            "last": round(fitted[-1], 2) if fitted else None,
            "min": round(min(fitted), 2) if fitted else None,
            "max": round(max(fitted), 2) if fitted else None,
            "slope_per_hour": None if slope is None else round(slope.per_hour, 3),
            "stderr_per_hour": None if slope is None else round(slope.stderr, 3),
            "samples": 0 if slope is None else slope.samples,
            "flat": slope is not None and slope.per_hour <= bound}
    w = run.watch
    return {
        "plan": asdict(plan), "seconds": round(run.seconds, 1), "events": run.events,
        "stopped": run.stopped,
        "gauges": gauges,
        "cross_tenant": {
            "views": w.views, "strings": w.strings, "probes": w.probes,
            "sightings": w.sightings,
            "groups": [{"viewer": k[0], "view": k[1], "kind": k[2], "count": n}
                       for k, n in sorted(w.groups.items())],
            "examples": [asdict(s) for s in w.distinct.values()][:40],
            "ids": {t: {"tasks": led.count("task"), "runs": led.count("run")}
                    for t, led in w.ledgers.items()}},
        "state_tables": growth(run.sampler.tables, plan.warmup),
        "rss_minutes": per_minute(samples, "rss_mib"),
        "rss_second_half": second_half(samples, run.seconds, plan.warmup),
        "dirs": dirs(run.sampler.dirs, plan.warmup),
        "work": {t.name_: asdict(t.work) for t in run.tenants},
        "edges": {t.name_: asdict(t.edges) for t in run.tenants},
        "answered_at_end_s": run.answered,
        "orphans": run.orphans, "processes_below": len(run.sampler.below),
        "pushes_refused": run.pushes_bad,
        # (fresh names: each name's log file is the operator's to keep, a file a name)
        "dir_bounds_mib": {k: v for k, v in dir_bounds(plan.kept).items()
                           if not (plan.fresh_names and k == "logs_mib")},
        "names_taken_from_the_other_tenant": run.names.crossed,
        "samples": [{"t": round(s.t, 1), "life": s.life, "since_start": round(s.since_start, 1),
                     "values": {k: round(v, 3) for k, v in s.values.items()}}
                    for s in samples]}


def dir_bounds(kept: int) -> dict[str, float]:
    """What the state and log directories may hold (MiB): the logs, each file's bound
    (`log_max_bytes`, 2 backups) for the daemon's log and every name an agent or server
    of the soak takes, twice over; the state, its database toward the team calls' fixed
    10,000 and the WAL, four times what 55 minutes took (bench/RESULTS.md)."""
    files = 1 + len(NAMES) + len(TENANTS) + 1
    return {"state_mib": 64.0, "logs_mib": round(2 * files * 3 * kept * 1024 / 2**20, 2)}


def per_minute(samples: list[Sample], key: str) -> list[float]:
    """A gauge's last reading in each minute of the soak (a minute with none left out)."""
    last: dict[int, float] = {}
    for s in samples:
        last[int(s.t // 60)] = s.values[key]
    return [round(last[m], 1) for m in sorted(last)]


def second_half(samples: list[Sample], seconds: float, warmup: float) -> dict[str, Any]:
    """The RSS's least-squares slope over the soak's second half (each life's warm-up
    left out): past the settling of the first half, what is left is growth."""
    slope = fit([s for s in samples if s.t >= seconds / 2], GAUGE_OF["rss_mib"], warmup)
    return {"from_s": round(seconds / 2), "samples": 0 if slope is None else slope.samples,
            "slope_per_hour": None if slope is None else round(slope.per_hour, 3),
            "stderr_per_hour": None if slope is None else round(slope.stderr, 3)}


def dirs(looks: list[tuple[float, int, int]], warmup: float) -> dict[str, Any]:
    """The state and log directories' bytes on disk (MiB): at the first look past the
    warm-up, at the last, and the most."""
    past = [look for look in looks if look[0] >= warmup] or looks
    out: dict[str, Any] = {}
    for i, name in ((1, "state_mib"), (2, "logs_mib")):
        sizes = [look[i] / 2**20 for look in past]
        out[name] = {"first": round(sizes[0], 2) if sizes else None,
                     "last": round(sizes[-1], 2) if sizes else None,
                     "max": round(max(sizes), 2) if sizes else None}
    return out


def growth(looks: list[tuple[float, dict[str, int]]], warmup: float) -> list[dict[str, Any]]:
    """What each table of the state database held at the first look past the warm-up and
    at the last, and its growth per hour between them: what grows, when the database
    does, largest first."""
    past = [look for look in looks if look[0] >= warmup]
    if len(past) < 2:
        return []
    (t0, first), (t1, last) = past[0], past[-1]
    rows = [{"table": name, "first_kib": round(first.get(name, 0) / 1024, 1),
             "last_kib": round(size / 1024, 1),
             "kib_per_hour": round((size - first.get(name, 0)) / 1024 / (t1 - t0) * 3600)}
            for name, size in last.items()]
    return sorted(rows, key=lambda r: -r["kib_per_hour"])


def table(rep: dict[str, Any]) -> str:
    rows = [f"{'gauge':24} {'after warm-up':>13} {'at end':>9} {'slope/h':>9} "
            f"{'± 2 se':>8} {'bound/h':>8}  verdict"]
    for g in rep["gauges"].values():
        slope = g["slope_per_hour"]
        rows.append(
            f"{g['title']:24} {_num(g['first']):>13} {_num(g['last']):>9} "
            f"{_num(slope, '+'):>9} {_num(None if slope is None else 2 * g['stderr_per_hour']):>8} "
            f"{g['bound_per_hour']:>8g}  {'flat' if g['flat'] else 'GROWS' if slope else 'no fit'}")
    grew = [r for r in rep["state_tables"] if r["kib_per_hour"] > 0][:6]
    if grew:
        rows.append("the state database's tables that grew (KiB/h): " + ", ".join(
            f"{r['table']} {r['kib_per_hour']}" for r in grew))
    rows.append("daemon RSS each minute (MiB): " + " ".join(f"{v:g}" for v in rep["rss_minutes"]))
    half = rep["rss_second_half"]
    se = half["stderr_per_hour"]
    rows.append(f"daemon RSS slope over the second half (from {half['from_s']} s, "
                f"{half['samples']} samples): {_num(half['slope_per_hour'], '+')} MiB/h "
                f"(± 2 se {_num(None if se is None else 2 * se)})")
    rows.append("; ".join(f"{label} dir {v['first']} MiB after warm-up, {v['last']} at end "
                          f"(most {v['max']})" for label, v in (
                              ("state", rep["dirs"]["state_mib"]),
                              ("log", rep["dirs"]["logs_mib"]))))
    x = rep["cross_tenant"]
    rows.append(f"cross-tenant: {x['views']} answers read ({x['strings']} strings), "
                f"{x['probes']} probes of the other's ids: {x['sightings']} sightings")
    rows += [f"  {g['viewer']} saw the other's {g['kind']} in {g['view']}: {g['count']}"
             for g in x["groups"][:30]]
    for tenant, w in rep["work"].items():
        rows.append(f"{tenant}: {w['rounds']} rounds, {w['agents_added']} agents added, "
                    f"{w['tasks']} tasks, {w['turns']} session turns, {w['runs']} runs, "
                    f"{w['team_calls']} team calls, {w['spawns']} spawn trees, {w['asks']} "
                    f"asks answered, {w['crashes']} crashes, {w['caps']} caps, "
                    f"{w['scales']} scales; "
                    f"{w['failures']} failures {w['first_failures'] or ''}")
    for tenant, e in rep["edges"].items():
        rows.append(f"{tenant} at the edges: {e['escapes']} escapes refused ({e['refusals']} "
                    f"refusals counted), {e['tools']} tool calls through the gateway, "
                    f"{e['denials']} denied by policy, {e['approvals']} approved; A2A: "
                    f"{e['a2a_sends']} sends, {e['abandoned']} streams abandoned, "
                    f"{e['subscribes']} subscribes, {e['pushes']} ends pushed; {e['events']} event "
                    "streams abandoned")
    rows.append(f"at the end: the daemon answered in {rep['answered_at_end_s']} s; "
                f"{len(rep['orphans'])} of its {rep['processes_below']} processes outlived "
                f"it {rep['orphans'][:5] or ''}; {len(rep['pushes_refused'])} pushes refused "
                f"{rep['pushes_refused'][:3] or ''}")
    kinds = [e["kind"] for e in rep["events"]]
    after = [e["sightings"] for e in rep["events"] if "sightings" in e]
    if after:
        rows.append(f"looks by each tenant right after {len(after)} restarts and upgrades: "
                    f"{sum(after)} cross-tenant sightings")
    rows.append(f"a name freed by one tenant taken by the other: "
                f"{rep['names_taken_from_the_other_tenant']} times; "
                + ", ".join(f"{kinds.count(k)} {k}s" for k in ("restart", "upgrade", "reload"))
                + f"; {len(rep['samples'])} samples over {rep['seconds']:.0f} s")
    return "\n".join(rows)


def _num(v: float | None, sign: str = "") -> str:
    return "-" if v is None else f"{v:{sign}.2f}"


def verdict(rep: dict[str, Any], max_failures: float) -> int:
    """0: flat and unseen; 1: a gauge past its bound or a sighting; 2: the soak's own
    work failed more than `max_failures` of its tasks, or the daemon did not stop."""
    if not rep["stopped"]:
        return 2
    tasks = sum(w["tasks"] for w in rep["work"].values())
    failures = sum(w["failures"] for w in rep["work"].values())
    if tasks == 0 or failures > max_failures * tasks:
        return 2
    if rep["cross_tenant"]["sightings"] or not all(g["flat"] for g in rep["gauges"].values()):
        return 1
    if rep["orphans"] or rep["pushes_refused"] or rep["answered_at_end_s"] is None or any(
            (rep["dirs"][k]["max"] or 0) > bound for k, bound in rep["dir_bounds_mib"].items()):
        return 1
    return 0


def parse(argv: list[str] | None) -> tuple[Plan, argparse.Namespace]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=20.0)
    ap.add_argument("--warmup", type=float, default=120.0,
                    help="seconds of each life of the daemon not fitted")
    ap.add_argument("--interval", type=float, default=2.0)
    ap.add_argument("--restarts", type=int, default=2)
    ap.add_argument("--upgrades", type=int, default=1)
    ap.add_argument("--reload-every", type=float, default=120.0)
    ap.add_argument("--kept", type=int, default=300,
                    help="journal_max_tasks, keep_tasks and log_tail_lines (the trace "
                    "store keeps 4 spans each)")
    ap.add_argument("--event-ring", type=int, default=0,
                    help="[http] event_ring (default: --kept times 4; 10000 is the "
                    "daemon's own default)")
    ap.add_argument("--pause", type=float, default=0.25,
                    help="seconds each tenant waits between two rounds")
    ap.add_argument("--max-slope", action="append", default=[], metavar="GAUGE=PER_HOUR",
                    help=f"a gauge's bound ({', '.join(BOUNDS)}); repeat")
    ap.add_argument("--max-failures", type=float, default=0.02,
                    help="the share of the soak's tasks that may fail (else exit 2)")
    ap.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "soak.json")
    ap.add_argument("--keep-dir", action="store_true", help="keep the daemon's directory")
    ap.add_argument("--wrap", default="", metavar="COMMAND",
                    help="run the daemon under this command (e.g. 'heaptrack -o FILE'; "
                    "a profiler's pid is no daemon's: with --restarts 0 --upgrades 0, and "
                    "the gauges are the wrapper's)")
    ap.add_argument("--fresh-names", action="store_true",
                    help="each round's agent under a name never used before (a fleet of "
                    "agents made per job), not the three names both tenants reuse")
    a = ap.parse_args(argv)
    bounds = dict(BOUNDS)
    for item in a.max_slope:
        key, _, value = item.partition("=")
        if key not in bounds:
            ap.error(f"--max-slope: no gauge {key} (gauges: {', '.join(BOUNDS)})")
        bounds[key] = float(value)
    return Plan(a.minutes, a.warmup, a.interval, a.restarts, a.upgrades, a.reload_every,
                a.kept, a.pause, bounds, tuple(shlex.split(a.wrap)), a.event_ring,
                a.fresh_names), a


def _stopped(signum: int, _frame: object) -> None:
    raise SoakFailed(f"stopped by signal {signum}")  # the daemon is stopped on the way out


def main(argv: list[str] | None = None) -> int:
    plan, a = parse(argv)
    signal.signal(signal.SIGTERM, _stopped)
    d = workdir("soak")
    try:
        run = soak(plan, d)
    except SoakFailed as exc:
        print(f"soak: {exc}", file=sys.stderr)
        return 2
    finally:
        if not a.keep_dir:
            shutil.rmtree(d, ignore_errors=True)
        else:
            print(f"[soak] the daemon's directory: {d}", file=sys.stderr)
    rep = report(run)
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps(rep, separators=(",", ":")) + "\n")
    print(table(rep))
    return verdict(rep, a.max_failures)


if __name__ == "__main__":
    sys.exit(main())
