"""A one-shot agent that exits cleanly is done, not a failure (issue 57 item 4): `corral
status` says `done` and exits 0 for it, and 3 still for one that exited otherwise."""

from __future__ import annotations

import textwrap

from .daemon_harness import running_daemon, shared_tmpdir
from .test_daemon_cli import wait_until

ONCE = textwrap.dedent("""
    [agents.migrate]
    command = ["sh", "-c", "exit 2"]
    protocol = "none"
    restart = "never"
    exit_codes = [0, 2]
""")
BAD = textwrap.dedent("""
    [agents.broken]
    command = ["sh", "-c", "exit 1"]
    protocol = "none"
    restart = "never"
""")


def test_a_clean_one_shot_is_done_and_status_exits_0() -> None:
    with running_daemon(shared_tmpdir(), ONCE + BAD) as d:
        wait_until(lambda: all(a["state"] == "terminated" for a in d.status().values()),
                   what="both ended")
        st = d.status()
        assert (st["migrate#0"]["done"], st["broken#0"]["done"]) == (True, False)
        r = d.cli("status", "migrate")
        assert r.returncode == 0, r.stdout
        row = r.stdout.splitlines()[1].split()
        assert row[:2] == ["migrate#0", "done"]
        assert d.cli("status", "broken").returncode == 3
        assert d.cli("status").returncode == 3
