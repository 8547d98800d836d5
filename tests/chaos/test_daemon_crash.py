"""Chaos: the daemon is SIGKILLed under load; the next one stops everything the dead one
left running before it starts anything, so no agent runs twice and nothing is orphaned.

The fleet is the awkward kind: an SDK agent with a `subprocess` child, an agent that
ignores stdin EOF and SIGTERM, a bash agent whose tasks leave background jobs, an agent
whose grandchild double-forked and called setsid(), and an agent added at runtime."""

from __future__ import annotations

import os
import re
import signal
import textwrap
from pathlib import Path

import pytest

from corral.supervisor.containment import read_stat

from ..conftest import EXAMPLES, ROOT
from ..daemon_harness import PY, Daemon
from .procs import by_owner, session_leaders_of, still_alive, wait_until

FLEET = textwrap.dedent(f"""
    [agents.sdk]
    command = ["{PY}", "{EXAMPLES}/misbehave.py"]
    env = {{ PYTHONPATH = "{ROOT}", MISBEHAVE = "grandchild" }}
    replicas = 2
    max_concurrent_tasks = 2
    stop_timeout = 1.0

    [agents.stubborn]
    command = ["{PY}", "{EXAMPLES}/misbehave.py"]
    env = {{ PYTHONPATH = "{ROOT}", MISBEHAVE = "stubborn" }}
    stop_timeout = 1.0

    [agents.shell]
    command = ["bash", "{EXAMPLES}/echo.sh"]
    stop_timeout = 1.0

    [agents.escaper]
    command = ["{PY}", "{EXAMPLES}/misbehave.py"]
    env = {{ PYTHONPATH = "{ROOT}", MISBEHAVE = "escape" }}
    stop_timeout = 1.0
""")

LATE = textwrap.dedent(f"""
    [agents.late]
    command = ["{PY}", "{EXAMPLES}/hello.py"]
    env = {{ PYTHONPATH = "{ROOT}" }}
    replicas = 2
    stop_timeout = 1.0
""")

REPLICAS = {"sdk": 2, "stubborn": 1, "shell": 1, "escaper": 1, "late": 2}


def all_serving(d: Daemon) -> bool:
    st = d.status()
    return len(st) == sum(REPLICAS.values()) and all(
        a["state"] in ("ready", "busy", "idle") for a in st.values())


@pytest.mark.timeout(90)
def test_a_sigkilled_daemon_leaves_nothing_running_and_nothing_runs_twice(tmp: Path) -> None:
    d = Daemon(tmp, FLEET)
    try:
        d.start()
        (tmp / "late.toml").write_text(LATE)
        r = d.cli("add", str(tmp / "late.toml"))
        assert r.returncode == 0, r.stderr
        wait_until(lambda: all_serving(d), 30, "every replica serving")
        # load: the bash agent starts background jobs, the SDK agent runs long tasks
        for _ in range(2):
            assert d.cli("run", "shell", "--input", '{"n": 1}').returncode == 0
        for _ in range(3):
            r = d.cli("run", "sdk", "--detach", "--input", '{"do": "sleep", "seconds": 30}')
            assert r.returncode == 0, r.stderr
        assert d.proc is not None
        old_pid = d.proc.pid
        old_agents = {k: a["pid"] for k, a in d.status().items()}
        old = by_owner(old_pid)  # children, grandchildren, the escapee: by spawn token
        # the SDK agents retitle themselves (their environ is overwritten): add them by pid
        for pid in old_agents.values():
            st = read_stat(pid)
            assert st is not None
            old[pid] = st
        escaped = [st for st in old.values() if st.ppid == old_pid and st.sid != st.pid]
        assert escaped, "the escaper's grandchild is not re-parented to the daemon"
        assert len(old) >= sum(REPLICAS.values()) + 2 + 2 + 1

        os.kill(old_pid, signal.SIGKILL)
        d.proc.wait(10)
        # the stubborn agent (and the jobs of the others) outlive the daemon on their own
        assert still_alive(old), "nothing outlived the daemon: the test proves nothing"

        d.start()  # READY=1 only once every agent is up again
        assert not still_alive(old), f"left from the old daemon: {still_alive(old)}"
        assert d.proc.pid != old_pid
        log = (tmp / "state" / "logs" / "corral.log").read_text()
        m = re.search(r"the previous daemon did not shut down cleanly: (\d+) of its "
                      r"processes were still running \((\d+) ended by SIGTERM, (\d+) by "
                      r"SIGKILL\)", log)
        assert m, log[-2000:]
        assert int(m.group(3)) >= 1  # the stubborn one ignores SIGTERM

        wait_until(lambda: all_serving(d), 30, "every replica serving again")
        status = d.status()
        # exactly `replicas` processes per agent: the daemon's session-leading children
        # are the agents in its status, no more, and none is an old one
        leaders = session_leaders_of(d.proc.pid)
        assert leaders == {a["pid"] for a in status.values()}
        for name, n in REPLICAS.items():
            assert sum(1 for k in status if k.startswith(f"{name}#")) == n
        assert not set(old_agents.values()) & leaders

        assert d.stop() == 0
        new_pid = d.proc.pid
        wait_until(lambda: not by_owner(new_pid), 10, "no process of the new daemon left")
    finally:
        d.close()
