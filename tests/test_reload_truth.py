"""A reload says what it applied and nothing else (a new user's trial): a [models] added
to a daemon started without one and a changed `[gateway] listen` are named as needing a
restart, never said to be applied nor taken in silence (decisions 590, 591); a failed
agent's fix whose new process does not become ready is kept, and said truthfully
(decision 592)."""

from __future__ import annotations

import json
import re
import shlex
import textwrap
from pathlib import Path

from .conftest import EXAMPLES, ROOT
from .daemon_harness import PY, hello, running_daemon
from .test_daemon_cli import wait_until

RESTART = ("changed in the file: read at start, not applied until the daemon restarts "
           "(or `corral upgrade`)\n")


def _log(d_state: Path) -> str:
    return (d_state / "logs" / "corral.log").read_text()


def test_models_added_by_a_reload_are_named_as_needing_a_restart(tmp_path: Path) -> None:
    with running_daemon(tmp_path, hello("hello")) as d:
        d.config.write_text(d.config.read_text() + textwrap.dedent("""
            [models.m]
            url = "http://127.0.0.1:9/v1"
            format = "openai"
        """))
        r = d.cli("reload")
        assert (r.returncode, r.stdout) == (0, "nothing changed\n"
                                               "unchanged: 1 agent, 0 MCP servers\n")
        assert r.stderr == f"corral: [models] {RESTART}"
        assert json.loads(d.cli("reload", "--json").stdout)["restart_needed"] == ["[models]"]
        assert ("reload: [models] changed in the file: read at start, not applied until "
                "the daemon restarts\n") in _log(d.state)
        # no model served meanwhile: the gateway's models are none
        assert "m" not in json.dumps(d.json("mcp", "status")["gateway"].get("models", {}))


def test_models_removed_by_a_reload_are_applied(tmp_path: Path) -> None:
    models = '\n[models.m]\nurl = "http://127.0.0.1:9/v1"\nformat = "openai"\n'
    with running_daemon(tmp_path, hello("hello"), extra=models) as d:
        d.config.write_text(d.config.read_text().replace(models, "\n"))
        r = d.cli("reload")
        assert (r.returncode, r.stderr) == (0, "")
        assert r.stdout == ("KIND     NAME  CHANGE\n"
                            "gateway        model m removed\n"
                            "unchanged: 1 agent, 0 MCP servers\n")


def test_a_changed_gateway_listen_is_named_as_needing_a_restart(tmp_path: Path) -> None:
    old, new = tmp_path / "a.sock", tmp_path / "b.sock"
    with running_daemon(tmp_path, hello("hello"),
                        extra=f'\n[gateway]\nlisten = "unix:{old}"\n') as d:
        d.config.write_text(d.config.read_text().replace(f"unix:{old}", f"unix:{new}"))
        r = d.cli("reload")
        # before: the table said `gateway listen 'unix:…a.sock' -> 'unix:…b.sock'`
        assert (r.returncode, r.stdout) == (0, "nothing changed\n"
                                               "unchanged: 1 agent, 0 MCP servers\n")
        assert r.stderr == f"corral: [gateway] listen {RESTART}"
        http = d.json("mcp", "status")["gateway"]["http"]
        assert http["listen"] == f"unix:{old}" and old.exists() and not new.exists()
        # said again on the next reload, until a restart applies it
        assert json.loads(d.cli("reload", "--json").stdout)["restart_needed"] == [
            "[gateway] listen"]
        assert ("reload: [gateway] listen changed in the file: read at start, not applied "
                "until the daemon restarts\n") in _log(d.state)


def test_a_failed_agents_fix_that_does_not_become_ready_is_kept(tmp_path: Path) -> None:
    go = tmp_path / "go"
    broken = textwrap.dedent(f"""
        [agents.u]
        command = ["{PY}", "-c", "raise SystemExit(3)"]
        max_restarts = 0
        start_timeout = 1.0
        stop_timeout = 2.0
    """)
    with running_daemon(tmp_path, broken) as d:
        wait_until(lambda: d.status()["u#0"]["state"] == "failed", what="u failed")
        # the fix: hello, once `go` exists (its first start, before, times out)
        fixed = hello("u", extra="max_restarts = 0\nstart_timeout = 1.0\n").replace(
            f'command = ["{PY}", ',
            f'command = ["/bin/sh", "-c", "while [ ! -e {go} ]; do sleep 0.05; done; '
            f'exec \\"$0\\" \\"$@\\"", "{PY}", ')
        d.config.write_text(d.config.read_text().replace(broken, fixed))
        r = d.cli("reload")
        assert (r.returncode, r.stdout) == (0, "KIND   NAME  CHANGE\n"
                                               "agent  u     failed\n"
                                               "unchanged: 0 agents, 0 MCP servers\n")
        # before: "…; the old one keeps running", of an old one that was not running
        assert re.fullmatch(r"corral: u: rollout of u: replica 0's new process did not "
                            r"become ready: .*; no old process was running \(it had "
                            r"failed\): the new spec is kept, a start runs it\n",
                            r.stderr), r.stderr
        revisions = d.json("history", "u")["revisions"]
        assert [x["revision"] for x in revisions] == [1, 2]
        wait_until(lambda: d.status()["u#0"]["state"] == "failed", what="u failed again")
        go.touch()
        assert d.cli("start", "u").returncode == 0
        # the old command exits 3 at once: only the fix's becomes ready
        wait_until(lambda: d.status()["u#0"]["state"] == "ready", what="u ready")


