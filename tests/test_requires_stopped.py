"""An agent whose requirement is stopped by hand is stopped too, as systemd's Requires=
stops a unit whose required unit is stopped (issue 57 item 4): the daemon's log says why,
it stays stopped when the requirement is started again, and a restart of the requirement
stops nothing."""

from __future__ import annotations

import textwrap

from .daemon_harness import running_daemon, shared_tmpdir
from .test_daemon_cli import wait_until

FLEET = textwrap.dedent("""
    [agents.db]
    command = ["sleep", "600"]
    protocol = "none"

    [agents.app]
    command = ["sleep", "600"]
    protocol = "none"
    requires = ["db"]

    [agents.web]
    command = ["sleep", "600"]
    protocol = "none"
    requires = ["app"]

    [agents.other]
    command = ["sleep", "600"]
    protocol = "none"
""")


def states(d: object) -> dict[str, str]:
    return {k: s["state"] for k, s in d.status().items()}  # type: ignore[attr-defined]


def test_a_requirement_stopped_by_hand_stops_those_that_require_it() -> None:
    with running_daemon(shared_tmpdir(), FLEET) as d:
        wait_until(lambda: set(states(d).values()) == {"ready"}, what="all ready")
        pids = {k: s["pid"] for k, s in d.status().items()}
        assert d.cli("restart", "db").returncode == 0
        wait_until(lambda: d.status()["db#0"]["state"] == "ready"
                   and d.status()["db#0"]["pid"] != pids["db#0"], what="db restarted")
        # a restart of the requirement stopped nothing
        assert {k: s["pid"] for k, s in d.status().items() if k != "db#0"} == {
            k: p for k, p in pids.items() if k != "db#0"}

        assert d.cli("stop", "db").returncode == 0
        wait_until(lambda: states(d) == {"db#0": "terminated", "app#0": "terminated",
                                         "web#0": "terminated", "other#0": "ready"},
                   what="app and web stopped with db")
        said = (d.state / "logs" / "corral.log").read_text()
        assert ("agent app is stopped: it requires db, which was stopped (`corral start db "
                "app` starts both)") in said
        assert ("agent web is stopped: it requires app, which was stopped (`corral start "
                "app web` starts both)") in said
        assert d.cli("start", "db").returncode == 0
        wait_until(lambda: states(d)["db#0"] == "ready", what="db started again")
        assert (states(d)["app#0"], states(d)["web#0"]) == ("terminated", "terminated")
