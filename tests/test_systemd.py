"""corral as a systemd service, under a real systemd (tests/nsystemd.py): the unit from
systemd/ as shipped, plus a drop-in that only shortens its clocks (WatchdogSec, RestartSec)
so the cases fit the suite's time budget.

A `kill -9` of the daemon, a daemon frozen with SIGSTOP (the watchdog ends it) and
`systemctl stop` each leave nothing of the old daemon behind: KillMode=mixed and
Delegate=yes put every agent and every descendant in the unit's cgroup (one child cgroup
per replica), and the daemon that comes back runs exactly one process per replica."""

from __future__ import annotations

import json
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from corral.supervisor.containment import ProcStat, read_stat

from .chaos.procs import still_alive
from .conftest import EXAMPLES, ROOT
from .nsystemd import NSystemd, install_corral, skip_reason

pytestmark = pytest.mark.skipif(skip_reason() is not None, reason=str(skip_reason()))

CONFIG = textwrap.dedent(f"""
    [supervisor]
    dynamic_uids = []  # python3 is under root's 0700 home here: its agents run as root
    heartbeat_interval = 0.5
    heartbeat_timeout = 5.0

    [agents.hello]
    command = ["python3", "{EXAMPLES}/hello.py"]
    replicas = 2
    stop_timeout = 2.0

    [agents.stubborn]                       # ignores stdin EOF and SIGTERM
    command = ["python3", "{EXAMPLES}/misbehave.py"]
    env = {{ MISBEHAVE = "stubborn" }}
    stop_timeout = 1.0

    [agents.escaper]                        # a grandchild double-forked with setsid()
    command = ["python3", "{EXAMPLES}/misbehave.py"]
    env = {{ MISBEHAVE = "escape" }}
    stop_timeout = 1.0

    [agents.shell]
    command = ["bash", "{EXAMPLES}/echo.sh"]
    stop_timeout = 1.0

    [agents.sleeper]                        # one task at a time: the rest wait queued
    command = ["python3", "{EXAMPLES}/misbehave.py"]
    max_concurrent_tasks = 1
    retries = 1
    stop_timeout = 1.0
""")
REPLICAS = {"hello": 2, "stubborn": 1, "escaper": 1, "shell": 1, "sleeper": 1}
CLOCKS = "WatchdogSec=5\nRestartSec=0.2\n"
CLI = "/opt/corral/bin/corral"


@pytest.fixture(scope="module")
def nsd() -> Iterator[NSystemd]:
    """One booted systemd with corral installed (the repository's venv as /opt/corral)."""
    n = NSystemd(files={"etc/corral/corral.toml": CONFIG})
    install_corral(n, ROOT, CLOCKS)
    with n:
        yield n


class Service(msgspec.Struct):
    main_pid: int
    active: str
    restarts: int


def service(nsd: NSystemd) -> Service:
    out = nsd.run("systemctl", "show", "-p", "MainPID,ActiveState,NRestarts", "corral").stdout
    props = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    return Service(int(props["MainPID"]), props["ActiveState"], int(props["NRestarts"]))


def wait_restarted(nsd: NSystemd, before: Service, timeout: float = 30.0) -> Service:
    """Wait until systemd restarted the service and the new daemon sent READY=1."""
    deadline = time.monotonic() + timeout
    while True:
        s = service(nsd)
        if s.restarts > before.restarts and s.active == "active" and s.main_pid not in (
                0, before.main_pid):
            return s
        if time.monotonic() > deadline:
            raise AssertionError(f"not restarted within {timeout:g} s: {s}; journal:\n"
                                 + nsd.run("journalctl", "-u", "corral", "--no-pager",
                                           check=False).stdout[-3000:])
        time.sleep(0.1)


def snapshot(nsd: NSystemd, unit_cg: Path) -> dict[int, ProcStat]:
    """Every live process of the unit, by host pid."""
    out = {}
    for pid in nsd.processes(unit_cg):
        st = read_stat(pid)
        if st is not None:
            out[pid] = st
    return out