def test_an_update_of_a_failed_agent_keeps_its_record(tmp_path: Path) -> None:
    # `corral update` rolls out as a reload does: the new spec kept is the one recorded
    # (Fleet._unit takes back only a change not made), so the next daemon starts it too
    go = tmp_path / "go"
    with running_daemon(tmp_path, "") as d:
        table = tmp_path / "u.toml"
        table.write_text(textwrap.dedent(f"""
            [agents.u]
            command = ["{PY}", "-c", "raise SystemExit(3)"]
            env = {{ PYTHONPATH = "{ROOT}" }}
            max_restarts = 0
            start_timeout = 1.0
            stop_timeout = 2.0
        """))
        r = d.cli("add", str(table))
        assert r.returncode == 0, r.stderr
        wait_until(lambda: d.status()["u#0"]["state"] == "failed", what="u failed")
        revisions = len(d.json("history", "u")["revisions"])
        r = d.cli("update", "u", "--command", f"/bin/sh -c 'while [ ! -e {go} ]; do sleep "
                  f"0.05; done; exec \"$0\" \"$@\"' {shlex.quote(PY)} "
                  f"{shlex.quote(f'{EXAMPLES}/hello.py')}")  # (a path may hold a space)
        assert r.returncode == 1
        assert re.fullmatch(r"corral: rollout of u: replica 0's new process did not become "
                            r"ready: .*; no old process was running \(it had failed\): the "
                            r"new spec is kept, a start runs it\n", r.stderr), r.stderr
        assert len(d.json("history", "u")["revisions"]) == revisions + 1
        assert "examples/hello.py" in d.json("describe", "u")["spec"]["command"]
        wait_until(lambda: d.status()["u#0"]["state"] == "failed", what="u failed again")
        go.touch()
        assert d.cli("start", "u").returncode == 0
        wait_until(lambda: d.status()["u#0"]["state"] == "ready", what="u ready")
        assert d.stop() == 0  # the record is the fix: the next daemon starts it
        d.start()
        wait_until(lambda: d.status()["u#0"]["state"] == "ready", what="u back")
        assert "examples/hello.py" in d.json("describe", "u")["spec"]["command"]


def test_a_rolling_restart_of_a_failed_agent_says_none_was_running(tmp_path: Path) -> None:
    broken = textwrap.dedent(f"""
        [agents.u]
        command = ["{PY}", "-c", "raise SystemExit(3)"]
        max_restarts = 0
        stop_timeout = 2.0
    """)
    with running_daemon(tmp_path, broken) as d:
        wait_until(lambda: d.status()["u#0"]["state"] == "failed", what="u failed")
        r = d.cli("restart", "u", "--rolling")
        assert r.returncode == 1
        # before: "…; the old one keeps running"
        assert re.fullmatch(r"corral: rollout of u: replica 0's new process did not become "
                            r"ready: .*exited with status 3.*; no old process was running "
                            r"\(it had failed\)\n", r.stderr), r.stderr
        assert d.status()["u#0"]["state"] == "failed"


def test_a_revision_is_recorded_only_for_a_real_change(tmp_path: Path) -> None:
    """An imported agent's `exit_codes = [0, 2]` and `retry_on` made a revision at every
    daemon start and a spurious `exit_codes [0, 2] -> (0, 2)` in every update's text
    (issue 78): a start that changed nothing records nothing, and a change says itself
    alone."""
    agent = hello("imp", extra='exit_codes = [0, 2]\nretry_on = ["lost", "failed"]\n')
    with running_daemon(tmp_path, agent) as d:
        first = d.json("history", "imp")["revisions"]
        assert [r["revision"] for r in first] == [1], first
        d.stop()
        d.start()
        assert d.json("history", "imp")["revisions"] == first
        d.config.write_text(d.config.read_text().replace("replicas = 1", "replicas = 2"))
        assert d.cli("reload").returncode == 0
        revs = d.json("history", "imp")["revisions"]
        assert [r["revision"] for r in revs] == [1, 2], revs
        assert revs[1]["change"] == "replicas 1 -> 2"
