"""Sessions in order, on each home (DESIGN 17, 25): the turns of one session run one at
a time, in the order they were submitted, each handed the state the last one left; a
turn waiting for its session says so; a turn in flight when its home crashes is run
again with the last state kept, and the next turn follows it; two new sessions racing
past max_sessions at two entries make one, the other refused. The agent:
tests/session_agent.py (each turn appends its number to the session's state)."""

from __future__ import annotations

import functools
import itertools
import os
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest

from corral import jsonrpc
from corral.cli.client import CallFailed

from ..conftest import ROOT
from ..daemon_harness import PY
from .home import PATIENCE, Home, wait_until

pytestmark = pytest.mark.timeout(120)
HERE = Path(__file__).parent.parent


def agents(directory: Path) -> str:
    del directory
    chat = textwrap.dedent(f"""
        command = ["{PY}", "{HERE}/session_agent.py"]
        env = {{ PYTHONPATH = "{ROOT}" }}
        retries = 1
        max_concurrent_tasks = 2
        stop_timeout = 5.0
    """)
    # `small`: one live session, of 40 bytes of state at most; `left` and `right`, tenant
    # team's, two live sessions between them, of 40 bytes of state together
    return (f"[agents.chat]{chat}\n[agents.small]{chat}max_sessions = 1\n"
            "max_session_bytes = 40\n[tenants.team]\nmax_sessions = 2\n"
            "max_session_bytes = 40\n"
            f"[agents.left]{chat}tenant = \"team\"\n[agents.right]{chat}tenant = \"team\"\n")


def test_a_sessions_turns_run_one_at_a_time_in_order_each_given_the_last_state(
        home: Home) -> None:
    # submitted at both entries in turn, all at once
    ids = [home.submit("chat", {"turn": i}, at=i, session="s1") for i in range(1, 7)]
    got = [home.wait(t) for t in ids]
    for i, rec in enumerate(got, 1):
        assert rec["status"] == "succeeded", rec
        assert rec["output"]["turns"] == list(range(1, i + 1))  # in order, each once
        assert (rec["output"]["given"], rec["output"]["session"]) == (i > 1, "s1")
        assert len(rec["attempts"]) == 1
    for before, after in itertools.pairwise(got):  # one at a time
        assert after["attempts"][0]["started"] >= before["attempts"][0]["finished"]
    shown = home.session("chat", "s1", at=1)
    assert [t["task_id"] for t in shown["history"]] == ids
    assert (shown["session"]["tasks"], shown["session"]["running"],
            shown["session"]["waiting"]) == (6, None, 0)


def test_a_turn_waits_while_its_sessions_turn_before_it_runs(home: Home, tmp_path: Path
                                                             ) -> None:
    gate = tmp_path / "gate"
    os.mkfifo(gate)
    first = home.submit("chat", {"turn": 1, "hold": str(gate)}, session="s2")
    home.status_of(first, "running")
    second = home.submit("chat", {"turn": 2}, at=1, session="s2")
    queued = home.status_of(second, "queued", at=1)
    shown = home.session("chat", "s2")
    assert (shown["session"]["running"], shown["session"]["waiting"]) == (first, 1)
    opened = threading.Thread(target=lambda: open(gate, "wb").close())
    opened.start()
    done = home.wait(second)
    opened.join(10)
    assert done["output"]["turns"] == [1, 2], done
    assert done["attempts"][0]["started"] >= home.task(first)["finished"]
    # and while it waited, its record said why (last: where a home differs, the rest held)
    assert queued["waiting"] == f"session s2: task {first} runs", queued


def test_a_turn_in_flight_at_a_crash_runs_again_with_the_last_state(home: Home,
                                                                    tmp_path: Path) -> None:
    assert home.run("chat", {"turn": 1}, session="s3")["output"]["turns"] == [1]
    marker = tmp_path / "marker"
    second = home.submit("chat", {"turn": 2, "how": "hang", "marker": str(marker)},
                         session="s3")
    third = home.submit("chat", {"turn": 3}, at=1, session="s3")
    wait_until("turn 2 in flight", marker.exists)
    home.crash(second)
    done = home.wait(second)
    assert done["status"] == "succeeded", done
    assert done["output"]["turns"] == [1, 2]
    assert [a["outcome"] for a in done["attempts"]] == ["lost", "succeeded"]
    after = home.wait(third)
    assert after["output"]["turns"] == [1, 2, 3]
    assert after["attempts"][0]["started"] >= done["finished"]