def check_fleet(nsd: NSystemd, unit_cg: Path) -> None:
    """Every replica serving, each replica's cgroup holding its process, nothing else."""
    deadline = time.monotonic() + 30
    while True:
        r = nsd.run(CLI, "status", "--json", check=False)
        agents = msgspec.json.decode(r.stdout)["agents"] if r.returncode == 0 else []
        if len(agents) == sum(REPLICAS.values()) and all(
                a["state"] in ("ready", "idle", "busy") for a in agents):
            break
        if time.monotonic() > deadline:
            raise AssertionError(f"fleet not serving: {r.stdout} {r.stderr}")
        time.sleep(0.1)
    for name, n in REPLICAS.items():
        for i in range(n):
            procs = nsd.processes(unit_cg / f"agent-{name}-{i}")
            # the agent, plus the escaper's escaped grandchild: contained in its cgroup
            assert len(procs) == (2 if name == "escaper" else 1), (name, i, procs)
    leaves = sorted(p.name for p in unit_cg.iterdir() if p.is_dir())
    assert leaves == sorted(["supervisor"] + [f"agent-{n}-{i}" for n, c in REPLICAS.items()
                                              for i in range(c)])


def load(nsd: NSystemd) -> None:
    for name in ("hello", "shell"):
        r = nsd.run(CLI, "run", name, "--input", '{"name": "x"}', check=False)
        assert r.returncode == 0, r.stderr


def accept_slow_tasks(nsd: NSystemd, n: int = 3) -> list[str]:
    """Tasks the daemon has accepted (journaled) and is running or holding queued."""
    ids = []
    for _ in range(n):
        r = nsd.run(CLI, "run", "sleeper", "--input", '{"do": "sleep", "seconds": 1}',
                    "--detach", check=False)
        assert r.returncode == 0, r.stderr
        ids.append(r.stdout.strip())
    return ids


def check_tasks(nsd: NSystemd, ids: list[str]) -> None:
    """Every accepted task has its outcome from the daemon that came back: none lost."""
    for tid in ids:
        r = nsd.run(CLI, "task", tid, "--wait", "--json", check=False, timeout=60)
        assert r.returncode == 0, (tid, r.stdout, r.stderr)
        info = msgspec.json.decode(r.stdout)
        assert info["status"] == "succeeded", info


@pytest.mark.timeout(150)
def test_kill_9_and_sigstop_restart_with_nothing_left_and_stop_empties_the_cgroup(
        nsd: NSystemd) -> None:
    nsd.run("systemctl", "daemon-reload")
    t0 = time.monotonic()
    nsd.run("systemctl", "start", "corral")  # returns after READY=1
    started = service(nsd)
    assert started.active == "active", started
    assert time.monotonic() - t0 < 30
    unit_cg = nsd.unit_cgroup("corral.service")
    log = nsd.path("/var/log/corral/corral.log").read_text()
    assert "cgroups: a cgroup per replica under /sys/fs/cgroup/system.slice/corral.service" \
        in log, log
    check_fleet(nsd, unit_cg)
    load(nsd)

    # kill -9 of the main pid: systemd kills the rest (KillMode=mixed) and restarts it
    old = snapshot(nsd, unit_cg)
    assert len(old) >= sum(REPLICAS.values()) + 2
    accepted = accept_slow_tasks(nsd)
    nsd.run("kill", "-9", str(started.main_pid))
    after_kill = wait_restarted(nsd, started)
    assert not still_alive(old), f"left from the killed daemon: {still_alive(old)}"
    check_fleet(nsd, unit_cg)
    check_tasks(nsd, accepted)
    load(nsd)

    # SIGSTOP: no more WATCHDOG=1; the watchdog aborts it and systemd restarts it
    old = snapshot(nsd, unit_cg)
    accepted = accept_slow_tasks(nsd)
    nsd.run("kill", "-STOP", str(after_kill.main_pid))
    wait_restarted(nsd, after_kill)
    assert not still_alive(old), f"left from the frozen daemon: {still_alive(old)}"
    check_fleet(nsd, unit_cg)
    check_tasks(nsd, accepted)

    # systemctl stop: the daemon stops its agents itself; the cgroup is empty after
    old = snapshot(nsd, unit_cg)
    nsd.run("systemctl", "stop", "corral")
    assert service(nsd).active == "inactive"
    assert not still_alive(old)
    assert nsd.processes(unit_cg) == set()


