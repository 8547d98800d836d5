"""`corral tools call` held for a person while `corral upgrade` drains (decision 2156): the
upgrade does not wait for the person. The drain answers the call unfinished once its
DRAIN_WAIT is over (a request it does not know to be a person's wait), the operator is
told to ask again, the ask is withdrawn by the next image (its caller gone), and the
call asked again there is held anew and made once its new ask is approved. A real
daemon, the real CLI, a real MCP server whose tool's description drifted."""

from __future__ import annotations

import subprocess

import pytest

from .daemon_harness import Daemon, corral_popen, shared_tmpdir
from .test_daemon_cli import wait_until
from .test_tool_pins import PULLED, TRUSTED, fleet


def _held(d: Daemon, url: str) -> tuple[subprocess.Popen[str], str]:
    """`corral tools call` of the drifted tool, once it is told the ask it waits for."""
    calling = corral_popen(
        ["--socket", str(d.sock), "tools", "call", "drift__fetch", "--args",
         f'{{"url": "{url}"}}'], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert calling.stderr is not None
    told = calling.stderr.readline()
    [ask] = d.ask("approvals.list")["asks"]
    assert ask["id"] in told and ask["subject"]["arguments"] == {"url": url}, told
    return calling, ask["id"]


@pytest.mark.deadline(180)
def test_a_call_held_for_a_person_is_withdrawn_by_an_upgrade_and_asked_again() -> None:
    tmp = shared_tmpdir()
    (tmp / "description").write_text(TRUSTED)
    d = Daemon(tmp, fleet(tmp))
    calls: list[subprocess.Popen[str]] = []
    try:
        d.start()
        first = d.cli("tools", "call", "drift__fetch", "--args", '{"url": "a"}')
        assert first.returncode == 0, first.stderr
        d.stop()
        (d.dir / "description").write_text(PULLED)
        d.start()
        calling, ask = _held(d, "x")
        calls.append(calling)
        upgraded = d.cli("upgrade", timeout=120)
        assert upgraded.returncode == 0, upgraded.stderr + upgraded.stdout
        version = d.json("upgrade", "--report")["to_version"]
        out, err = calling.communicate(timeout=60)
        assert (calling.returncode, out, err) == (3, "", (
            f"corral: the corral daemon is upgrading to corral {version}: it ended this "
            "call unfinished; what it did stands (a task it submitted runs on: see "
            "`corral tasks`), ask again\n"))
        ended = wait_until(lambda: (a := d.ask("approvals.get", {"id": ask}))["end"] and a,
                           30, "the ask's end")
        assert (ended["end"], ended["by"], d.ask("approvals.list")["asks"]) == (
            "withdrawn", "corral", [])
        # asked again: a new ask, and the call made once it is approved
        again, second = _held(d, "x")
        calls.append(again)
        assert second != ask
        approved = d.cli("approvals", "approve", second)
        assert approved.returncode == 0, approved.stderr
        out, err = again.communicate(timeout=60)
        assert (again.returncode, out, err) == (0, "fetched x\n", "")
        assert d.ask("approvals.get", {"id": ask})["end"] == "withdrawn"
    finally:
        for c in calls:
            c.kill()
            c.wait()
        d.close()
