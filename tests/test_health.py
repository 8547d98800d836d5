"""Health checks (issue 24, health.py): readiness gates dispatch, liveness restarts through
the restart policy naming the check, command checks leave no process, one event when a
whole agent is unready and no restart storm, start_period, a fresh start per life, exact
config errors, the SDK's @health_check and a worker in bash answering health/check."""

from __future__ import annotations

import asyncio
import os
import re
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest

from corral import jsonrpc
from corral.supervisor import State, Supervisor, SupervisorError
from corral.supervisor.config import CheckSpec, ConfigError, HealthSpec
from corral.supervisor.configload import load_config
from corral.supervisor.health import (
    AgentReadiness,
    CheckCounter,
    Flip,
    HealthChange,
    Verdict,
)
from corral.supervisor.lifecycle import Cause
from corral.supervisor.process import SPAWN_THREADS, abandoned_spawns, off_loop, spawn_pool
from corral.supervisor.replica import Replica
from corral.supervisor.stream import Tick

from .conftest import PY, ROOT, agent
from .test_pause import quiet_for

HERE = Path(__file__).resolve().parent
FAST = {"interval": 0.1, "timeout": 2.0, "failures": 2}


# -- the counter, without processes -----------------------------------------------------------
def test_the_counter_flips_after_consecutive_failures_and_passes() -> None:
    c = CheckCounter(failures=3, successes=2, grace_until=0.0)
    bad, good = Verdict(False, "down"), Verdict(True)
    assert [c.record(bad, 1.0) for _ in range(3)] == [None, None, Flip.FAILED]
    assert (c.ok, c.failures, c.message) == (False, 3, "down")
    assert c.record(bad, 1.0) is Flip.FAILING  # an action held back may go now
    assert c.record(good, 1.0) is None  # one pass of the two asked
    assert c.record(bad, 1.0) is None  # the run of passes is broken, and so is the failures'
    assert (c.ok, c.failures, c.successes) == (False, 1, 0)
    assert [c.record(good, 1.0), c.record(good, 1.0)] == [None, Flip.PASSED]
    assert c.ok is True and c.record(good, 1.0) is None  # no flip while it passes
    # a pass in between starts the failures' count again
    assert [c.record(bad, 1.0), c.record(bad, 1.0), c.record(good, 1.0),
            c.record(bad, 1.0), c.record(bad, 1.0)] == [None, None, None, None, None]
    assert c.record(bad, 1.0) is Flip.FAILED


def test_failures_in_the_start_period_are_not_counted() -> None:
    c = CheckCounter(failures=1, successes=1, grace_until=10.0)
    assert c.record(Verdict(False, "warming up"), 9.9) is None
    assert (c.ok, c.failures, c.message) == (None, 0, "warming up")
    assert c.record(Verdict(True), 9.9) is Flip.PASSED  # a pass counts at once
    assert c.record(Verdict(False, "late"), 10.0) is Flip.FAILED


# -- config -----------------------------------------------------------------------------------
@pytest.mark.parametrize(("table", "error"), [
    ("[agents.a.health]\nstart_period = 1",
     "agents.a.health: give readiness, liveness or both"),
    ('[agents.a.health.liveness]\ncheck = "db"\ncommand = ["true"]',
     "agents.a.health.liveness: give either check (the worker's) or command, not both"),
    ("[agents.a.health.readiness]\ncommand = []",
     "agents.a.health.readiness.command: is empty"),
    ('[agents.a.health.liveness]\nrecovery = "exec"',
     'agents.a.health.liveness.exec: recovery = "exec" needs exec = [the command to run]'),
    ('[agents.a.health.readiness]\nexec = ["true"]',
     'agents.a.health.readiness.exec: is run only with recovery = "exec"'),
    ("[agents.a.health.liveness]\nintervall = 3",
     "agents.a.health.liveness: Object contains unknown field `intervall` (did you mean "
     "`interval`?)"),
    ('[agents.a.health.liveness]\nrecovery = "reboot"',
     "agents.a.health.liveness.recovery: Invalid enum value 'reboot' (valid: 'drain', "
     "'event', 'exec', 'restart')"),
    ("[agents.a.health.liveness]\nfailures = 0",
     "agents.a.health.liveness.failures: Expected `int` >= 1"),
    ("[agents.a.health]\nstart_period = -1\n[agents.a.health.liveness]",
     "agents.a.health.start_period: Expected `float` >= 0.0"),
])
def test_config_errors_name_the_key(tmp_path: Path, table: str, error: str) -> None:
    path = tmp_path / "corral.toml"
    path.write_text(f'[agents.a]\ncommand = ["true"]\n{table}\n')
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    assert str(exc.value) == f"{path}: {error}"


