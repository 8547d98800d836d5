"""`corral update NAME`: a runtime agent changed in place as a revision, rolled out as a
reload is, kept across a daemon restart; every refusal changes nothing (issue 36,
"Habits")."""

from __future__ import annotations

import json
import shlex
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import EXAMPLES, ROOT
from .daemon_harness import PY, Daemon, running_daemon, shared_tmpdir
from .test_daemon_cli import wait_until
from .test_http_api import serving
from .test_tasks_cli import misbehave


@pytest.fixture
def d() -> Iterator[Daemon]:
    with running_daemon(shared_tmpdir(), misbehave("declared")) as daemon:
        yield daemon


def env_of(d: Daemon, name: str) -> dict[str, str]:
    r = d.cli("run", name, "--input", '{"do": "env"}')
    assert r.returncode == 0, r.stderr
    out: dict[str, str] = json.loads(r.stdout)
    return out


def test_an_agent_is_changed_in_place_as_a_revision(d: Daemon) -> None:
    r = d.cli("add", "--name", "u", "--command", shlex.join([PY, f"{EXAMPLES}/misbehave.py"]),
              "--env", f"PYTHONPATH={ROOT}", "--env", "OLD=1", "--replicas", "2")
    assert r.returncode == 0, r.stderr
    wait_until(lambda: all(d.status()[f"u#{i}"]["state"] == "ready" for i in (0, 1)),
               what="u ready")
    pids = {d.status()[f"u#{i}"]["pid"] for i in (0, 1)}
    r = d.cli("update", "u", "--env", "NEW=2", "--unset-env", "OLD")
    assert (r.returncode, r.stdout) == (0, "u: revision 2: env.NEW added, env.OLD removed\n"), (
        r.stdout, r.stderr)
    env = env_of(d, "u")
    assert env["NEW"] == "2" and "OLD" not in env
    # rolled: every replica replaced, each new one ready first
    st = d.status()
    assert {st[f"u#{i}"]["pid"] for i in (0, 1)}.isdisjoint(pids)
    assert all(st[f"u#{i}"]["state"] in ("ready", "idle") for i in (0, 1)), st
    # any key, into tables; the same again changes nothing
    r = d.cli("update", "u", "--set", "limits.memory_mb=300", "--set", "task_timeout=9.5")
    assert r.returncode == 0 and r.stdout.startswith("u: revision 3: "), r.stdout
    spec = d.json("describe", "u")["spec"]
    assert (spec["limits"]["memory_mb"], spec["task_timeout"]) == (300, 9.5)
    assert d.cli("update", "u", "--set", "task_timeout=9.5").stdout == "u: no change\n"
    history = d.json("history", "u")["revisions"]
    assert [h["revision"] for h in history] == [1, 2, 3]
    # kept across a restart of the daemon
    assert d.stop() == 0
    d.start()
    wait_until(lambda: d.status().get("u#1", {}).get("state") == "ready", what="u back")
    assert env_of(d, "u")["NEW"] == "2"
    assert d.json("describe", "u")["spec"]["limits"]["memory_mb"] == 300


def test_a_refused_update_changes_nothing(d: Daemon) -> None:
    assert d.cli("add", "--name", "u", "--command", shlex.join([PY, f"{EXAMPLES}/misbehave.py"]),
                 "--env", f"PYTHONPATH={ROOT}").returncode == 0
    wait_until(lambda: d.status()["u#0"]["state"] == "ready", what="u ready")
    pid = d.status()["u#0"]["pid"]
    for args, code, said in (
            (("declared", "--replicas", "2"), 1,
             "corral: agent declared is declared in the config file: change it there and "
             "`corral reload`\n"),
            (("nobody", "--replicas", "2"), 1, None),
            (("u", "--command", "/no/such/program"), 1,
             "corral: agents.update: agents.u.command: /no/such/program: no such file "
             "(/no/such/program) (--no-check to update it anyway)\n"),
            (("u", "--set", "replicas=-1"), 1, None),
            (("u",), 2, None),
            (("u", "--set", "oops"), 2, None)):
        r = d.cli("update", *args)
        assert r.returncode == code, (args, r.stdout, r.stderr)
        if said is not None:
            assert r.stderr == said, (args, r.stderr)
    assert d.status()["u#0"]["pid"] == pid
    assert [h["revision"] for h in d.json("history", "u")["revisions"]] == [1]
    # a new command that does not come up: refused, the running replica kept
    r = d.cli("update", "u", "--command", shlex.join([PY, "-c", "raise SystemExit(3)"]))
    assert (r.returncode, r.stderr) == (1, "corral: rollout of u stopped at replica 0: the "
                                           "new process did not become ready: exited with "
                                           "status 3; the old one keeps running\n")
    assert d.status()["u#0"]["pid"] == pid
    assert [h["revision"] for h in d.json("history", "u")["revisions"]] == [1]


@pytest.mark.deadline(120)
async def test_patch_over_http_is_the_same_update(tmp_path: Path) -> None:
    async with serving(tmp_path, "") as api:
        await api.token("op", "agents:write", "agents:read")
        await api.token("reader", "agents:read")
        status, body, _ = await api.ask("POST", "/agents", "op", {"agents": {"p": {
            "command": [PY, f"{EXAMPLES}/misbehave.py"], "env": {"PYTHONPATH": str(ROOT)}}}})
        assert status == 200, body
        status, body, _ = await api.ask("PATCH", "/agents/p", "op",
                                        {"set": {"env": {"V": "2"}, "replicas": 2}})
        assert (status, body) == (200, {"name": "p", "revision": 2,
                                        "change": "env.V added, replicas 1 -> 2"}), body
        assert len(api.d.sup.agents["p"].replicas) == 2
        # the scope first; then what the body may hold
        status, body, _ = await api.ask("PATCH", "/agents/p", "reader", {"set": {"x": 1}})
        assert status == 403, body
        status, body, _ = await api.ask("PATCH", "/agents/p", "op", {"set": {"replicas": -1}})
        assert status == 400, body
        status, body, _ = await api.ask("PATCH", "/agents/p", "op", {"replicas": 3})
        assert status == 400, body
        assert api.d.services.fleet.revision_of("p") == 2
