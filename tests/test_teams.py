"""Teams (docs/teams.md): definitions checked on load with exact messages; a real daemon's
teams called as agents are (`corral run TEAM`, `corral submit`, `corral task ID`), in each
mode; a member failing; a leader calling its members as tools; a call resumed after the
daemon's SIGKILL with no member that succeeded run again."""

from __future__ import annotations

import json
import os
import signal
import textwrap
from pathlib import Path
from typing import Any

import pytest

from corral.daemon.caller import Caller
from corral.jsonrpc import RpcError
from corral.supervisor.config import ConfigError
from corral.supervisor.configload import load_config

from .conftest import EXAMPLES, ROOT
from .daemon_harness import PY, Daemon
from .warmforks import sdk_toml

# minutes of this file: a parallel run starts it first (tests/conftest.py longest_first)
pytestmark = [pytest.mark.long, pytest.mark.usefixtures("warm_mcp_sdk")]

OPERATOR = Caller(via="socket")

# every agent here: what it does is its ROLE; with `mark` in its input, a member leaves a
# file named for its role and task id once it has worked, so a test counts its runs; with
# `hold_for` naming its role, it works only once the file given there is (the test's gate)
AGENT = '''
import os, time, uuid
from pathlib import Path
from corral.worker import run

ROLE = os.environ["ROLE"]

def handle(inp, ctx):
    if ROLE == "router":
        return {"member": inp["input"]["want"]}
    if ROLE == "lead":
        names = sorted(t["name"] for t in ctx.list_tools()["tools"])
        sent = {"ask": inp["ask"], "mark": inp.get("mark"),
                "sleep_for": inp.get("sleep_for", {})}
        for key in ("tag", "hold_for"):
            if key in inp:
                sent[key] = inp[key]
        calls = [ctx.call_tool(f"desk__{m}", {"input": sent}) for m in inp["call"]]
        flag = inp.get("crash_once")
        if flag and not Path(flag).exists():
            Path(flag).write_text(ctx.task_id)
            os._exit(3)  # the leader dies after its calls, once
        return {"tools": names, "answers": [c.get("structuredContent") for c in calls],
                "errors": [c["content"][0]["text"] for c in calls if c.get("isError")]}
    if ROLE == "bad":
        raise RuntimeError("bad at this")
    if isinstance(inp, dict) and inp.get("sleep_for", {}).get(ROLE):
        time.sleep(inp["sleep_for"][ROLE])
    if isinstance(inp, dict) and inp.get("hold_for", {}).get(ROLE):
        while not Path(inp["hold_for"][ROLE]).exists():
            time.sleep(0.01)
    if isinstance(inp, dict) and inp.get("mark"):
        who = f"{ROLE}-{inp['tag']}" if "tag" in inp else ROLE
        (Path(inp["mark"]) / f"{who}.{ctx.task_id}.{uuid.uuid4().hex}").write_text("")
    return {"who": ROLE, "got": inp}

run(handle)
'''

# the notes server a fork of this process's MCP SDK server (tests/warmforks.py)
NOTES = sdk_toml(f"{EXAMPLES}/notes_server.py")


def agents_toml(directory: Path, roles: str = "a b bad router lead",
                extra: str = "", retries: int = 2) -> str:
    script = directory / "teamagent.py"
    script.write_text(AGENT)
    out = ""
    for role in roles.split():
        out += textwrap.dedent(f"""
            [agents.{role}]
            command = ["{PY}", "{script}"]
            env = {{ PYTHONPATH = "{ROOT}", ROLE = "{role}" }}
            retries = {retries}
            backoff_initial = 0.05
            stop_timeout = 10.0
            {extra}
        """)
    return out


TEAMS = """
[teams.pick]
mode = "route"
members = ["a", "b"]
default = "b"
[[teams.pick.rules]]
ref = "$input.topic"
equals = "billing"
member = "a"
[[teams.pick.rules]]
ref = "$input.text"
contains = "urgent"
member = "a"

[teams.ask]
mode = "route"
members = ["a", "b"]
router = "router"

[teams.all]
mode = "broadcast"
description = "everyone answers"
members = ["a", "b"]

[teams.some]
mode = "broadcast"
members = ["a", "bad"]

[teams.desk]
mode = "coordinate"
leader = "lead"
members = ["a", "b", "bad"]
"""


DESK = """
[teams.desk]
mode = "coordinate"
leader = "lead"
members = ["a", "b", "bad"]
"""