def test_a_good_health_table_is_read_with_its_defaults(tmp_path: Path) -> None:
    path = tmp_path / "corral.toml"
    path.write_text(textwrap.dedent("""
        [agents.a]
        command = ["true"]
        [agents.a.health]
        start_period = 5
        [agents.a.health.readiness]
        check = "db"
        [agents.a.health.liveness]
        command = ["pg_isready", "-q"]
        recovery = "exec"
        exec = ["logger", "db down"]
    """))
    h = load_config(path).agents["a"].health
    assert h == HealthSpec(start_period=5.0, readiness=CheckSpec(check="db"),
                           liveness=CheckSpec(command=["pg_isready", "-q"],
                                              recovery="exec", exec=["logger", "db down"]))
    assert (h.readiness.interval, h.readiness.timeout, h.readiness.failures,
            h.readiness.successes) == (10.0, 5.0, 3, 1)


def test_a_package_manifest_is_held_to_the_same_rules(tmp_path: Path) -> None:
    from corral.daemon.packages.manifest import read_manifest

    (tmp_path / "corral.toml").write_text(textwrap.dedent("""
        [agent]
        name = "p"
        command = "python agent.py"
        [agent.health.readiness]
        command = ["true"]
        exec = ["true"]
    """))
    with pytest.raises(ConfigError) as exc:
        read_manifest(tmp_path)
    assert str(exc.value) == (f"{tmp_path / 'corral.toml'}: agent.health.readiness.exec: "
                              'is run only with recovery = "exec"')


async def test_the_api_refuses_a_bad_health_table(sup: Supervisor) -> None:
    spec = agent("a", health=HealthSpec(liveness=CheckSpec(recovery="exec")))
    with pytest.raises(SupervisorError) as exc:
        sup.add(spec)
    assert (exc.value.code, exc.value.message) == (
        jsonrpc.INVALID_PARAMS,
        'agent a: health.liveness.exec: recovery = "exec" needs exec = [the command to run]')
    assert "a" not in sup.agents


# -- helpers ----------------------------------------------------------------------------------
class Seen:
    """The health events of the stream, waited for without sleeping."""

    def __init__(self, sup: Supervisor) -> None:
        self.changes: list[HealthChange] = []
        self.agents: list[AgentReadiness] = []
        self.transitions: list[Any] = []
        self._wake = asyncio.Event()
        from corral.supervisor import Transition

        # (a heartbeat round's tick wakes waiters for what no event tells: a file written)
        sup.stream.subscribe(self._on, HealthChange, AgentReadiness, Transition, Tick)

    def _on(self, e: Any) -> None:
        if isinstance(e, HealthChange):
            self.changes.append(e)
        elif isinstance(e, AgentReadiness):
            self.agents.append(e)
        elif not isinstance(e, Tick):
            self.transitions.append(e)
        self._wake.set()

    async def until(self, cond: Callable[[], Any], timeout: float = 20.0,
                    what: str = "condition") -> Any:
        async with asyncio.timeout(timeout):
            while not (value := cond()):
                self._wake.clear()
                await self._wake.wait()
        return value


def health_agent(name: str, tmp_path: Path, replicas: int = 1, **health: Any) -> Any:
    return agent(name, command=[PY, str(HERE / "health_agent.py")], replicas=replicas,
                 env={"HEALTH_DIR": str(tmp_path), "PYTHONPATH": str(ROOT)},
                 health=HealthSpec(**health))


async def all_failing(sup: Supervisor, seen: Seen, tmp_path: Path, replicas: int) -> Any:
    """Agent h of `replicas`, each with a readiness and a liveness check, once all are
    ready; then what all share is down: every replica fails both, round after round."""
    sup.add(health_agent("h", tmp_path, replicas=replicas, readiness=ready_check(),
                         liveness=live_check()))
    a = sup.agent("h")
    await seen.until(lambda: all(r.serving and r.health_ready for r in a.replicas))
    (tmp_path / "unready-all").touch()
    (tmp_path / "dead-all").touch()
    return a


def health_downs(seen: Seen) -> list[Any]:
    """The transitions seen that take a replica down for its health."""
    return [e for e in seen.transitions
            if e.cause == Cause.UNHEALTHY and e.state == "shutting_down"]


def ready_check(**kw: Any) -> CheckSpec:
    return CheckSpec(check="ready", **{**FAST, **kw})


def live_check(**kw: Any) -> CheckSpec:
    return CheckSpec(check="live", **{**FAST, **kw})