def test_a_session_is_ended_only_with_no_turn_unfinished_and_then_starts_afresh(
        home: Home, tmp_path: Path) -> None:
    assert home.run("chat", {"turn": 1}, session="s4")["output"]["turns"] == [1]
    gate = tmp_path / "gate"
    os.mkfifo(gate)
    held = home.submit("chat", {"turn": 2, "hold": str(gate)}, session="s4")
    home.status_of(held, "running")
    code, message = home.refusal("sessions.end", {"agent": "chat", "session": "s4"}, at=1)
    assert (code, message) == (jsonrpc.CONFLICT, f"session s4 of agent chat has 1 "
                               f"unfinished task: task {held} is running; cancel them or "
                               "wait for them to end")
    opened = threading.Thread(target=lambda: open(gate, "wb").close())
    opened.start()
    assert home.wait(held)["output"]["turns"] == [1, 2]
    opened.join(10)
    home.call("sessions.end", {"agent": "chat", "session": "s4"}, at=1)
    again = home.run("chat", {"turn": 3}, session="s4")
    assert (again["output"]["turns"], again["output"]["given"]) == ([3], False)


def test_a_session_past_its_agents_bounds_is_refused_with_their_words(home: Home) -> None:
    first = home.run("small", {"turn": 1}, session="only")
    assert first["output"]["turns"] == [1], first
    # a state past max_session_bytes: the turn fails, the session keeps its last state
    big = home.run("small", {"turn": "x" * 50}, at=1, session="only")
    assert (big["status"], big["error"]["message"]) == ("failed", (
        "RequestError: session/checkpoint: session state too large: agent small's live "
        "sessions would hold 66 bytes of state (max_session_bytes 40); the session keeps "
        "its last state")), big
    assert home.run("small", {"turn": 2}, session="only")["output"]["turns"] == [1, 2]
    # a second live session past max_sessions: refused, until the first is ended
    code, message = home.refusal("tasks.submit", {"agent": "small", "input": {"turn": 1},
                                                  "session": "other"}, at=1)
    home.call("sessions.end", {"agent": "small", "session": "only"})
    again = home.run("small", {"turn": 1}, at=1, session="other")
    assert again["output"]["turns"] == [1], again
    home.call("sessions.end", {"agent": "small", "session": "other"})
    assert (code, message) == (jsonrpc.REFUSED, (
        "sessions full: agent small has 1 live session (max_sessions 1); end one (corral "
        "sessions end) or wait for one to expire (session_ttl)"))


def raced(home: Home, *new: tuple[str, str]) -> list[Any]:
    """A new session of each (agent, session) submitted at once, the first at one entry,
    the second at the other: one must be made (its turn waited for, the session ended
    then); the others' refusals, their codes and words."""
    start = threading.Barrier(len(new))
    got: dict[tuple[str, str], Any] = {}

    def submit(agent: str, name: str, at: int) -> None:
        start.wait(PATIENCE)
        try:
            got[agent, name] = home.submit(agent, {"turn": 1}, at=at, session=name)
        except CallFailed as e:
            got[agent, name] = (e.code, e.message)

    racing = [threading.Thread(target=submit, args=(*one, at)) for at, one in enumerate(new)]
    for t in racing:
        t.start()
    for t in racing:
        t.join(PATIENCE)
    [((agent, name), task_id)] = [(k, v) for k, v in got.items() if isinstance(v, str)]
    assert home.wait(task_id)["output"]["turns"] == [1]
    home.call("sessions.end", {"agent": agent, "session": name})
    return [v for v in got.values() if not isinstance(v, str)]


def test_two_new_sessions_racing_at_two_entries_past_max_sessions_one_is_refused(
        home: Home) -> None:
    """max_sessions is decided once above the stores, on the live sessions a store read
    (sessions.over), and kept in one step with that read still holding (the node's loop,
    the cluster's SUBMIT under a compare-and-set: decision 1992): two new sessions of
    `small` submitted at once, one at each entry, make one live session and one refusal
    in the bound's words."""
    assert raced(home, ("small", "near"), ("small", "far")) == [(jsonrpc.REFUSED, (
        "sessions full: agent small has 1 live session (max_sessions 1); end one (corral "
        "sessions end) or wait for one to expire (session_ttl)"))]


def test_two_new_sessions_of_a_tenants_two_agents_racing_past_its_bound_one_is_refused(
        home: Home) -> None:
    """A tenant's max_sessions over its agents, decided and kept as an agent's is: team's
    one live session of `left`, and a new one of `left` and one of `right` submitted at
    once, one at each entry, make one more and one refusal in the tenant's words (the
    cluster's SUBMIT compares each agent's count it read, not their sum)."""
    assert home.run("left", {"turn": 1}, session="first")["output"]["turns"] == [1]
    refused = raced(home, ("left", "l2"), ("right", "r2"))
    home.call("sessions.end", {"agent": "left", "session": "first"})
    assert refused == [(jsonrpc.REFUSED, (
        "sessions full: tenant team has 2 live sessions (max_sessions 2); end one (corral "
        "sessions end) or wait for one to expire (session_ttl)"))]


