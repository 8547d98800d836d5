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
from .test_http_api import SOCKET, serving
from .test_teams import AGENT, agents_toml

SCOPES = ["agents:write", "tasks:run", "tasks:read"]


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
        for name, tenant in (("ta", "a"), ("tb", "b")):
            made = await api.d.dispatcher.call(SOCKET, "tokens.create", {
                "name": name, "scopes": SCOPES, "tenant": tenant})
            api.tokens[name] = made.token
        await api.token("op", "admin")

        async def ask(verb: str, path: str, token: str, body: Any = None
                      ) -> tuple[int, Any]:
            status, value, _ = await api.ask(verb, path, token, body=body)
            return status, value

        # added by tenant a: its own agents only, checked as the config loader checks
        assert await ask("POST", "/teams", "ta", {"teams": {"desk": team("a1")}}) == (
            200, {"added": ["desk"]})
        for tables, code, said in (
                ({"other": team("a1", "b1")}, 400,
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
        for verb, path, payload in (
                ("GET", "/teams/desk", None),
                ("PATCH", "/teams/desk", {"set": {"description": "x"}}),
                ("DELETE", "/teams/desk", None),
                ("GET", "/teams/desk/history", None),
                ("POST", "/teams/desk/rollback", {})):
            status, body = await ask(verb, path, "tb", payload)
            assert (status, body["detail"]) == (404, "no such team: desk"), path
        status, body = await ask("POST", "/teams", "tb", {"teams": {"desk": team("b1")}})
        assert (status, body["detail"]) == (409, "team desk already exists")
        status, body = await ask("GET", "/teams", "ta")
        assert [(t["name"], t["revision"]) for t in body["teams"]] == [
            ("cfg", None), ("desk", 1)]

        # a call keeps the definition it started on across a change under it
        status, first = await ask("POST", "/tasks", "ta", {
            "agent": "desk", "input": {"sleep_for": {"a1": 1.0}}})
        assert (status, first["status"]) == (202, "running"), first
        status, body = await ask("PATCH", "/teams/desk", "ta",
                                 {"set": {"members": ["a2"]}})
        assert (status, body) == (200, {"name": "desk", "revision": 2,
                                        "change": "members changed"})
        ended = await api.d.dispatcher.call(SOCKET, "tasks.get", {
            "task_id": first["task_id"], "wait": True})
        assert (ended.status, sorted(ended.output)) == ("succeeded", ["a1"]), ended
        status, body = await ask("POST", "/tasks?wait=60", "ta", {"agent": "desk",
                                                                    "input": {}})
        assert (body["status"], sorted(body["output"])) == ("succeeded", ["a2"]), body
        # a change that does not hold is refused, the team as it was
        status, body = await ask("PATCH", "/teams/desk", "ta", {"set": {"members": ["b1"]}})
        assert (status, body["detail"]) == (400, "teams.update: team desk: member b1: no "
                                                 "such agent")
        status, body = await ask("PATCH", "/teams/desk", "ta", {"set": {"leader": "a1"}})
        assert (status, body["detail"]) == (400, "teams.update: team desk: leader is for "
                                                 "mode coordinate, not broadcast")

        # history, rollback, remove, and back again
        status, body = await ask("POST", "/teams/desk/rollback", "ta", {})
        assert (status, body) == (200, {"name": "desk", "restored": 1, "revision": 3,
                                        "change": "members changed"})
        status, body = await ask("GET", "/teams/desk", "ta")
        assert (body["source"], body["revision"], body["tenant"], body["agents"],
                body["definition"]) == ("runtime", 3, "a", ["a1"], team("a1"))
        assert await ask("DELETE", "/teams/desk", "ta") == (200, {"removed": ["desk"]})
        for path in ("/teams/desk", "/teams/desk/history?limit=0"):
            status, body = await ask("GET", path, "ta")
            assert (status, body["detail"]) == (404, "no such team: desk"), path
        status, body = await ask("POST", "/tasks", "ta", {"agent": "desk", "input": {}})
        assert (status, body["detail"]) == (404, "no such agent: desk (agents: a1, a2)")
        status, body = await ask("GET", "/teams/desk/history", "ta")
        assert body["current"] is None
        assert [(r["revision"], r["who"], r["change"]) for r in body["revisions"]] == [
            (1, "token ta", "created"), (2, "token ta", "members changed"),
            (3, "token ta", "rollback to revision 1: members changed"),
            (4, "token ta", "removed")]
        assert body["revisions"][3]["definition"] is None
        status, body = await ask("POST", "/teams/desk/rollback", "ta", {"revision": 4})
        assert (status, body["detail"]) == (400, "revision 4 of team desk removed it: "
                                                 "name a revision that defines it")
        status, body = await ask("POST", "/teams/desk/rollback", "ta", {"revision": 9})
        assert (status, body["detail"]) == (404, "no revision 9 of team desk (its "
                                                 "revisions: 1..4; see `corral teams "
                                                 "history desk`)")
        status, body = await ask("POST", "/teams/desk/rollback", "ta", {})
        assert (status, body["restored"], body["revision"]) == (200, 3, 5)
        status, body = await ask("POST", "/tasks?wait=60", "ta", {"agent": "desk",
                                                                    "input": {}})
        assert (body["status"], sorted(body["output"])) == ("succeeded", ["a1"]), body
        # the operator's change of a's team is in a's history, and a's to roll back
        status, body = await ask("PATCH", "/teams/desk", "op",
                                 {"set": {"description": "by op"}})
        assert (status, body["revision"], body["change"]) == (
            200, 6, 'description null -> "by op"')
        status, body = await ask("GET", "/teams/desk/history?limit=2", "ta")
        assert [(r["revision"], r["who"]) for r in body["revisions"]] == [
            (5, "token ta"), (6, "token op")]
        status, body = await ask("POST", "/teams/desk/rollback", "ta", {})
        assert (status, body["restored"], body["revision"], body["change"]) == (
            200, 5, 7, 'description "by op" -> null')

        # the config file's teams are the file's
        for verb, path, payload, doing in (
                ("PATCH", "/teams/cfg", {"set": {"description": "x"}}, "change"),
                ("DELETE", "/teams/cfg", None, "remove"),
                ("POST", "/teams/cfg/rollback", {}, "change")):
            status, body = await ask(verb, path, "op", payload)
            assert (status, body["detail"]) == (409, f"team cfg is declared in the config "
                                                     f"file: {doing} it there and `corral "
                                                     "reload`"), path
        status, body = await ask("GET", "/teams/cfg/history", "op")
        assert (status, body["detail"]) == (409, "team cfg is declared in the config file: "
                                                 "its history is the file's")
        status, body = await ask("GET", "/teams/cfg", "op")
        assert (body["source"], body["revision"], body["tenant"], body["definition"]) == (
            "config", None, "a", {"mode": "broadcast", "members": ["a1"], "description": "",
                                  "rules": []})
        # no such team
        for verb, path, payload in (
                ("GET", "/teams/nope", None),
                ("PATCH", "/teams/nope", {"set": {"description": "x"}}),
                ("DELETE", "/teams/nope", None),
                ("GET", "/teams/nope/history", None),
                ("POST", "/teams/nope/rollback", {})):
            status, body = await ask(verb, path, "op", payload)
            assert (status, body["detail"]) == (404, "no such team: nope"), (verb, path)

        # every change audited, with the caller's tenant
        audit = await api.d.dispatcher.call(SOCKET, "audit.list", {"limit": 200})
        changes = [(e.method, e.tenant) for e in audit.entries
                   if e.method.startswith("teams.") and e.outcome == "ok"]
        assert changes == [("teams.add", "a"), ("teams.update", "a"),
                           ("teams.rollback", "a"), ("teams.remove", "a"),
                           ("teams.rollback", "a"), ("teams.update", None),
                           ("teams.rollback", "a")], changes

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
            jsonrpc.INVALID_PARAMS, "teams.add: team py2: member ghost: no such agent")
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
        for verb, path, payload in (("GET", "/teams/mixed", None),
                                    ("PATCH", "/teams/mixed", {"set": {"description": "x"}}),
                                    ("DELETE", "/teams/mixed", None),
                                    ("GET", "/teams/mixed/history", None),
                                    ("POST", "/teams/mixed/rollback", {})):
            status, body, _ = await api.ask(verb, path, "pub", body=payload)
            assert (status, body["detail"]) == (404, "no such team: mixed"), path
        status, body, _ = await api.ask("POST", "/teams", "pub", body={"teams": {
            "sneak": team("pub1", "sec1")}})
        assert (status, body["detail"]) == (400, "teams.add: team sneak: member sec1: no "
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
        r = d.cli("teams", "add", str(path))
        assert (r.returncode, r.stdout) == (0, "added: rt\n"), r.stderr
        r = d.cli("teams", "add", str(path))
        assert (r.returncode, r.stderr.strip()) == (1, "corral: team rt already exists")
        empty = tmp_path / "none.toml"
        empty.write_text("[agents]\n")
        r = d.cli("teams", "add", str(empty))
        assert r.returncode == 2 and f"{empty}: no [teams.NAME] tables" in r.stderr
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
        hist = d.cli("teams", "history", "rt").stdout.splitlines()
        assert [line.split()[0] for line in hist[1:]] == ["1", "2", "*"], hist
        assert hist[3].split()[1] == "3"
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
    import os

    from .test_store_faults import caught_up, disk_full

    d = Daemon(tmp_path, agents_toml(tmp_path, "a b"), extra="task_journal = false")
    db = d.state / "corral.db"
    path = tmp_path / "rt.toml"
    path.write_text('[teams.rt]\nmode = "broadcast"\nmembers = ["a"]\n')
    other = tmp_path / "other.toml"
    other.write_text('[teams.rt2]\nmode = "broadcast"\nmembers = ["b"]\n')

    def refusal(unchanged: str) -> str:
        return (f"corral: state database {db} cannot be written (disk I/O error): "
                f"{unchanged}; free space on its file system, or make it and its directory "
                f"writable by uid {os.geteuid()}\n")

    try:
        d.start()
        assert d.cli("teams", "add", str(path)).returncode == 0
        r = d.cli("teams", "update", "rt", "--set", '{"members": ["b"]}')
        assert r.returncode == 0, r.stderr
        with disk_full(d):
            for argv, unchanged in (
                    (["add", str(other)], "nothing was added"),
                    (["update", "rt", "--set", '{"members": ["a", "b"]}'],
                     "rt was not changed"),
                    (["rollback", "rt"], "rt was not rolled back"),
                    (["remove", "rt"], "nothing was removed")):
                r = d.cli("teams", *argv)
                assert (r.returncode, r.stdout, r.stderr) == (1, "", refusal(unchanged))
        caught_up(d)
        described = d.json("teams", "describe", "rt")
        assert (described["revision"], described["definition"]["members"]) == (2, ["b"])
        assert [t["name"] for t in d.json("teams", "list")["teams"]] == ["rt"]
        r = d.cli("run", "rt", "--input", "1", "--json", timeout=90)
        assert sorted(json.loads(r.stdout)["output"]) == ["b"], r.stderr
    finally:
        d.close()