# -- readiness --------------------------------------------------------------------------------
async def test_no_task_goes_to_an_unready_replica_and_its_running_task_goes_on(
        sup: Supervisor, tmp_path: Path) -> None:
    seen = Seen(sup)
    sup.add(health_agent("h", tmp_path, replicas=2, readiness=ready_check()))
    a = sup.agent("h")
    await seen.until(lambda: all(r.serving and r.health_ready for r in a.replicas))
    r0, r1 = a.replicas
    # a long task on #1, then #1 is unready: its task goes on, no new task goes to it
    long = sup.tasks.submit("h", {"sleep": 1.5})
    await seen.until(lambda: long.replica is not None)
    busy = long.replica
    assert busy is not None
    other = r0 if busy is r1 else r1
    (tmp_path / f"unready-{busy.index}").touch()
    await seen.until(lambda: not busy.health_ready)
    assert busy.status().ready is False
    assert busy.status().health == ('readiness check "ready" failed: '
                                    f"unready-{busy.index} is there")
    results = await asyncio.gather(*(sup.tasks.run("h", {}) for _ in range(6)))
    assert {res.status for res in results} == {"succeeded"}
    assert {res.attempts[0].replica for res in results} == {other.index}
    await seen.until(lambda: long.status == "succeeded")
    # the checks were answered while the handler slept: #0 never failed one
    assert not [c for c in seen.changes if c.replica == other.index and not c.ok]
    # ready again: tasks go to it once more
    (tmp_path / f"unready-{busy.index}").unlink()
    await seen.until(lambda: busy.health_ready)
    flip = [c for c in seen.changes if c.replica == busy.index][-1]
    assert (flip.action, flip.text) == ("ready", 'readiness check "ready" passed; ready '
                                                 "for tasks")
    tasks = [sup.tasks.submit("h", {"sleep": 0.3}) for _ in range(2)]
    await seen.until(lambda: all(t.status == "succeeded" for t in tasks))
    assert {t.attempts[0].replica for t in tasks} == {0, 1}


async def test_a_replica_is_unready_until_its_first_check_passes(
        sup: Supervisor, tmp_path: Path) -> None:
    (tmp_path / "unready-all").touch()
    seen = Seen(sup)
    sup.add(health_agent("h", tmp_path, readiness=ready_check()))
    r = sup.agent("h").replicas[0]
    await sup.wait_state("h", State.READY, timeout=30)
    task = sup.tasks.submit("h", {})
    await seen.until(lambda: [c for c in seen.changes if c.action == "unready"])
    assert task.status == "queued" and r.state == State.READY  # up, but no task for it
    (tmp_path / "unready-all").unlink()
    await seen.until(lambda: task.status == "succeeded")


async def test_all_replicas_unready_raise_one_event_and_no_restart_storm(
        sup: Supervisor, tmp_path: Path) -> None:
    seen = Seen(sup)
    await all_failing(sup, seen, tmp_path, replicas=3)
    await seen.until(lambda: seen.agents)
    task = sup.tasks.submit("h", {})
    # three restarts for health in all, and by then many more rounds of failed checks
    await seen.until(lambda: len(health_downs(seen)) >= 3, timeout=30)
    restarts = health_downs(seen)
    assert {e.replica for e in restarts} == {restarts[0].replica}  # one replica only
    assert [e.ready for e in seen.agents] == [False]  # one event, not one per round
    assert re.fullmatch(r"every replica of h is unready \([23] serving of 3\); its tasks "
                        "wait in the queue", seen.agents[0].text)
    held = [c for c in seen.changes if c.action == "restart held"]
    assert {c.replica for c in held} == {0, 1, 2} - {restarts[0].replica}
    assert task.status == "queued"
    (tmp_path / "unready-all").unlink()
    (tmp_path / "dead-all").unlink()
    await seen.until(lambda: task.status == "succeeded", timeout=30)
    await seen.until(lambda: len(seen.agents) == 2)
    assert [(e.ready, e.text) for e in seen.agents][1] == (True,
                                                           "h has a ready replica again")


# -- liveness ---------------------------------------------------------------------------------
async def test_liveness_failure_restarts_through_the_policy_naming_the_check(
        sup: Supervisor, tmp_path: Path) -> None:
    seen = Seen(sup)
    sup.add(health_agent("h", tmp_path, readiness=ready_check(),
                         liveness=live_check(failures=3)))
    r = sup.agent("h").replicas[0]
    await seen.until(lambda: r.serving and r.health_ready)
    first_pid, first_health = r.pid, r.health
    (tmp_path / "dead-0").touch()
    await seen.until(lambda: r.pid != first_pid and r.state == State.STARTING, timeout=30)
    (tmp_path / "dead-0").unlink()
    why = 'liveness check "live" failed 3 times: RuntimeError: the database is gone'
    down = next(e for e in seen.transitions if e.cause == Cause.UNHEALTHY)
    assert (down.state, down.reason, down.pid) == ("shutting_down", why, first_pid)
    assert r.last_exit == why
    assert r.restarts == 1  # counted as any restart, by its cause
    assert sup.stats.restarts_by_cause.get(Cause.UNHEALTHY) == 1
    assert [c.action for c in seen.changes if c.check == "liveness"] == ["restart"]
    # the new life starts its checks from nothing: unready until its readiness passes
    await seen.until(lambda: r.serving and r.health is not None
                     and all(x.counter.ok for x in r.health.runs), timeout=30)
    assert r.health is not first_health and r.health_ready
    assert [x.counter.failures for x in r.health.runs] == [0, 0]


