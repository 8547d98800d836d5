"""Teams changed at runtime (issue 40): added, changed, removed and rolled back over HTTP
and the CLI, each change a revision kept in the state database and audited; a tenant's
token sees and changes only its own, a glob-limited one only the teams whose every agent
it sees; a call keeps the definition it started on; the next daemon restores them; the
Python API adds one as `teams add` does; every refusal said exactly."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import msgspec
import pytest

from corral import jsonrpc
from corral import methods as m
from corral.jsonrpc import RpcError
from corral.supervisor.teams import TeamSpec

from .conftest import ROOT
from .daemon_harness import PY, Daemon
from .deflife import (
    SCOPES,
    audited,
    cli_added_once,
    cli_history_of_three,
    lifes_changes,
    operators_change_rolled_back,
    refused_on_a_full_disk,
    rolled_back_removed_restored,
    tenant_tokens,
    the_files_own,
    unseen,
)
from .test_http_api import SOCKET, serving
from .test_teams import AGENT, agents_toml


def team(*members: str, mode: str = "broadcast", **more: Any) -> dict[str, Any]:
    return {"mode": mode, "members": list(members), **more}


def tenant_agents(tmp_path: Path, *pairs: tuple[str, str]) -> str:
    script = tmp_path / "teamagent.py"
    script.write_text(AGENT)
    return "".join(textwrap.dedent(f"""
        [agents.{n}]
        command = ["{PY}", "{script}"]
        env = {{ PYTHONPATH = "{ROOT}", ROLE = "{n}" }}
        tenant = "{t}"
        """) for n, t in pairs)


CFG = """
[teams.cfg]
mode = "broadcast"
members = ["a1"]
"""


@pytest.mark.deadline(180)
async def test_runtime_teams_over_http_with_revisions_and_tenants(tmp_path: Path) -> None:
    fleet = (tenant_agents(tmp_path, ("a1", "a"), ("a2", "a"), ("b1", "b"))
             + "[tenants.a]\n[tenants.b]\n" + CFG)
    async with serving(tmp_path, fleet) as api:
        ask = await tenant_tokens(api)

        # added by tenant a: its own agents only, checked as the config loader checks
        assert await ask("POST", "/teams", "ta", {"teams": {"desk": team("a1")}}) == (
            200, {"added": ["desk"]})
        for tables, code, said in (
                ({"other": team("a1", "b1")}, 404,  # a member there is not: a 404
                 "teams.add: team other: member b1: no such agent"),
                ({"b1": team("a1")}, 400,
                 "teams.add: team b1: an agent has its name (a task names one or the other)"),
                ({"bad": team("a1", mode="vote")}, 400,
                 "teams.add: teams.bad.mode: Invalid enum value 'vote' (valid: "
                 "'broadcast', 'coordinate', 'route')"),
                ({"two": team("a1"), "nest": team("a1", "two")}, 400,
                 "teams.add: team nest: member two is a team (a team's member is an agent; "
                 "teams do not nest)"),
                ({"x__y": team("a1")}, 400,
                 "teams.add: team x__y: a team name may not contain '__' (it separates "
                 "team and member in a leader's tool TEAM__MEMBER)"),
                ({"desk": team("a2")}, 409, "team desk already exists"),
                ({"cfg": team("a2")}, 409, "team cfg already exists")):
            status, body = await ask("POST", "/teams", "ta", {"teams": tables})
            assert (status, body["detail"]) == (code, said), tables
        # tenant b sees none of it, and cannot take its name
        status, body = await ask("GET", "/teams", "tb")
        assert (status, body["teams"]) == (200, [])
        await unseen(ask, "team", "desk", "tb", {"description": "x"})
        status, body = await ask("POST", "/teams", "tb", {"teams": {"desk": team("b1")}})
        assert (status, body["detail"]) == (409, "team desk already exists")
        status, body = await ask("GET", "/teams", "ta")
        assert [(t["name"], t["revision"]) for t in body["teams"]] == [
            ("cfg", None), ("desk", 1)]

        # a call keeps the definition it started on across a change under it (its member
        # held until the change is made: a second's sleep could end first on a loaded host)
        gate = tmp_path / "go"
        status, first = await ask("POST", "/tasks", "ta", {
            "agent": "desk", "input": {"hold_for": {"a1": str(gate)}}})
        assert (status, first["status"]) == (202, "running"), first
        status, body = await ask("PATCH", "/teams/desk", "ta",
                                 {"set": {"members": ["a2"]}})
        assert (status, body) == (200, {"name": "desk", "revision": 2,
                                        "change": "members changed"})
        gate.touch()
        ended = await api.d.dispatcher.call(SOCKET, "tasks.get", {
            "task_id": first["task_id"], "wait": True})
        assert (ended.status, sorted(ended.output)) == ("succeeded", ["a1"]), ended
        status, body = await ask("POST", "/tasks?wait=60", "ta", {"agent": "desk",
                                                                    "input": {}})
        assert (body["status"], sorted(body["output"])) == ("succeeded", ["a2"]), body
        # a change that does not hold is refused, the team as it was
        status, body = await ask("PATCH", "/teams/desk", "ta", {"set": {"members": ["b1"]}})
        assert (status, body["detail"]) == (404, "teams.update: team desk: member b1: no "
                                                 "such agent")
        status, body = await ask("PATCH", "/teams/desk", "ta", {"set": {"leader": "a1"}})
        assert (status, body["detail"]) == (400, "teams.update: team desk: leader is for "
                                                 "mode coordinate, not broadcast")

        # history, rollback, remove, and back again
        async def not_called() -> None:
            status, body = await ask("POST", "/tasks", "ta", {"agent": "desk", "input": {}})
            assert (status, body["detail"]) == (404, "no such agent: desk (agents: a1, a2)")
        await rolled_back_removed_restored(ask, "team", "desk", "ta", "members changed",
                                           ("runtime", 3, "a", ["a1"], team("a1")),
                                           not_called)
        status, body = await ask("POST", "/tasks?wait=60", "ta", {"agent": "desk",
                                                                    "input": {}})
        assert (body["status"], sorted(body["output"])) == ("succeeded", ["a1"]), body
        await operators_change_rolled_back(ask, "team", "desk", "ta")

        # the config file's teams are the file's
        await the_files_own(ask, "team", "cfg", {"description": "x"})
        status, body = await ask("GET", "/teams/cfg", "op")
        assert (body["source"], body["revision"], body["tenant"], body["definition"]) == (
            "config", None, "a", {"mode": "broadcast", "members": ["a1"], "description": "",
                                  "rules": []})
        # no such team
        await unseen(ask, "team", "nope", "op", {"description": "x"})

        # every change audited, with the caller's tenant
        changes = lifes_changes("team")
        assert await audited(api, "team", len(changes)) == changes

        # the Python API: as `teams add`, kept and revisioned
        teams = api.d.services.teams
        assert await teams.add_team("py", team("b1")) == 1
        assert "py" in teams and teams.tenant_of("py") == "b"
        await teams.remove_team("py")
        assert "py" not in teams
        spec = msgspec.convert(team("a2"), TeamSpec)
        assert await teams.add_team("py", spec) == 3  # created, removed, created
        with pytest.raises(RpcError) as refused:
            await teams.add_team("py2", team("ghost"))
        assert (refused.value.code, refused.value.message) == (
            jsonrpc.NOT_FOUND, "teams.add: team py2: member ghost: no such agent")
        ran = await api.d.dispatcher.call(SOCKET, "tasks.run", m.TasksRun(
            agent="py", input=msgspec.Raw(b"1")))
        assert (ran.status, ran.output["a2"]["output"]) == ("succeeded",
                                                           {"who": "a2", "got": 1})


@pytest.mark.deadline(120)
async def test_a_glob_token_sees_only_the_teams_whose_every_agent_it_sees(
        tmp_path: Path) -> None:
    async with serving(tmp_path, agents_toml(tmp_path, "pub1 pub2 sec1")) as api:
        await api.token("op", "admin")
        await api.token("pub", *SCOPES, agents="pub*")
        status, _, _ = await api.ask("POST", "/teams", "op", body={"teams": {
            "open": team("pub1", "pub2"), "mixed": team("pub1", "sec1")}})
        assert status == 200
        status, body, _ = await api.ask("GET", "/teams", "pub")
        assert [t["name"] for t in body["teams"]] == ["open"]

        async def ask(verb: str, path: str, token: str, body: Any = None
                      ) -> tuple[int, Any]:
            status, value, _ = await api.ask(verb, path, token, body=body)
            return status, value
        await unseen(ask, "team", "mixed", "pub", {"description": "x"})
        status, body, _ = await api.ask("POST", "/teams", "pub", body={"teams": {
            "sneak": team("pub1", "sec1")}})
        assert (status, body["detail"]) == (404, "teams.add: team sneak: member sec1: no "
                                                 "such agent")
        status, body, _ = await api.ask("PATCH", "/teams/open", "pub",
                                        body={"set": {"members": ["pub2"]}})
        assert (status, body["revision"]) == (200, 2)


TEAM_FILE = """
[teams.rt]
mode = "route"
members = ["a", "b"]
default = "b"
description = "added at runtime"
[[teams.rt.rules]]
ref = "$input.topic"
equals = "billing"
member = "a"
"""


def test_runtime_teams_from_the_cli_survive_a_restart(tmp_path: Path) -> None:
    d = Daemon(tmp_path, agents_toml(tmp_path, "a b"))
    try:
        d.start()
        path = tmp_path / "rt.toml"
        path.write_text(textwrap.dedent(TEAM_FILE))
        cli_added_once(d, "team", path, "rt")
        empty = tmp_path / "none.toml"
        empty.write_text("[agents]\n")
        r = d.cli("teams", "add", str(empty))
        assert (r.returncode, r.stderr) == (1, f"corral: {empty}: no [teams.NAME] tables\n")
        listed = d.cli("teams", "list").stdout.splitlines()
        assert listed[1].split()[:5] == ["rt", "route", "a,", "b", "rev"], listed
        r = d.cli("teams", "update", "rt", "--set", '{"default": "a"}')
        assert r.stdout == 'rt: revision 2: default "b" -> "a"\n', r.stderr
        r = d.cli("teams", "update", "rt", "--set", '{"default": "c"}')
        assert (r.returncode, r.stderr.strip()) == (
            1, "corral: teams.update: team rt: default c is not a member (members: a, b)")
        assert d.stop() == 0
        d.start()
        described = d.json("teams", "describe", "rt")
        assert (described["revision"], described["definition"]["default"]) == (2, "a")
        r = d.cli("run", "rt", "--input", '{"topic": "other"}', "--json", timeout=90)
        assert json.loads(r.stdout)["output"]["who"] == "a", r.stderr
        r = d.cli("teams", "rollback", "rt")
        assert r.stdout == 'rt: rolled back to revision 1 (now revision 3): default "a" -> ' \
                           '"b"\n', r.stderr
        r = d.cli("run", "rt", "--input", '{"topic": "other"}', "--json", timeout=90)
        assert json.loads(r.stdout)["output"]["who"] == "b", r.stderr
        cli_history_of_three(d, "team", "rt")
        r = d.cli("teams", "describe", "rt")
        assert r.stdout.startswith("team rt (added at runtime, revision 3, tenant default)\n"
                                    "agents: a, b\n")
        r = d.cli("teams", "remove", "rt")
        assert r.stdout == "removed: rt\n"
        assert d.stop() == 0
        d.start()
        for argv in (["describe", "rt"], ["remove", "rt"],
                     ["update", "rt", "--set", '{"default": "a"}']):
            r = d.cli("teams", *argv)
            assert (r.returncode, r.stderr.strip()) == (1, "corral: no such team: rt"), argv
        r = d.cli("teams", "rollback", "rt", "2")
        assert r.stdout == 'rt: rolled back to revision 2 (now revision 5): created\n', \
            r.stderr
        assert d.json("teams", "describe", "rt")["definition"]["default"] == "a"
    finally:
        d.close()


def test_a_team_whose_member_went_is_refused_when_called(tmp_path: Path) -> None:
    """A member removed after the team was added: the team stays (its history too), and
    a call of it is refused with the member named; the team restored after a restart."""
    d = Daemon(tmp_path, agents_toml(tmp_path, "a"))
    try:
        d.start()
        extra = tmp_path / "x.toml"
        extra.write_text(agents_toml(tmp_path, "b"))
        assert d.cli("add", str(extra)).returncode == 0, "add b"
        path = tmp_path / "rt.toml"
        path.write_text('[teams.both]\nmode = "broadcast"\nmembers = ["a", "b"]\n')
        assert d.cli("teams", "add", str(path)).returncode == 0
        assert d.cli("remove", "b").returncode == 0
        r = d.cli("run", "both", "--input", "1")
        assert (r.returncode, r.stderr.strip()) == (
            1, "corral: team both: member b: no such agent"), r.stdout
        assert d.stop() == 0
        d.start()
        assert d.json("teams", "describe", "both")["revision"] == 1
        r = d.cli("teams", "update", "both", "--set", '{"members": ["a"]}')
        assert r.stdout == "both: revision 2: members changed\n", r.stderr
        r = d.cli("run", "both", "--input", "1", "--json", timeout=90)
        assert json.loads(r.stdout)["status"] == "succeeded", r.stderr
    finally:
        d.close()


def test_team_changes_that_cannot_be_recorded_are_refused_with_nothing_changed(
        tmp_path: Path) -> None:
    """A full disk: each change of a runtime team refused before it takes effect, with
    what was not done; the team as it was, and called as it was."""
    from .test_store_faults import caught_up

    d = Daemon(tmp_path, agents_toml(tmp_path, "a b"), extra="task_journal = false")
    path = tmp_path / "rt.toml"
    path.write_text('[teams.rt]\nmode = "broadcast"\nmembers = ["a"]\n')
    other = tmp_path / "other.toml"
    other.write_text('[teams.rt2]\nmode = "broadcast"\nmembers = ["b"]\n')
    try:
        d.start()
        assert d.cli("teams", "add", str(path)).returncode == 0
        r = d.cli("teams", "update", "rt", "--set", '{"members": ["b"]}')
        assert r.returncode == 0, r.stderr
        refused_on_a_full_disk(d, "team", other, "rt", '{"members": ["a", "b"]}')
        caught_up(d)
        described = d.json("teams", "describe", "rt")
        assert (described["revision"], described["definition"]["members"]) == (2, ["b"])
        assert [t["name"] for t in d.json("teams", "list")["teams"]] == ["rt"]
        r = d.cli("run", "rt", "--input", "1", "--json", timeout=90)
        assert sorted(json.loads(r.stdout)["output"]) == ["b"], r.stderr
    finally:
        d.close()