# -- definitions -------------------------------------------------------------------------------
def _problem(tmp_path: Path, teams: str) -> str:
    path = tmp_path / "corral.toml"
    body = "".join(f'[agents.{a}]\ncommand = ["true"]\n' for a in ("a", "b", "lead"))
    path.write_text(body + '[mcp_servers.files]\ncommand = ["true"]\n'
                    + textwrap.dedent(teams))
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    return str(exc.value).replace(str(path), "FILE")


def _team(body: str, name: str = "t") -> str:
    return f"[teams.{name}]\n{body}\n"


@pytest.mark.parametrize(("teams", "message"), [
    (_team('mode = "broadcast"\nmembers = ["a", "x"]'),
     "FILE: team t: member x: no such agent"),
    (_team('mode = "broadcast"\nmembers = ["a", "t"]'),
     "FILE: team t: member t is the team itself (a team cannot call itself)"),
    (_team('mode = "broadcast"\nmembers = ["a"]') + _team(
        'mode = "broadcast"\nmembers = ["a", "u"]', "v") + _team(
        'mode = "broadcast"\nmembers = ["b"]', "u"),
     "FILE: team v: member u is a team (a team's member is an agent; teams do not nest)"),
    (_team('mode = "broadcast"\nmembers = ["a", "a"]'),
     "FILE: team t: member a is named twice"),
    (_team('mode = "coordinate"\nmembers = ["a", "b"]'),
     "FILE: team t: a coordinate team needs a leader (the agent that calls its members)"),
    (_team('mode = "coordinate"\nleader = "a"\nmembers = ["a", "b"]'),
     "FILE: team t: its leader a is also a member (a leader calls its members, not itself)"),
    (_team('mode = "coordinate"\nleader = "nope"\nmembers = ["a"]'),
     "FILE: team t: leader nope: no such agent"),
    (_team('mode = "broadcast"\nleader = "lead"\nmembers = ["a"]'),
     "FILE: team t: leader is for mode coordinate, not broadcast"),
    (_team('mode = "route"\nmembers = ["a", "b"]'),
     "FILE: team t: a route team needs rules or a router (what picks the member)"),
    (_team('mode = "route"\nmembers = ["a"]\nrouter = "t"'),
     "FILE: team t: router t is the team itself (a team cannot call itself)"),
    (_team('mode = "route"\nmembers = ["a"]\nrouter = "lead"\ndefault = "a"'),
     "FILE: team t: a route team has rules or a router, not both"),
    (_team('mode = "route"\nmembers = ["a"]\n[[teams.t.rules]]\nmember = "b"'),
     "FILE: team t, rule 1: b is not a member (members: a)"),
    (_team('mode = "route"\nmembers = ["a"]\n[[teams.t.rules]]\nmember = "a"\n'
           'ref = "$steps.x.output"'),
     "FILE: team t, rule 1: ref $steps.x.output is not a reference to the input ($input "
     "followed by .key or [N] parts; a reference is $input, $steps.NAME.output, $item or "
     "$index, followed by .key or [N] parts)"),
    (_team('mode = "route"\nmembers = ["a"]\ndefault = "b"\n[[teams.t.rules]]\n'
           'member = "a"'),
     "FILE: team t: default b is not a member (members: a)"),
    (_team('mode = "broadcast"\nmembers = ["a"]\nrules = [{ member = "a" }]'),
     "FILE: team t: rules is for mode route, not broadcast"),
    (_team('mode = "broadcast"\nmembers = ["a"]', "a"),
     "FILE: team a: an agent has its name (a task names one or the other)"),
    (_team('mode = "broadcast"\nmembers = ["a"]', "files"),
     "FILE: team files: an MCP server has its name (a leader's tools files__MEMBER would "
     "shadow the server's)"),
    (_team('mode = "broadcast"\nmembers = ["a"]', "x__y"),
     "FILE: team x__y: a team name may not contain '__' (it separates team and member in "
     "a leader's tool TEAM__MEMBER)"),
    (_team('mode = "vote"\nmembers = ["a"]'),
     "FILE: teams.t.mode: Invalid enum value 'vote' (valid: 'broadcast', 'coordinate', "
     "'route')"),
    (_team('mode = "broadcast"\nmembers = []'),
     "FILE: teams.t.members: Expected `array` of length >= 1"),
])
def test_every_refusal_is_said_exactly(tmp_path: Path, teams: str, message: str) -> None:
    assert _problem(tmp_path, teams) == message