async def test_start_period_holds_failures_back(sup: Supervisor, tmp_path: Path) -> None:
    (tmp_path / "dead-all").touch()
    seen = Seen(sup)
    sup.add(health_agent("h", tmp_path, start_period=1.0,
                         liveness=live_check(failures=1)))
    r = sup.agent("h").replicas[0]
    await sup.wait_state("h", State.READY, timeout=30)
    ready_at = r.ready_at
    assert ready_at is not None
    await seen.until(lambda: [e for e in seen.transitions if e.cause == Cause.UNHEALTHY],
                     timeout=30)
    (tmp_path / "dead-all").unlink()
    # failed at once and every 0.1 s, counted only from the end of the start period
    assert time.monotonic() - ready_at >= 1.0
    restart = next(c for c in seen.changes if c.action == "restart")
    assert restart.text == ('liveness check "live" failed 1 time: RuntimeError: the '
                            "database is gone; restarting")


async def test_drain_and_event_recoveries_keep_the_process(
        sup: Supervisor, tmp_path: Path) -> None:
    seen = Seen(sup)
    bus = sup.events.follow("corral.*")
    sup.add(health_agent("h", tmp_path, liveness=live_check(recovery="drain")))
    r = sup.agent("h").replicas[0]
    await seen.until(lambda: r.serving and r.health is not None
                     and r.health.runs[0].counter.ok is True)
    pid = r.pid
    (tmp_path / "dead-0").touch()
    await seen.until(lambda: not r.health_ready)
    task = sup.tasks.submit("h", {})
    assert task.status == "queued"
    (tmp_path / "dead-0").unlink()
    await seen.until(lambda: task.status == "succeeded")
    assert r.pid == pid and r.restarts == 0
    assert [c.action for c in seen.changes] == ["unready", "ready"]
    # each flip on the event bus too, as `corral events tail corral.health` shows it
    published = [msgspec.json.decode(bus.pop()) for _ in range(len(bus.queue))]
    assert [(d["topic"], d["source"], d["data"]["action"], d["data"]["check"],
             d["data"]["pid"]) for d in published] == [
        ("corral.health", "corral", "unready", "liveness", pid),
        ("corral.health", "corral", "ready", "liveness", pid)]
    assert published[0]["data"]["text"] == (
        'liveness check "live" failed 2 times: RuntimeError: the database is gone; no new '
        "tasks until it passes")
    sup.events.unfollow(bus)


async def test_exec_recovery_runs_with_the_replica_in_its_environment(
        sup: Supervisor, tmp_path: Path) -> None:
    out = tmp_path / "exec.out"
    seen = Seen(sup)
    sup.add(health_agent("h", tmp_path, liveness=live_check(
        recovery="exec", exec=["sh", "-c", f'echo "$CORRAL_AGENT $CORRAL_REPLICA '
                                           f'$CORRAL_PID $CORRAL_CHECK" > {out}'])))
    r = sup.agent("h").replicas[0]
    await seen.until(lambda: r.serving and r.health is not None)
    (tmp_path / "dead-0").touch()
    await seen.until(lambda: out.exists() and out.read_text().endswith("\n"))
    assert out.read_text() == f"h 0 {r.pid} liveness\n"
    # rounds of failures past the one that flipped it: once per failure, not per round
    h = r.health
    assert h is not None
    await seen.until(lambda: h.runs[0].counter.failures >= FAST["failures"] + 3)
    exec_changes = [c for c in seen.changes if c.action == "exec"]
    assert (len(exec_changes), sup.health_board.exec_runs, r.restarts) == (1, 1, 0)


# -- command checks ---------------------------------------------------------------------------
def group_members(pgid: int) -> list[int]:
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_bytes()
            except OSError:
                continue
            fields = stat[stat.rindex(b")") + 2:].split()
            if int(fields[2]) == pgid:
                members.append(int(entry))
    return members


async def test_a_hung_command_check_leaves_no_process(sup: Supervisor, tmp_path: Path
                                                      ) -> None:
    pids = tmp_path / "pids"
    script = (f'sleep 1000 & echo "$$ $!" > {pids}.part && mv {pids}.part {pids}; '
              "exec sleep 1000")
    seen = Seen(sup)
    sup.add(health_agent("h", tmp_path, liveness=CheckSpec(
        command=["sh", "-c", script], interval=60.0, timeout=0.5, failures=1,
        recovery="event")))
    await seen.until(lambda: [c for c in seen.changes if c.check == "liveness"], timeout=30)
    change = seen.changes[-1]
    assert (change.ok, change.action, change.message) == (
        False, "event", "no exit within 0.5 s: killed with its process group")
    check_pid, grandchild = map(int, pids.read_text().split())
    # the check led its own process group; nothing of it is left, the grandchild neither
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while group_members(check_pid) or Path(f"/proc/{grandchild}").exists():
        assert loop.time() < deadline, f"left: {group_members(check_pid)}"
        await asyncio.sleep(0.05)
    assert sup.agent("h").replicas[0].restarts == 0


