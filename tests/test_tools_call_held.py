"""`corral tools call` of a call held for a person (docs/security.md#tool-pins): a real
daemon, the real CLI, a real MCP server (tests/servers/drifting_mcp.py) whose tool's
description is rewritten between two starts. The operator is told on stderr the ask the
call waits for, and the call waits for the person's decision past the client's timeout
(which is for the daemon's answer, not a person's): it printed nothing and gave up at
that timeout before."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator

import pytest

from .daemon_harness import Daemon, corral_popen, shared_tmpdir
from .test_daemon_cli import wait_until
from .test_tool_pins import PULLED, TRUSTED, fleet


@pytest.fixture
def daemon() -> Iterator[Daemon]:
    tmp = shared_tmpdir()
    (tmp / "description").write_text(TRUSTED)
    d = Daemon(tmp, fleet(tmp))
    try:
        d.start()
        yield d
    finally:
        d.close()


@pytest.mark.deadline(120)
def test_a_held_call_names_its_ask_and_waits_for_the_persons_decision(
        daemon: Daemon) -> None:
    d = daemon
    first = d.cli("tools", "call", "drift__fetch", "--args", '{"url": "a"}')
    assert (first.returncode, first.stdout, first.stderr) == (0, "fetched a\n", "")
    d.stop()
    (d.dir / "description").write_text(PULLED)
    d.start()
    # a client's timeout far shorter than a person's decision
    calling = corral_popen(
        ["--socket", str(d.sock), "tools", "call", "drift__fetch", "--args", '{"url": "x"}'],
        env={**os.environ, "CORRAL_CLIENT_TIMEOUT": "1"}, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    try:
        assert calling.stderr is not None
        told = calling.stderr.readline()
        [ask] = d.ask("approvals.list")["asks"]
        assert told == (f"corral: drift__fetch: waits for a person's decision on ask "
                        f"{ask['id']}: `corral approvals approve {ask['id']}` (or deny)\n")
        assert ask["subject"]["arguments"] == {"url": "x"}
        # twice the client's timeout on, it waits still, its ask pending
        with pytest.raises(subprocess.TimeoutExpired):
            calling.wait(2)
        assert [a["id"] for a in d.ask("approvals.list")["asks"]] == [ask["id"]]
        approved = d.cli("approvals", "approve", ask["id"])
        assert approved.returncode == 0, approved.stderr
        out, err = calling.communicate(timeout=60)
        assert (calling.returncode, out, err) == (0, "fetched x\n", "")
    finally:
        calling.kill()
        calling.wait()
    # drifted again, the next call held: the operator gives up on it (Ctrl-C), and its
    # ask is withdrawn, so no approval makes the call later (it stayed pending on the
    # tree before, the call's handler waiting on for it)
    d.stop()
    (d.dir / "description").write_text(TRUSTED + " Again.")
    d.start()
    calling = corral_popen(
        ["--socket", str(d.sock), "tools", "call", "drift__fetch", "--args", '{"url": "y"}'],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert calling.stderr is not None
        told = calling.stderr.readline()
        [ask] = d.ask("approvals.list")["asks"]
        assert ask["id"] in told and ask["subject"]["arguments"] == {"url": "y"}, told
        calling.send_signal(signal.SIGINT)
        assert calling.wait(30) == 130
        ended = wait_until(lambda: (a := d.ask("approvals.get", {"id": ask["id"]}))["end"]
                           and a, 30, "the ask's end")
        assert (ended["end"], d.ask("approvals.list")["asks"]) == ("withdrawn", [])
    finally:
        calling.kill()
        calling.wait()