def test_a_team_of_two_tenants_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "corral.toml"
    path.write_text('[tenants.acme]\n[agents.a]\ncommand = ["true"]\ntenant = "acme"\n'
                    '[agents.b]\ncommand = ["true"]\n'
                    + _team('mode = "broadcast"\nmembers = ["a", "b"]')
                    + _team('mode = "broadcast"\ntenant = "acme"\nmembers = ["a", "b"]', "u"))
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    assert str(exc.value).replace(str(path), "FILE").splitlines() == [
        "FILE: team t: its agents are of more than one tenant: a (acme), b (default)",
        "FILE: team u: of tenant acme, names agent b of tenant default (a team's agents "
        "are its tenant's)"]


# -- calls on a real daemon -----------------------------------------------------------------
@pytest.fixture
def daemon(tmp_path: Path) -> Any:
    d = Daemon(tmp_path, agents_toml(tmp_path) + TEAMS)
    try:
        d.start()
        yield d
    finally:
        d.close()


def run(d: Daemon, team: str, inp: Any) -> tuple[int, dict[str, Any]]:
    r = d.cli("run", team, "--input", json.dumps(inp), "--json", timeout=90)
    assert r.stdout, r.stderr
    out: dict[str, Any] = json.loads(r.stdout)
    return r.returncode, out


def test_route_by_rules_and_by_a_router(daemon: Daemon) -> None:
    rc, out = run(daemon, "pick", {"topic": "billing"})
    assert (rc, out["status"], out["output"]["who"]) == (0, "succeeded", "a")
    assert run(daemon, "pick", {"text": "an urgent one"})[1]["output"]["who"] == "a"
    assert run(daemon, "pick", {"topic": "else"})[1]["output"]["who"] == "b"
    rc, out = run(daemon, "ask", {"want": "b"})
    assert (rc, out["output"]) == (0, {"who": "b", "got": {"want": "b"}})
    info = daemon.json("task", out["task_id"])
    assert (info["agent"], info["status"]) == ("ask", "succeeded")
    assert [(s["step"], s["status"]) for s in info["progress"]["steps"]] == [
        ("router", "succeeded"), ("member:b", "succeeded")]
    member = daemon.json("task", info["progress"]["steps"][1]["task_id"])
    assert (member["agent"], member["status"]) == ("b", "succeeded")
    # a router that names no member fails the call, saying what it named
    rc, out = run(daemon, "ask", {"want": "zed"})
    assert (rc, out["status"], out["error"]["message"]) == (
        1, "failed", "team ask: router router named 'zed', not a member (members: a, b)")


def test_broadcast_joins_every_members_outcome(daemon: Daemon) -> None:
    rc, out = run(daemon, "all", {"q": 1})
    assert (rc, out["status"]) == (0, "succeeded")
    assert {m: (o["status"], o["output"]) for m, o in out["output"].items()} == {
        "a": ("succeeded", {"who": "a", "got": {"q": 1}}),
        "b": ("succeeded", {"who": "b", "got": {"q": 1}})}
    # a member failing: the call fails, every member's outcome still in it
    rc, out = run(daemon, "some", {"q": 2})
    assert (rc, out["status"]) == (1, "failed")
    bad = out["output"]["bad"]
    assert (out["output"]["a"]["status"], bad["status"]) == ("succeeded", "failed")
    assert "bad at this" in bad["error"]
    assert out["error"]["message"] == (f"team some: member bad failed (task "
                                       f"{bad['task_id']}): {bad['error']}")


def test_a_leader_calls_its_members_as_tools(daemon: Daemon) -> None:
    rc, out = run(daemon, "desk", {"ask": "hi", "call": ["a", "b", "bad"]})
    assert (rc, out["status"]) == (0, "succeeded"), out
    got = out["output"]
    assert [t for t in got["tools"] if t.startswith("desk__")] == [
        "desk__a", "desk__b", "desk__bad"]
    sent = {"ask": "hi", "mark": None, "sleep_for": {}}
    assert got["answers"][:2] == [{"output": {"who": "a", "got": sent}},
                                  {"output": {"who": "b", "got": sent}}]
    assert got["answers"][2] is None and len(got["errors"]) == 1
    assert got["errors"][0].startswith("member bad failed (task ")
    info = daemon.json("task", out["task_id"])
    keys = [s["step"] for s in info["progress"]["steps"]]
    assert keys[0] == "leader" and sorted(k.split(":")[1] for k in keys[1:]) == [
        "a", "b", "bad"]
    # the members' tools are the leader's only while it runs as the team's leader
    r = daemon.cli("run", "lead", "--input", json.dumps({"ask": "x", "call": ["a"]}), "--json")
    alone = json.loads(r.stdout)
    assert alone["status"] == "failed"
    assert "tool desk__a is not allowed for agent lead" in alone["error"]["message"]