async def test_a_command_check_passes_on_exit_status_zero(sup: Supervisor, tmp_path: Path
                                                          ) -> None:
    flag = tmp_path / "ok"
    seen = Seen(sup)
    sup.add(health_agent("h", tmp_path, readiness=CheckSpec(
        command=["sh", "-c", f'test -e {flag} || {{ echo "no {flag.name}" >&2; exit 3; }}'],
        interval=0.1, timeout=5.0, failures=1)))
    r = sup.agent("h").replicas[0]
    await seen.until(lambda: [c for c in seen.changes if c.action == "unready"], timeout=30)
    assert r.status().health == ("readiness check \"sh -c 'test -e "
                                 f"{flag} || {{ echo \"no ok\" >&2; exit 3; }}'\" failed: "
                                 "exit status 3: no ok")
    flag.touch()
    await seen.until(lambda: r.health_ready, timeout=30)


# -- other workers ----------------------------------------------------------------------------
BASH_WORKER = r"""
while IFS= read -r line; do
    [[ $line =~ \"id\":([0-9]+) ]] || continue
    id=${BASH_REMATCH[1]}
    case $line in
    *'"method":"health/check"'*)
        if [[ -e "$HEALTH_DIR/ok" ]]; then
            printf '{"jsonrpc":"2.0","id":%s,"result":{"ok":true}}\n' "$id"
        else
            printf '{"jsonrpc":"2.0","id":%s,"result":{"ok":false,"message":"no ok file"}}\n' "$id"
        fi ;;
    *'"method":"task/run"'*)
        printf '{"jsonrpc":"2.0","id":%s,"result":{"output":"done"}}\n' "$id" ;;
    *'"method":"shutdown"'*)
        printf '{"jsonrpc":"2.0","id":%s,"result":{}}\n' "$id"
        exit 0 ;;
    *)
        printf '{"jsonrpc":"2.0","id":%s,"result":{}}\n' "$id" ;;
    esac
done
"""


async def unready_bash_worker(sup: Supervisor, tmp_path: Path, script: str
                              ) -> tuple[Replica, Seen]:
    """Agent `sh` running `script` under bash with a readiness check, once its first
    check has made it unready."""
    worker = tmp_path / "worker.sh"
    worker.write_text(script)
    seen = Seen(sup)
    sup.add(agent("sh", command=["bash", str(worker)], env={"HEALTH_DIR": str(tmp_path)},
                  health=HealthSpec(readiness=CheckSpec(interval=0.1, timeout=5.0,
                                                        failures=1))))
    r = sup.agent("sh").replicas[0]
    await seen.until(lambda: [c for c in seen.changes if c.action == "unready"], timeout=30)
    return r, seen


async def test_a_worker_in_bash_answers_health_check(sup: Supervisor, tmp_path: Path
                                                     ) -> None:
    r, seen = await unready_bash_worker(sup, tmp_path, BASH_WORKER)
    assert (r.status().ready, r.status().health) == (
        False, "readiness check failed: no ok file")
    task = sup.tasks.submit("sh", {})
    assert task.status == "queued"
    (tmp_path / "ok").touch()
    await seen.until(lambda: task.status == "succeeded", timeout=30)
    assert r.status().ready is True and r.status().health is None


async def test_a_health_check_answer_without_a_boolean_ok_fails_the_check(
        sup: Supervisor, tmp_path: Path) -> None:
    """A worker of its own protocol code answering `"ok": "yes"` (not the SDK): a failed
    check that says what is wrong with the answer, not a pass and not corral's error."""
    r, seen = await unready_bash_worker(sup, tmp_path, BASH_WORKER.replace(
        '"result":{"ok":false,"message":"no ok file"}', '"result":{"ok":"yes"}'))
    assert (r.status().ready, r.status().health) == (
        False, "readiness check failed: health/check answer has no boolean ok")
    assert seen.changes[0].text == ("readiness check failed 1 time: health/check answer has "
                                    "no boolean ok; no new tasks until it passes")
    task = sup.tasks.submit("sh", {})
    assert task.status == "queued"
    (tmp_path / "ok").touch()
    await seen.until(lambda: task.status == "succeeded", timeout=30)
    assert r.status().ready is True and r.restarts == 0


async def test_a_worker_without_health_check_fails_it_by_name(sup: Supervisor,
                                                              tmp_path: Path) -> None:
    seen = Seen(sup)
    sup.add(agent("plain", health=HealthSpec(readiness=CheckSpec(
        check="db", interval=0.1, timeout=5.0, failures=1))))
    await seen.until(lambda: seen.changes, timeout=30)
    assert seen.changes[0].text == ('readiness check "db" failed 1 time: no health check '
                                    "named 'db'; no new tasks until it passes")


