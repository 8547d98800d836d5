"""cgroups v2 where delegated: a real daemon started in a cgroup the test creates and marks
as systemd marks a `Delegate=yes` cgroup (the `trusted.delegate` xattr).

On machines whose v2 hierarchy has no controllers (cgroups v1 hybrid) only process
tracking and cgroup.kill can be exercised; the limit cases skip and say so."""

from __future__ import annotations

import os
import re
import secrets
import signal
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.supervisor.containment import (
    cgroup_kill,
    cgroup_pids,
    own_cgroup,
    read_stat,
    remove_cgroup,
)

from .chaos.procs import wait_until
from .conftest import EXAMPLES, ROOT
from .daemon_harness import PY, Daemon, hello, shared_tmpdir


def cgroup_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root to create a cgroup (the suite is not running as root)"
    own = own_cgroup()
    if own is None:
        return "no cgroup v2 hierarchy is mounted for this process"
    if not os.access(own, os.W_OK):
        return f"this process's cgroup {own} is not writable"
    return None


@pytest.fixture
def delegated() -> Iterator[Path]:
    """A fresh cgroup, marked delegated; everything in it is killed and it is removed
    after the test."""
    reason = cgroup_reason()
    if reason:
        pytest.skip(reason)
    own = own_cgroup()
    assert own is not None
    cg = Path(own) / f"corral-test-{os.getpid()}-{secrets.token_hex(3)}"
    cg.mkdir()
    try:
        os.setxattr(cg, "trusted.delegate", b"1")
        yield cg
    finally:
        cgroup_kill(str(cg))
        wait_until(lambda: not any(cgroup_pids(str(p)) for p in [cg, *cg.iterdir()]
                                   if p.is_dir()), 10, "the test cgroup to empty")
        remove_cgroup(str(cg))


@pytest.fixture
def tmp() -> Iterator[Path]:
    d = shared_tmpdir()
    yield d
    import shutil

    shutil.rmtree(d, ignore_errors=True)


AGENTS = textwrap.dedent(f"""
    [agents.escaper]
    command = ["{PY}", "{EXAMPLES}/misbehave.py"]
    env = {{ PYTHONPATH = "{ROOT}", MISBEHAVE = "escape" }}
    stop_timeout = 1.0

    [agents.stubborn]
    command = ["{PY}", "{EXAMPLES}/misbehave.py"]
    env = {{ PYTHONPATH = "{ROOT}", MISBEHAVE = "stubborn" }}
    stop_timeout = 1.0
""")


def procs(cg: Path) -> set[int]:
    return set(cgroup_pids(str(cg)))


def escapee(d: Daemon) -> int:
    out = d.cli("logs", "escaper", "-n", "100").stdout
    pids = re.findall(r"stderr: escaped (\d+)", out)
    assert pids, out
    return int(pids[-1])


def test_each_replica_has_a_cgroup_that_holds_its_escapees_and_stop_empties_it(
        delegated: Path, tmp: Path) -> None:
    d = Daemon(tmp, AGENTS, cgroup=delegated)
    try:
        d.start()
        assert d.proc is not None
        log = (tmp / "state" / "logs" / "corral.log").read_text()
        assert f"cgroups: a cgroup per replica under {delegated} (controllers: " in log
        # the daemon moved itself out of the way, into a leaf of its own
        assert procs(delegated) == set()
        assert procs(delegated / "supervisor") == {d.proc.pid}
        status = d.status()
        esc = escapee(d)
        # the grandchild double-forked and called setsid(): still in its agent's cgroup
        assert procs(delegated / "agent-escaper-0") == {status["escaper#0"]["pid"], esc}
        assert procs(delegated / "agent-stubborn-0") == {status["stubborn#0"]["pid"]}

        assert d.cli("stop", "escaper").returncode == 0
        # cgroup.kill at the exit: the escapee is gone with no scan of /proc
        wait_until(lambda: not procs(delegated / "agent-escaper-0"), 5, "an empty cgroup")
        wait_until(lambda: read_stat(esc) is None or read_stat(esc).state == "Z", 5,  # type: ignore[union-attr]
                   "the escapee to die")
        assert d.cli("start", "escaper").returncode == 0
        wait_until(lambda: d.status()["escaper#0"]["state"] == "ready", 10, "escaper ready")

        # a crash: the stubborn agent outlives the daemon, in its cgroup
        old_stubborn = status["stubborn#0"]["pid"]
        d.proc.send_signal(signal.SIGKILL)
        d.proc.wait(10)
        assert old_stubborn in procs(delegated / "agent-stubborn-0")
        d.start()
        log = (tmp / "state" / "logs" / "corral.log").read_text()
        assert "the previous daemon did not shut down cleanly" in log
        assert old_stubborn not in procs(delegated / "agent-stubborn-0")
        assert read_stat(old_stubborn) is None or read_stat(old_stubborn).state == "Z"  # type: ignore[union-attr]
        status = d.status()
        assert procs(delegated / "agent-stubborn-0") == {status["stubborn#0"]["pid"]}

        # a clean shutdown leaves only the daemon's own (now empty) leaf
        assert d.stop() == 0
        left = sorted(p.name for p in delegated.iterdir() if p.is_dir())
        assert left == ["supervisor"]
        assert procs(delegated / "supervisor") == set()
    finally:
        d.close()