def test_submit_a_team_and_ask_for_it_as_a_task(daemon: Daemon) -> None:
    r = daemon.cli("submit", "all", "--input", json.dumps({"q": 3}), "--json")
    assert r.returncode == 0, r.stderr
    task_id = json.loads(r.stdout)["task_id"]
    info = daemon.json("task", task_id, "--wait")
    assert (info["agent"], info["status"], sorted(info["output"])) == (
        "all", "succeeded", ["a", "b"])
    for flags, said in (
            (["--delay", "5s"], "delay (its members' tasks run at once)"),
            (["--session", "s1"], "session (a session is one agent's)"),
            (["--timeout", "3"], "timeout (its tasks' timeout is the team's `timeout`)"),
            (["--retries", "1"], "retry (its tasks' retries are the team's `retries`)"),
            (["--priority", "2"], "priority (its tasks run at their agents' order)"),
            (["--idempotency-key", "k"], "idempotency_key (a call's key is the "
                                         "Idempotency-Key of POST /teams/NAME/calls)")):
        r = daemon.cli("run", "pick", "--input", "{}", *flags)
        assert (r.returncode, r.stderr.strip()) == (
            1, f"corral: invalid params: pick is a team: a team's call takes no {said}")
    # `corral tasks --agent TEAM` pages through its calls as through an agent's tasks
    more = [json.loads(daemon.cli("submit", "all", "--input", json.dumps({"q": i}),
                                  "--json").stdout)["task_id"] for i in range(3)]
    listed = daemon.json("tasks", "--agent", "all")
    assert [t["task_id"] for t in listed["tasks"]] == [task_id, *more]
    assert {t["agent"] for t in listed["tasks"]} == {"all"}
    page = daemon.json("tasks", "--agent", "all", "--limit", "2")
    assert [t["task_id"] for t in page["tasks"]] == more[1:] and page["next"] == more[1]
    older = daemon.json("tasks", "--agent", "all", "--limit", "2", "--before", page["next"])
    assert [t["task_id"] for t in older["tasks"]] == [task_id, more[0]]
    # a reload adds a team and removes one; a refused reload changes none
    text = daemon.config.read_text()
    daemon.config.write_text(text.replace("[teams.pick]", "[teams.picked]").replace(
        "teams.pick.rules", "teams.picked.rules"))
    r = daemon.cli("reload")
    assert r.returncode == 0, r.stderr
    assert run(daemon, "picked", {"topic": "billing"})[1]["output"]["who"] == "a"
    r = daemon.cli("run", "pick", "--input", "{}")
    assert (r.returncode, r.stderr.strip()) == (
        1, "corral: no such agent: pick (agents: a, b, bad, lead, router)")
    daemon.config.write_text(daemon.config.read_text() + _team(
        'mode = "broadcast"\nmembers = ["nope"]', "worse"))
    r = daemon.cli("reload")
    assert r.returncode == 1 and "team worse: member nope: no such agent" in r.stderr
    assert run(daemon, "picked", {"topic": "else"})[1]["output"]["who"] == "b"


def _marks(directory: Path) -> dict[str, list[str]]:
    """Per role: the task ids that did its work (one entry per time it worked)."""
    out: dict[str, list[str]] = {}
    for f in directory.iterdir():
        role, task_id, _ = f.name.split(".")
        out.setdefault(role, []).append(task_id)
    return out


def _steps(d: Daemon, task_id: str) -> dict[str, dict[str, Any]]:
    # asked on the socket: the tests poll it in a loop, a CLI's start each look
    return {s["step"]: s for s in d.task(task_id)["progress"]["steps"]}