# -- rollouts ---------------------------------------------------------------------------------
async def test_a_release_switches_only_once_the_new_processes_pass_readiness(
        sup: Supervisor, tmp_path: Path) -> None:
    sup.add(health_agent("h", tmp_path, readiness=ready_check()))
    a = sup.agent("h")
    await Seen(sup).until(lambda: a.replicas[0].health_ready, timeout=30)
    old = a.replicas[0]
    new_dir = tmp_path / "new"
    new_dir.mkdir()
    (new_dir / "unready-all").touch()
    spec = health_agent("h", new_dir, readiness=ready_check())
    spec.healthy_deadline = 1.5
    with pytest.raises(SupervisorError) as exc:
        await a.switch(spec)
    assert exc.value.message == (
        'a new process of h did not become ready: not ready within 1.5 s: readiness check '
        '"ready" failed: unready-all is there; the running processes keep serving')
    assert a.replicas == [old] and old.serving


async def test_a_release_unready_again_within_min_healthy_time_is_refused_with_the_check(
        sup: Supervisor, tmp_path: Path) -> None:
    seen = Seen(sup)
    sup.add(health_agent("h", tmp_path, readiness=ready_check()))
    a = sup.agent("h")
    await seen.until(lambda: a.replicas[0].health_ready, timeout=30)
    old = a.replicas[0]
    new_dir = tmp_path / "new"
    new_dir.mkdir()
    spec = health_agent("h", new_dir, readiness=ready_check())
    spec.min_healthy_time = 30.0  # the check fails long before: no wait that long
    switch = asyncio.ensure_future(a.switch(spec))
    try:
        new = await seen.until(lambda: next((r for r in a.replacing if r is not old
                                              and r.serving and r.health_ready), None))
        (new_dir / "unready-all").touch()
        with pytest.raises(SupervisorError) as exc:
            await asyncio.wait_for(switch, 20)
    finally:
        switch.cancel()
    assert exc.value.message == (
        'a new process of h did not become ready: readiness check "ready" failed: '
        "unready-all is there; the running processes keep serving")
    assert a.replicas == [old] and old.serving and new.state == State.TERMINATED


# -- what operators see -----------------------------------------------------------------------
async def test_operators_see_health_in_status_logs_and_metrics(tmp_path: Path) -> None:
    import aiohttp

    from corral.daemon.fleetwatch import FleetWatch

    from .test_metrics import running, samples, scrape, value

    flags = tmp_path / "flags"
    flags.mkdir()
    (flags / "unready-all").touch()
    agents = textwrap.dedent(f"""
        [agents.h]
        command = ["{PY}", "{HERE}/health_agent.py"]
        env = {{ PYTHONPATH = "{ROOT}", HEALTH_DIR = "{flags}" }}
        [agents.h.health.readiness]
        check = "ready"
        interval = 0.1
        failures = 1
    """)
    async with running(tmp_path, agents) as d:
        sup = d.sup
        seen = Seen(sup)
        r = sup.agent("h").replicas[0]
        await seen.until(lambda: sup.health_board.unready_agents == {"h"}, timeout=30)
        assert r.serving
        token = d.secrets["reader"]  # type: ignore[attr-defined]
        async with aiohttp.ClientSession() as http, http.get(
                f"{d.http_server.url}/api/v1/agents", headers={"Authorization": f"Bearer {token}"}
        ) as resp:
            rows = (await resp.json())["agents"]
        assert [(r["ready"], r["health"]) for r in rows] == [
            (False, 'readiness check "ready" failed: unready-all is there')]
        _, _, text = await scrape(d)
        series = samples(text)
        assert value(series, "corral_agent_ready_replicas", agent="h") == 0
        failed = value(series, "corral_health_check_failures_total", agent="h",
                       check="readiness")
        assert failed is not None and failed >= 1
        watch = FleetWatch(sup.agents, sup.stream)  # agents.watch's ring
        watch.open()
        (flags / "unready-all").unlink()
        await seen.until(lambda: [e for e in seen.agents if e.ready], timeout=30)
        notes = [k for k in watch.since(watch.first) if k.method == "agents.health"]
        watch.close()
        assert [(k.params.check, k.params.ok, k.params.action, k.params.text,
                 k.params.row.ready) for k in notes] == [
            ("readiness", True, "ready", 'readiness check "ready" passed; ready for tasks',
             True)]
        series = samples((await scrape(d))[2])
        assert value(series, "corral_agent_ready_replicas", agent="h") == 1
        logged = [line.text for line in d.hub.tail(["h"], 100, None)]
        assert [t for t in logged if "readiness" in t or "every replica" in t
                or "ready replica" in t] == [
            'readiness check "ready" failed 1 time: unready-all is there; no new tasks '
            "until it passes",
            "every replica of h is unready (1 serving of 1); its tasks wait in the queue",
            'readiness check "ready" passed; ready for tasks',
            "h has a ready replica again"]