def test_limits_are_written_to_the_controllers_and_an_oom_kill_is_named(
        delegated: Path, tmp: Path) -> None:
    available = set((delegated / "cgroup.controllers").read_text().split())
    if "memory" not in available:
        pytest.skip("the cgroup v2 hierarchy here has no memory controller (cgroups v1 "
                    f"hybrid: {sorted(available) or 'no controllers'} in v2)")
    agents = textwrap.dedent(f"""
        [agents.hog]
        command = ["{PY}", "{EXAMPLES}/misbehave.py"]
        env = {{ PYTHONPATH = "{ROOT}" }}
        restart = "never"
        [agents.hog.limits]
        memory_mb = 400
        processes = 50
        cpu_percent = 50
    """)
    d = Daemon(tmp, agents, cgroup=delegated)
    try:
        d.start()
        cg = delegated / "agent-hog-0"
        assert (cg / "memory.max").read_text().strip() == str(400 * 1024 * 1024)
        if "pids" in available:
            assert (cg / "pids.max").read_text().strip() == "50"
        if "cpu" in available:
            assert (cg / "cpu.max").read_text().strip() == "50000 100000"
        (cg / "memory.max").write_text(str(64 * 1024 * 1024))  # below RLIMIT_AS: OOM
        d.cli("run", "hog", "--input", '{"do": "leak"}')
        wait_until(lambda: d.status()["hog#0"]["state"] == "terminated", 20, "the OOM kill")
        assert "killed by the OOM killer" in d.status()["hog#0"]["last_exit"]
        assert d.stop() == 0
    finally:
        d.close()


def test_a_rolling_restart_leaves_the_new_process_running_in_a_cgroup_of_its_own(
        delegated: Path, tmp: Path) -> None:
    """The old process's end kills its cgroup: the new one, started beside it, is in the
    other one of the replica's two (it was killed with the old one before)."""
    d = Daemon(tmp, hello("h"), cgroup=delegated)
    try:
        d.start()
        old = d.status()["h#0"]["pid"]
        assert procs(delegated / "agent-h-0") == {old}
        assert d.cli("restart", "h", "--rolling").returncode == 0
        new = d.status()["h#0"]
        assert new["pid"] != old
        wait_until(lambda: not procs(delegated / "agent-h-0"), 5, "the old cgroup emptied")
        assert procs(delegated / "agent-h-0.surge") == {new["pid"]}
        assert d.cli("restart", "h", "--rolling").returncode == 0  # and back again
        third = d.status()["h#0"]
        assert procs(delegated / "agent-h-0") == {third["pid"]}
        wait_until(lambda: not procs(delegated / "agent-h-0.surge"), 5, "the surge emptied")
        r = d.cli("run", "h", "--input", '{"name": "x"}')
        assert r.returncode == 0, r.stderr
        assert (d.status()["h#0"]["pid"], d.status()["h#0"]["restarts"]) == (third["pid"], 0)
    finally:
        d.close()


def test_a_deploys_new_processes_outlive_the_old_ones_cgroups(
        delegated: Path, tmp: Path) -> None:
    """A deploy's switch starts every replica's new process beside the old one: each in a
    cgroup the old one's end does not kill."""
    d = Daemon(tmp, "", cgroup=delegated)
    pkg = tmp / "pkg"
    pkg.mkdir()
    (pkg / "hello.py").write_text((EXAMPLES / "hello.py").read_text())
    try:
        d.start()
        for version in ("1", "2"):
            (pkg / "corral.toml").write_text(
                f'[agent]\nname = "p"\nversion = "{version}"\nreplicas = 2\n'
                'command = ["python", "hello.py"]\n')
            r = d.cli("deploy", str(pkg), timeout=120)
            assert r.returncode == 0, r.stderr
        status = d.status()
        pids = {status["p#0"]["pid"], status["p#1"]["pid"]}
        assert procs(delegated / "agent-p-0.surge") | procs(
            delegated / "agent-p-1.surge") == pids
        assert d.cli("run", "p", "--input", '{"name": "x"}').returncode == 0
        status = d.status()
        assert {status["p#0"]["pid"], status["p#1"]["pid"]} == pids
        assert [status[f"p#{i}"]["restarts"] for i in (0, 1)] == [0, 0]
    finally:
        d.close()