def test_a_call_resumes_after_a_sigkill_and_a_member_that_succeeded_is_not_run_again(
        tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    d = Daemon(tmp_path, agents_toml(tmp_path, "a b") + TEAMS.split("[teams.ask]")[0]
               + '[teams.all]\nmode = "broadcast"\nmembers = ["a", "b"]\n')
    try:
        d.start()
        # b is held at work until the kill (a sleep of 3 s could end, at load 20+, before
        # a's end was seen)
        gate = tmp_path / "go"
        inp = {"mark": str(marks), "hold_for": {"b": str(gate)}}
        r = d.cli("submit", "all", "--input", json.dumps(inp), "--json")
        call_id = json.loads(r.stdout)["task_id"]
        # killed once member a has succeeded and b is still at work
        # (each look is a CLI call to the daemon: a few a second)
        while _steps(d, call_id).get("member:a", {}).get("status") != "succeeded":
            pass
        assert _steps(d, call_id)["member:b"]["status"] == "running"
        d.proc.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
        d.proc.wait()  # type: ignore[union-attr]
        gate.touch()
        d.start()
        info = d.json("task", call_id, "--wait")
        assert (info["agent"], info["status"]) == ("all", "succeeded"), info
        log = (d.state / "logs" / "corral.log").read_text()
        assert "teams: 1 unfinished call resumed" in log
        steps = _steps(d, call_id)
        marked = _marks(marks)
        # a worked once, as the task the call recorded; b's work was the recorded task's
        assert marked["a"] == [steps["member:a"]["task_id"]]
        assert set(marked["b"]) == {steps["member:b"]["task_id"]}
        assert info["output"]["a"]["output"]["who"] == "a"
        assert info["output"]["b"]["status"] == "succeeded"
    finally:
        d.close()


def test_cancel_a_call_cancels_its_members_tasks(tmp_path: Path) -> None:
    d = Daemon(tmp_path, agents_toml(tmp_path, "a b") + TEAMS.split("[teams.ask]")[0]
               + '[teams.all]\nmode = "broadcast"\nmembers = ["a", "b"]\n')
    try:
        d.start()
        r = d.cli("submit", "all", "--input", json.dumps({"sleep_for": {"a": 60, "b": 60}}),
                  "--json")
        call_id = json.loads(r.stdout)["task_id"]
        steps = _steps(d, call_id)
        while [s["status"] for s in steps.values()] != ["running", "running"]:
            steps = _steps(d, call_id)
        r = d.cli("cancel", call_id)
        assert r.returncode == 0, r.stderr
        info = d.json("task", call_id)
        assert (info["status"], info["error"]["message"]) == ("cancelled", "cancelled")
        for key in ("member:a", "member:b"):
            member = d.json("task", steps[key]["task_id"], "--wait")
            assert member["status"] == "cancelled", member
        assert {k: (s["status"], s.get("error")) for k, s in _steps(d, call_id).items()} == {
            k: ("cancelled", "the call was cancelled") for k in ("member:a", "member:b")}
        r = d.cli("cancel", call_id)
        assert (r.returncode, r.stderr.strip()) == (
            1, f"corral: task {call_id} already finished (cancelled)")
    finally:
        d.close()


def test_a_leader_retried_after_its_worker_died_runs_no_member_again(
        tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    d = Daemon(tmp_path, agents_toml(tmp_path, "a b bad lead") + DESK)
    try:
        d.start()
        rc, out = run(d, "desk", {"ask": "q", "call": ["a", "b"], "mark": str(marks),
                                  "crash_once": str(tmp_path / "crashed")})
        assert (rc, out["status"]) == (0, "succeeded"), out
        steps = _steps(d, out["task_id"])
        leader = d.json("task", steps["leader"]["task_id"])
        assert [a["outcome"] for a in leader["attempts"]] == ["lost", "succeeded"]
        assert leader["attempts"][1]["replayed"] == 2  # both calls answered from its steps
        marked = _marks(marks)
        tools = {s["step"].split(":")[1]: s["task_id"] for s in steps.values()
                 if s["step"].startswith("tool:")}
        assert marked == {"a": [tools["a"]], "b": [tools["b"]]}
    finally:
        d.close()


def test_a_leader_waiting_on_a_member_through_a_sigkill_gets_that_members_task(
        tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    d = Daemon(tmp_path, agents_toml(tmp_path, "a b bad lead") + DESK)
    try:
        d.start()
        gate = tmp_path / "go"  # b held at work until the kill
        inp = {"ask": "q", "call": ["a", "b"], "mark": str(marks),
               "hold_for": {"b": str(gate)}}
        r = d.cli("submit", "desk", "--input", json.dumps(inp), "--json")
        call_id = json.loads(r.stdout)["task_id"]
        # killed while the leader waits for b, a's call done
        while not any(k.startswith("tool:b") for k in _steps(d, call_id)):
            pass
        d.proc.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
        d.proc.wait()  # type: ignore[union-attr]
        gate.touch()
        d.start()
        info = d.json("task", call_id, "--wait")
        assert info["status"] == "succeeded", info
        assert [a["output"]["who"] for a in info["output"]["answers"]] == ["a", "b"]
        steps = _steps(d, call_id)
        tools = {s["step"].split(":")[1]: s["task_id"] for s in steps.values()
                 if s["step"].startswith("tool:")}
        assert sorted(tools) == ["a", "b"]  # one step each: none made twice
        marked = _marks(marks)
        assert marked["a"] == [tools["a"]] and set(marked["b"]) == {tools["b"]}
    finally:
        d.close()


def test_random_sigkills_lose_no_call_and_run_no_member_twice(tmp_path: Path) -> None:
    import random
    import time

    rng = random.Random()
    seed = rng.randrange(1 << 30)
    rng.seed(seed)
    print(f"seed {seed}")
    marks = tmp_path / "marks"
    marks.mkdir()
    # CORRAL_TEAMS_CHAOS="CALLS,KILLS" for a longer one
    calls_n, kills = (int(x) for x in os.environ.get("CORRAL_TEAMS_CHAOS", "8,6").split(","))
    d = Daemon(tmp_path, agents_toml(tmp_path, "a b bad lead", retries=500) + DESK
               + '[teams.all]\nmode = "broadcast"\nmembers = ["a", "b"]\n')
    try:
        d.start()
        slow = {"a": 0.2, "b": 0.3}
        inputs = [{"tag": f"c{i}", "mark": str(marks), "sleep_for": slow}
                  | ({"ask": "q", "call": ["a", "b"]} if i % 2 else {}) for i in range(calls_n)]
        call_ids = [json.loads(d.cli("submit", "desk" if i % 2 else "all", "--input",
                                     json.dumps(inp), "--json").stdout)["task_id"]
                    for i, inp in enumerate(inputs)]
        for _ in range(kills):
            # a random moment: what is running then is what the kill interrupts
            time.sleep(rng.uniform(0.05, 0.6))
            d.proc.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
            d.proc.wait()  # type: ignore[union-attr]
            d.start()
        infos = [d.json("task", c, "--wait") for c in call_ids]
        assert [i["status"] for i in infos] == ["succeeded"] * calls_n, (seed, [
            (i["task_id"], i["status"], i["error"]) for i in infos])
        marked = {k: set(v) for k, v in _marks(marks).items()}
        for n, info in enumerate(infos):
            steps = _steps(d, info["task_id"])
            kind = "tool" if n % 2 else "member"
            worked = {k.split(":")[1]: s["task_id"] for k, s in steps.items()
                      if k.startswith(kind + ":")}
            # one step per member, and its work done by the task the call recorded
            assert sorted(worked) == ["a", "b"], (seed, steps)
            for member, task_id in worked.items():
                assert marked[f"{member}-c{n}"] == {task_id}, (seed, n, member, marked)
        assert len(marked) == 2 * calls_n
        log = (d.state / "logs" / "corral.log").read_text()
        print(*[ln for ln in log.splitlines() if "teams:" in ln], sep="\n")
    finally:
        d.close()


def test_with_tracing_a_call_is_one_trace_and_a_member_is_a_child_of_the_leaders_tool_span(
        tmp_path: Path) -> None:
    trace, span = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    d = Daemon(tmp_path, agents_toml(tmp_path, "a b bad lead") + DESK
               + "[tracing]\nexport_interval = 0.05\n")
    try:
        d.start()
        r = d.cli("run", "desk", "--input", json.dumps({"ask": "q", "call": ["a"]}),
                  "--traceparent", f"00-{trace}-{span}-01", "--json")
        call = json.loads(r.stdout)
        assert call["status"] == "succeeded", r.stderr
        steps = _steps(d, call["task_id"])
        leader_id = steps["leader"]["task_id"]
        member_id = next(s["task_id"] for k, s in steps.items() if k.startswith("tool:a:"))

        def kept(task_id: str) -> dict[str, Any]:
            # (the exporter writes the local store a batch at a time: looked at until kept)
            while True:
                shown = d.cli("trace", task_id, "--json")
                if shown.returncode == 0:
                    out: dict[str, Any] = json.loads(shown.stdout)
                    return out

        leader, member = kept(leader_id), kept(member_id)
        assert leader["trace_id"] == member["trace_id"] == trace
        assert leader["spans"][0]["parent_id"] == span  # the caller's
        # (a tool call's span is named for the part of its name after the `__`)
        tool = next(s for s in leader["spans"] if s["name"] == "tools/call a")
        assert member["spans"][0]["parent_id"] == tool["span_id"]
        r = d.cli("run", "desk", "--input", "{}", "--traceparent", "00-nope")
        assert (r.returncode, r.stderr.strip()) == (
            1, "corral: traceparent must be the W3C format 00-<32 hex>-<16 hex>-<2 hex>, "
               "not '00-nope'")
    finally:
        d.close()


# -- the Python API --------------------------------------------------------------------------
async def test_the_python_api_calls_a_team_on_an_embedded_engine(sup: Any) -> None:
    from corral.supervisor import State
    from corral.supervisor.teams import Rule, TeamSpec
    from corral.supervisor.teams.calls import Teams

    from .conftest import agent

    for name in ("e1", "e2"):
        sup.add(agent(name, "misbehave.py"))
        await sup.wait_state(name, State.READY)
    teams = Teams(sup.tasks)
    teams.configure({
        "both": TeamSpec(mode="broadcast", members=["e1", "e2"]),
        "one": TeamSpec(mode="route", members=["e1", "e2"], default="e1",
                        rules=[Rule(member="e2", ref="$input.to", equals="two")])})
    res = await teams.run("both", {"do": "echo", "n": 1})
    assert (res.status, {m: o["output"] for m, o in res.output.items()}) == (
        "succeeded", {"e1": {"do": "echo", "n": 1}, "e2": {"do": "echo", "n": 1}})
    res = await teams.run("one", {"do": "echo", "to": "two"})
    assert (res.status, res.output) == ("succeeded", {"do": "echo", "to": "two"})
    res = await teams.run("one", {"do": "fail", "message": "no"})
    assert res.status == "failed" and res.error is not None
    assert res.error.message.startswith("team one: member e1 failed (task ")
    with pytest.raises(RpcError, match=r"^no such team: nope$"):
        await teams.run("nope", {})


# -- tenants over HTTP -----------------------------------------------------------------------
async def test_a_tenants_token_calls_its_own_team_and_finds_no_other(tmp_path: Path) -> None:
    import aiohttp
    import msgspec

    from corral.daemon.tokens import tokens_of

    from .daemon_harness import free_port, in_process

    port = free_port()
    script = tmp_path / "teamagent.py"
    script.write_text(AGENT)
    fleet = "".join(textwrap.dedent(f"""
        [agents.{n}]
        command = ["{PY}", "{script}"]
        env = {{ PYTHONPATH = "{ROOT}", ROLE = "{n}" }}
        tenant = "{t}"
        """) for n, t in (("a1", "a"), ("b1", "b")))
    toml = ("[tenants.a]\n[tenants.b]\n"
            '[teams.ta]\nmode = "broadcast"\nmembers = ["a1"]\n'
            '[teams.tb]\nmode = "broadcast"\nmembers = ["b1"]\n'
            f'[http]\nlisten = "127.0.0.1:{port}"\n')
    async with in_process(tmp_path, fleet, toml) as d:
        from corral import methods as m
        b_call = await d.dispatcher.call(OPERATOR, "tasks.run", m.TasksRun(
            agent="tb", input=msgspec.Raw(b'{"x": 1}')))
        assert b_call.status == "succeeded"
        secret, _ = await tokens_of(d.services.store).create(
            "ta", ["tasks:run", "tasks:read"], None, None, "a")
        base = f"http://127.0.0.1:{port}/api/v1"
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {secret}"}
                                         ) as http:
            async with http.post(f"{base}/tasks?wait=60",
                                 json={"agent": "ta", "input": {"x": 2}}) as r:
                mine = await r.json()
                assert (r.status, mine["status"]) == (200, "succeeded"), mine
            async with http.get(f"{base}/tasks/{mine['task_id']}") as r:
                info = await r.json()
                assert (r.status, info["agent"], info["output"]["a1"]["output"]) == (
                    200, "ta", {"who": "a1", "got": {"x": 2}})
            # the other tenant's team, and its call, are as if they did not exist
            for verb, path, body in (("POST", "/tasks", {"agent": "tb", "input": 1}),
                                     ("POST", "/tasks", {"agent": "tz", "input": 1}),
                                     ("GET", f"/tasks/{b_call.task_id}", None),
                                     ("POST", f"/tasks/{b_call.task_id}/cancel", None)):
                async with http.request(verb, base + path, json=body) as r:
                    said = msgspec.json.decode(await r.read())
                    assert r.status == 404, (path, said)
            async with http.post(f"{base}/tasks", json={"agent": "tb", "input": 1}) as r:
                on_b = (await r.json())["detail"]
            async with http.post(f"{base}/tasks", json={"agent": "tz", "input": 1}) as r:
                on_ghost = (await r.json())["detail"]
            assert on_b == on_ghost.replace("tz", "tb")


async def test_a_token_limited_to_a_glob_reaches_a_team_only_if_it_sees_all_its_agents(
        tmp_path: Path) -> None:
    import msgspec

    from corral import methods as m
    from corral.daemon.tokens import tokens_of

    from .daemon_harness import in_process

    toml = ('[teams.pubteam]\nmode = "broadcast"\nmembers = ["pub1"]\n'
            '[teams.pubsneak]\nmode = "broadcast"\nmembers = ["pub1", "sec1"]\n')
    fleet = agents_toml(tmp_path, "pub1 sec1")
    async with in_process(tmp_path, fleet, toml) as d:
        hidden = await d.dispatcher.call(OPERATOR, "tasks.run", m.TasksRun(
            agent="pubsneak", input=msgspec.Raw(b"1")))
        assert hidden.status == "succeeded"
        _, token = await tokens_of(d.services.store).create(
            "pub", ["tasks:run", "tasks:read"], "pub*", None)
        pub = Caller(via="http", token=token.name, scopes=token.scopes, agents=token.agents)
        mine = await d.dispatcher.call(pub, "tasks.run", m.TasksRun(
            agent="pubteam", input=msgspec.Raw(b"2")))
        assert (mine.status, mine.output["pub1"]["output"]) == (
            "succeeded", {"who": "pub1", "got": 2})
        assert (await d.dispatcher.call(pub, "tasks.get", {"task_id": mine.task_id})
                ).agent == "pubteam"
        # a team with an agent outside the glob: as if it did not exist, and its call too
        for method, params, said in (
                ("tasks.run", m.TasksRun(agent="pubsneak", input=msgspec.Raw(b"3")),
                 "no such agent: pubsneak"),
                ("tasks.submit", m.TasksSubmit(agent="pubsneak", input=msgspec.Raw(b"3")),
                 "no such agent: pubsneak"),
                ("tasks.list", {"agent": "pubsneak"}, "no such agent: pubsneak"),
                ("tasks.get", {"task_id": hidden.task_id}, f"no such task: {hidden.task_id}"),
                ("tasks.cancel", {"task_id": hidden.task_id},
                 f"no such task: {hidden.task_id}")):
            with pytest.raises(RpcError) as exc:
                await d.dispatcher.call(pub, method, params)
            assert (exc.value.code, exc.value.message) == (-32010, said), method


# -- the gateway -----------------------------------------------------------------------------
async def test_the_gateway_shows_no_team_as_agents_are_not_and_no_leaders_tool(
        tmp_path: Path) -> None:
    """The gateway serves the pool's tools; agents are not among them, nor are teams,
    and a member's tool is a leader's only (docs/teams.md)."""
    mcp = pytest.importorskip("mcp")
    from mcp import ClientSession, StdioServerParameters
    from mcp.client.stdio import stdio_client
    from mcp.shared.exceptions import MCPError

    assert mcp is not None
    toml = agents_toml(tmp_path, "a b lead") + textwrap.dedent(f"""
        [mcp_servers.notes]
        command = {NOTES}
        start_timeout = 30.0
        [teams.desk]
        mode = "coordinate"
        leader = "lead"
        members = ["a", "b"]
    """)
    d = Daemon(tmp_path, toml)
    try:
        d.start()
        params = StdioServerParameters(
            command=PY, args=["-m", "corral", "--socket", str(d.sock), "mcp", "serve"],
            env={**os.environ, "PYTHONPATH": str(ROOT)})
        async with stdio_client(params) as (r, w), ClientSession(r, w) as s:
            await s.initialize()
            names = [t.name for t in (await s.list_tools()).tools]
            assert names == ["notes__add", "notes__get", "notes__search"]
            with pytest.raises(MCPError) as err:
                await s.call_tool("desk__a", {"input": 1})
            assert "no such tool: desk__a (no MCP server desk)" in str(err.value)
    finally:
        d.close()