def test_status_marks_an_unready_replica(capsys: pytest.CaptureFixture[str]) -> None:
    from corral import methods as m
    from corral.cli.status import print_status

    def row(index: int, ready: bool | None, health: str | None, state: str = "idle",
            reason: str = "ready") -> m.ReplicaStatus:
        return m.ReplicaStatus(name="h", replica=index, state=state, pid=100 + index,
                               uptime=5.0, restarts=0, last_exit=None, reason=reason,
                               cpu_percent=0.0, rss_bytes=0, open_fds=3, tasks_running=0,
                               ready=ready, health=health)

    print_status(m.AgentsStatusResult(agents=[
        row(0, True, None), row(1, False, 'readiness check "db" failed: refused'),
        row(2, None, None),
        # not serving: unready says nothing more, its reason is the one shown
        row(3, False, None, state="backoff", reason="restarting")],
        mcp_servers=[], tasks={}), with_mcp=False)
    lines = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert [line[:3] for line in lines[1:]] == [
        ["h#0", "idle", "100"], ["h#1", "idle", "(unready)"], ["h#2", "idle", "102"],
        ["h#3", "backoff", "103"]]
    assert lines[2][-6:] == ["unready:", "readiness", "check", '"db"', "failed:", "refused"]
    assert lines[4][-1] == "restarting"


# -- the SDK ----------------------------------------------------------------------------------
SDK_CHECKS = """
import asyncio
from corral.worker import health_check, run

@health_check
def plain():
    return None

@health_check("false")
def no():
    return False

@health_check("said")
def said():
    return {"ok": False, "message": "the disk is full"}

@health_check("raises")
def raises():
    raise ValueError("boom")

@health_check("async")
async def coroutine():
    await asyncio.sleep(0)
    return True

@health_check("odd")
def odd():
    return 5

run(lambda task, ctx: task)
"""


