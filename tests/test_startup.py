"""The daemon's start-up parts (daemon/startup.py, decisions 210-212) on real stores and
sockets: an audit row made before the state database opens is held, not lost; a start-up
that fails half-way tears down what it set up."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from corral.daemon.audit import Audit
from corral.daemon.caller import Caller
from corral.daemon.logs import LogHub
from corral.daemon.store import StateStore

TENANT = Caller(via="socket", uid=1234, pid=99, tenant="acme")


def test_an_audit_row_before_the_database_opens_is_written_when_it_does(
        tmp_path: Path) -> None:
    hub = LogHub(None)
    audit = Audit(hub)
    audit(TENANT, "agents.stop", {"names": ["theirs"]}, "error: no agent theirs")
    # said in the daemon's log at once
    (line,) = [ln for ln in hub.tail(["corral"], 10, None) if ln.stream == "audit"]
    assert line.text == ('uid 1234 pid 99: agents.stop {"names":["theirs"]} -> '
                         'error: no agent theirs')
    store = StateStore(tmp_path / "corral.db")
    try:
        assert store.audit_log() == []
        audit.to(store)
        audit(TENANT, "agents.start", {"names": ["theirs"]}, "error: no agent theirs")
        rows = [(r[1], r[2], r[3], r[4], r[5], r[7]) for r in store.audit_log()]
        assert rows == [
            (1234, 99, "agents.stop", '{"names":["theirs"]}', "error: no agent theirs",
             "acme"),
            (1234, 99, "agents.start", '{"names":["theirs"]}', "error: no agent theirs",
             "acme")]
    finally:
        store.close()


async def test_a_start_up_that_fails_half_way_tears_down_what_it_set_up(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The state database cannot open (its path is a directory): the control socket,
    bound before it, is closed and its file gone; no `stopped` line (a stop was not
    asked for); the reason on stderr; exit status 1."""
    from corral.daemon.daemon import Daemon

    from .daemon_harness import config_text

    state = tmp_path / "state"
    (state / "corral.db").mkdir(parents=True)
    sock = tmp_path / "corral.sock"
    config = tmp_path / "corral.toml"
    config.write_text(config_text("", sock, state))
    d = Daemon(config)
    assert await d.run() == 1
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"corral: state database {state}/corral.db cannot be created ({state}/corral.db is "
        "a directory, not a file of corral's own: refused (remove it)): "
        f"set [supervisor] state_dir to a directory uid {os.geteuid()} may write")
    assert not sock.exists()
    assert d.up is None and not d.set_up.is_set()
    assert "stopped" not in (state / "logs" / "corral.log").read_text()