def task_info(nsd: NSystemd, tid: str) -> dict[str, object]:
    r = nsd.run(CLI, "task", tid, "--json", check=False)
    assert r.returncode == 0, r.stderr
    info: dict[str, object] = msgspec.json.decode(r.stdout)
    return info


def wait_for(what: str, fn: object, timeout: float = 30.0) -> object:
    deadline = time.monotonic() + timeout
    while True:
        value = fn()  # type: ignore[operator]
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def running_task(nsd: NSystemd, gate: str) -> str:
    """A task that runs until the test writes `gate` (a path inside): running across a
    stop's drain however long the test's looks take (each look is a CLI of its own, and
    on a loaded host one took as long as a task of a fixed few seconds, which ended
    between two looks)."""
    r = nsd.run(CLI, "run", "sleeper", "--input", json.dumps({"do": "await", "path": gate}),
                "--detach", check=False)
    assert r.returncode == 0, r.stderr
    tid = r.stdout.strip()
    wait_for("the task running", lambda: task_info(nsd, tid)["status"] == "running")
    return tid


def draining(nsd: NSystemd) -> str:
    """systemd's StatusText once it says the daemon drains its one task."""
    return str(wait_for("StatusText=draining", lambda: (s := nsd.run(
        "systemctl", "show", "-p", "StatusText", "--value", "corral").stdout.strip())
        .startswith("draining 1 task") and s))


@pytest.mark.timeout(150)
def test_systemctl_restart_and_stop_drain_a_running_task(nsd: NSystemd) -> None:
    """Issue 37: an upgrade's `systemctl restart` (or a stop) lets the running task
    finish, on its first attempt, and the next daemon does not run it again; systemd's
    StatusText says that it drains."""
    nsd.run("systemctl", "daemon-reload")
    nsd.run("systemctl", "start", "corral")
    unit_cg = nsd.unit_cgroup("corral.service")
    check_fleet(nsd, unit_cg)

    gate = "/var/lib/corral-test/restart-gate"
    tid = running_task(nsd, gate)
    before = service(nsd).main_pid
    nsd.run("systemctl", "restart", "--no-block", "corral")
    draining(nsd)
    nsd.write(gate, "")
    # the new daemon: active once it said READY=1
    wait_for("the daemon back", lambda: (s := service(nsd)).active == "active"
             and s.main_pid not in (0, before), timeout=90)
    check_fleet(nsd, unit_cg)
    info = task_info(nsd, tid)
    assert info["status"] == "succeeded", info
    assert [(a["outcome"], a["error"]) for a in info["attempts"]] == [  # type: ignore[attr-defined]
        ("succeeded", None)]
    assert info["output"] == {"awaited": gate}

    gate = "/var/lib/corral-test/stop-gate"
    tid = running_task(nsd, gate)
    nsd.run("systemctl", "stop", "--no-block", "corral")
    status = draining(nsd)
    assert status.endswith("; 5 agents, 6/6 replicas serving, 0 failed"), status
    nsd.write(gate, "")
    wait_for("the unit stopped", lambda: service(nsd).active == "inactive", timeout=60)
    assert nsd.processes(unit_cg) == set()
    log = nsd.path("/var/log/corral/corral.log").read_text()
    assert log.count(": 1 finished (succeeded 1)") == 2, log[-3000:]
    nsd.run("systemctl", "start", "corral")
    info = task_info(nsd, tid)
    assert [a["outcome"] for a in info["attempts"]] == ["succeeded"], info  # type: ignore[attr-defined]
    nsd.run("systemctl", "stop", "corral")