def test_the_sdk_answers_health_check_from_its_functions(tmp_path: Path) -> None:
    import json
    import subprocess

    script = tmp_path / "checks.py"
    script.write_text(SDK_CHECKS)
    asked: list[dict[str, Any]] = [{}, {"name": "plain"}, {"name": "false"}, {"name": "said"},
                                   {"name": "raises"}, {"name": "async"}, {"name": "odd"},
                                   {"name": "nope"}]
    proc = subprocess.Popen([PY, str(script)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert proc.stdin is not None and proc.stdout is not None
        for i, params in enumerate(asked):
            proc.stdin.write(json.dumps({"jsonrpc": "2.0", "id": i, "method": "health/check",
                                         "params": params}).encode() + b"\n")
        proc.stdin.flush()
        answers = {}
        for _ in asked:
            msg = json.loads(proc.stdout.readline())
            answers[msg["id"]] = msg["result"]
    finally:
        proc.kill()
        proc.wait()
    assert [answers[i] for i in range(len(asked))] == [
        {"ok": False, "message": "false failed"},  # all of them: the first failure, named
        {"ok": True},
        {"ok": False},
        {"ok": False, "message": "the disk is full"},
        {"ok": False, "message": "ValueError: boom"},
        {"ok": True},
        {"ok": False, "message": "the check returned int, not None, a bool or {'ok': ...}"},
        {"ok": False, "message": "no health check named 'nope'"},
    ]


async def test_a_busy_handler_does_not_make_its_replica_unready(
        sup: Supervisor, tmp_path: Path) -> None:
    seen = Seen(sup)
    # one failure flips a check; its timeout past a loaded host's wake-ups (a check the
    # busy handler held would never be answered)
    sup.add(health_agent("h", tmp_path, readiness=ready_check(timeout=5.0, failures=1),
                         liveness=live_check(timeout=5.0, failures=1)))
    r = sup.agent("h").replicas[0]
    await seen.until(lambda: r.serving and r.health_ready, timeout=30)
    # the handler holds its thread (and, waiting, not the GIL) until both checks went on
    # meanwhile, not for a time they may or may not fill on a loaded host
    hold = tmp_path / "go"
    task = sup.tasks.submit("h", {"hold": str(hold)})
    await seen.until(lambda: task.status == "running", timeout=30)
    before = sup.health_board.checks
    await seen.until(lambda: sup.health_board.checks - before >= 6, timeout=30)
    hold.touch()
    await seen.until(lambda: task.status == "succeeded", timeout=30)
    assert not [c for c in seen.changes if not c.ok] and r.health_ready
    assert sum(sup.health_board.failures.values()) == 0


async def test_a_check_command_that_cannot_run_is_a_failed_check(
        sup: Supervisor, tmp_path: Path) -> None:
    seen = Seen(sup)
    missing = tmp_path / "no-such-check"
    sup.add(health_agent("h", tmp_path, liveness=CheckSpec(
        command=[str(missing)], interval=0.1, failures=2, recovery="event")))
    await seen.until(lambda: seen.changes, timeout=30)
    assert seen.changes[0].text == (
        f'liveness check "{missing}" failed 2 times: cannot run {missing}: [Errno 2] No such '
        f"file or directory: '{missing}'")
    assert sup.agent("h").replicas[0].restarts == 0


def _hold_spawn_threads() -> tuple[threading.Event, list[threading.Event]]:
    """Every spawn thread held until the gate is set: a fork asked meanwhile waits in
    flight, as one does on a loaded host (suite r2, load 25)."""
    gate = threading.Event()
    held = [threading.Event() for _ in range(SPAWN_THREADS)]

    def hold(e: threading.Event) -> None:
        e.set()
        gate.wait()

    for e in held:
        spawn_pool().submit(hold, e)
    return gate, held


async def test_a_spawn_whose_caller_is_cancelled_is_undone_before_the_wait_for_it_ends(
        ) -> None:
    gate, held = _hold_spawn_threads()
    undone: list[str] = []
    caller = asyncio.create_task(off_loop(lambda: "made", undone.append))
    await asyncio.get_running_loop().run_in_executor(None, lambda: all(e.wait() for e in held))
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    settled = asyncio.create_task(abandoned_spawns())
    done, _ = await asyncio.wait([settled], timeout=0.3)
    assert not done and undone == []  # the fork is still asked for: not yet made
    gate.set()
    await settled
    assert undone == ["made"]


async def test_a_supervisor_closed_while_a_checks_fork_is_in_flight_leaves_none_of_its_pipes(
        sup: Supervisor, tmp_path: Path) -> None:
    """The check's task is cancelled at the close while its fork waits on a spawn thread:
    the close ends only once that fork has ended and its process is killed (the fixture
    asserts no pipe, pidfd or process of it outlives the close)."""
    seen = Seen(sup)
    sup.add(health_agent("h", tmp_path, liveness=CheckSpec(
        command=[PY, "-c", "pass"], interval=0.1, failures=2, recovery="event")))
    r = sup.agent("h").replicas[0]
    await seen.until(lambda: r.serving and r.health is not None)
    gate, held = _hold_spawn_threads()
    await asyncio.get_running_loop().run_in_executor(None, lambda: all(e.wait() for e in held))
    health = r.health
    assert health is not None
    await seen.until(lambda: any(run.task is not None for run in health.runs),
                     what="a check asked for its fork")
    closing = asyncio.create_task(sup.close(graceful=False))
    done, _ = await asyncio.wait([closing], timeout=0.3)
    assert not done  # the check's fork is still in flight
    gate.set()
    await closing


async def test_a_paused_replica_runs_no_check_and_is_checked_afresh_on_resume(
        sup: Supervisor, tmp_path: Path) -> None:
    """A frozen worker cannot answer: its checks stop at the pause (no failure counted,
    no liveness restart however long it stays paused) and start again at the resume,
    where it is ready once its first readiness check passes."""
    seen = Seen(sup)
    sup.add(health_agent("h", tmp_path, readiness=ready_check(),
                         liveness=live_check(timeout=0.3)))
    r = sup.agent("h").replicas[0]
    await seen.until(lambda: r.serving and r.health_ready)
    pid, first = r.pid, r.health
    assert first is not None
    await sup.pause("h")
    assert r.state == State.PAUSED and r.health is None and not r.health_ready
    assert first.closed and all(x.timer is None and x.task is None for x in first.runs)
    # a check's interval, timeout and failures over many times: no transition (a liveness
    # restart) comes, and no check ends, not even the one in flight at the pause
    before, checks = len(seen.changes), sup.health_board.checks
    await quiet_for(sup, "h", 1.5)
    assert (len(seen.changes), sup.health_board.checks) == (before, checks)
    assert r.state == State.PAUSED and r.pid == pid
    sup.resume("h")
    # a new round of checks, from nothing: unready until its readiness passes
    assert r.health is not None and r.health is not first and not r.health_ready
    await seen.until(lambda: r.serving and r.health_ready)
    assert (r.pid, r.restarts) == (pid, 0)
    assert (await sup.tasks.run("h", {})).status == "succeeded"


async def test_a_paused_replica_does_not_hold_its_siblings_liveness_restarts(
        sup: Supervisor, tmp_path: Path) -> None:
    """One replica at a time restarts for its health; one paused in its new life (not yet
    ready) may stay frozen for ever, so the pause ends the wait for the others."""
    seen = Seen(sup)
    a = await all_failing(sup, seen, tmp_path, replicas=2)

    def downs() -> list[int]:
        return [e.replica for e in health_downs(seen)]

    await seen.until(lambda: len(downs()) == 1, timeout=30)
    first = a.replicas[downs()[0]]
    other = a.replicas[1 - first.index]
    # its new life serves, unready; the other's liveness restart waits for it
    await seen.until(lambda: first.serving and first.health is not None
                     and [c for c in seen.changes
                          if c.action == "restart held" and c.replica == other.index],
                     timeout=30)
    await sup.pause("h", first.index)
    await seen.until(lambda: other.index in downs(), timeout=30)
    assert first.state == State.PAUSED and downs()[0] == first.index