def test_a_tenants_session_bounds_count_its_agents_and_refuse_in_their_words(home: Home
                                                                              ) -> None:
    for name in ("mine", "ours"):
        assert home.run("left", {"turn": 1}, session=name)["output"]["turns"] == [1]
    # another agent of the tenant: a session of it would be the tenant's third
    code, message = home.refusal("tasks.submit", {"agent": "right", "input": {"turn": 1},
                                                  "session": "theirs"}, at=1)
    made = [home.call("sessions.list", {"agent": "right"}, at=at)["sessions"]
            for at in (0, 1)]
    home.call("sessions.end", {"agent": "left", "session": "ours"})
    # its state past the tenant's max_session_bytes with the other agent's: the turn
    # fails, the session keeps its last state
    big = home.run("right", {"turn": "x" * 20}, at=1, session="theirs")
    small = home.run("right", {"turn": 2}, session="theirs")
    for agent, name in (("left", "mine"), ("right", "theirs")):
        home.call("sessions.end", {"agent": agent, "session": name})
    assert (code, message) == (jsonrpc.REFUSED, (
        "sessions full: tenant team has 2 live sessions (max_sessions 2); end one (corral "
        "sessions end) or wait for one to expire (session_ttl)"))
    assert made == [[], []]
    assert (big["status"], big["error"]["message"]) == ("failed", (
        "RequestError: session/checkpoint: session state too large: tenant team's live "
        "sessions would hold 47 bytes of state (max_session_bytes 40); the session keeps "
        "its last state")), big
    assert small["output"]["turns"] == [2], small


def test_a_session_is_one_record_read_and_ended_at_every_entry(home: Home) -> None:
    """sessions.list, .get and .end read one source: a session is listed once at every
    entry, ended at one, and then absent at each, in the same words."""
    done = home.run("chat", {"turn": 1}, session="s5")

    def listed(at: int) -> list[tuple[Any, Any, Any]]:
        return [(v["tasks"], v["running"], v["waiting"]) for v in home.call(
            "sessions.list", {"agent": "chat"}, at=at)["sessions"] if v["session"] == "s5"]

    for at in (0, 1):
        # (on Redis a turn's end moves its line after its task's outcome is told, decision
        # 1500: its own turn is listed running until that move lands, then never again)
        wait_until(f"s5's turn ended at entry {at}",
                   functools.partial(lambda a: listed(a) != [(1, done["task_id"], 0)], at))
        assert listed(at) == [(1, None, 0)]
        assert [t["task_id"] for t in home.session("chat", "s5", at=at)["history"]] == \
            [done["task_id"]]
    ended = home.call("sessions.end", {"agent": "chat", "session": "s5"}, at=1)
    assert (ended["session"], ended["tasks"]) == ("s5", 1)
    gone = (jsonrpc.NOT_FOUND, "no such session: s5 of agent chat")
    for at in (0, 1):
        assert home.refusal("sessions.get", {"agent": "chat", "session": "s5"}, at=at) == gone
        assert home.refusal("sessions.end", {"agent": "chat", "session": "s5"}, at=at) == gone
        assert "s5" not in {v["session"] for v in home.call(
            "sessions.list", {"agent": "chat"}, at=at)["sessions"]}


def test_a_turn_cancelled_in_its_sessions_line_leaves_it_and_the_next_follows(
        home: Home, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    os.mkfifo(gate)
    first = home.submit("chat", {"turn": 1, "hold": str(gate)}, session="s6")
    home.status_of(first, "running")
    dropped = home.submit("chat", {"turn": 2}, at=1, session="s6")
    third = home.submit("chat", {"turn": 3}, session="s6")
    home.status_of(third, "queued")
    # not ended while turns wait in its line too: each counted, in the one rule's words
    assert home.refusal("sessions.end", {"agent": "chat", "session": "s6"}, at=1) == (
        jsonrpc.CONFLICT, f"session s6 of agent chat has 3 unfinished tasks: task {first} "
        "is running; cancel them or wait for them to end")
    home.call("tasks.cancel", {"task_id": dropped}, at=1)
    assert home.status_of(dropped, "cancelled")["attempts"] == []
    shown = home.session("chat", "s6", at=1)["session"]
    assert (shown["running"], shown["waiting"]) == (first, 1)
    opened = threading.Thread(target=lambda: open(gate, "wb").close())
    opened.start()
    assert home.wait(first)["output"]["turns"] == [1]
    opened.join(10)
    assert home.wait(third)["output"]["turns"] == [1, 3]
    assert [t["task_id"] for t in home.session("chat", "s6")["history"]] == \
        [first, dropped, third]
    home.call("sessions.end", {"agent": "chat", "session": "s6"})
