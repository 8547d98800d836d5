"""A session's life on each home (DESIGN 17, 25; docs/durable.md#sessions), beside
test_sessions.py's order of turns: an idle session expires after its agent's session_ttl,
at every entry at once, and its name then starts afresh (of no session_ttl, it is kept,
listed with no expiry); a turn held for its time keeps its session live and unfinished,
holding its place (cancelled, the next has it), and behind a running one starts at its
time, not at that one's end;
the words a waiting turn is given count the turns ahead of it; a session's history is its
turns in order, each with its status, read alike at every entry; a turn's end after its
line's waiting turn was cancelled rests its session. The agent: tests/session_agent.py."""

from __future__ import annotations

import os
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from corral import jsonrpc
from corral.supervisor.config import DEFAULT_SESSION_TTL

from ..conftest import ROOT
from ..daemon_harness import PY
from .home import Home, wait_until

pytestmark = pytest.mark.timeout(120)
HERE = Path(__file__).parent.parent
# seconds an idle session of `brief` lives: long enough for a loaded host to read it at
# both entries before it goes
BRIEF_TTL = 3.0
# seconds a turn is held for its time behind a running one: long enough for that turn's
# end on a loaded host to come before it
HELD = 6.0


def agents(directory: Path) -> str:
    del directory
    chat = textwrap.dedent(f"""
        command = ["{PY}", "{HERE}/session_agent.py"]
        env = {{ PYTHONPATH = "{ROOT}" }}
        retries = 0
        max_concurrent_tasks = 2
        stop_timeout = 5.0
    """)
    return (f"[agents.chat]{chat}\n[agents.brief]{chat}session_ttl = {BRIEF_TTL}\n"
            f"[agents.keep]{chat}session_ttl = 0\n")


def listed(home: Home, agent: str, name: str, at: int) -> list[dict[str, Any]]:
    return [v for v in home.call("sessions.list", {"agent": agent}, at=at)["sessions"]
            if v["session"] == name]


def held(gate: Path) -> threading.Thread:
    """The turn blocked on `gate` (a FIFO) let go, once the thread is started."""
    return threading.Thread(target=lambda: open(gate, "wb").close())


def test_an_idle_session_expires_at_every_entry_and_its_name_starts_afresh(home: Home
                                                                          ) -> None:
    first = home.run("brief", {"turn": 1}, session="e1")
    second = home.run("brief", {"turn": 2}, at=1, session="e1")
    assert (first["output"]["turns"], second["output"]["turns"]) == ([1], [1, 2])
    for at in (0, 1):
        # (the turn's own end is listed once its session has moved: decision 1500; on the
        # cluster, between a turn's end and its session's move, the view says no turn runs
        # and no expiry yet, the session resting only once moved)
        view = wait_until(f"e1 idle at entry {at}", lambda at=at: next(
            (v for v in listed(home, "brief", "e1", at)
             if v["running"] is None and v["expires"] is not None), None))
        assert (view["tasks"], view["waiting"], view["tenant"]) == (2, 0, "default")
        # it expires session_ttl after its last use, which its listing says
        assert view["expires"] == pytest.approx(view["last_used"] + BRIEF_TTL, abs=0.5)
    for at in (0, 1):
        wait_until(f"e1 expired at entry {at}", lambda at=at: not listed(
            home, "brief", "e1", at), timeout=BRIEF_TTL + 30)
        assert home.refusal("sessions.get", {"agent": "brief", "session": "e1"}, at=at) == (
            jsonrpc.NOT_FOUND, "no such session: e1 of agent brief")
    again = home.run("brief", {"turn": 3}, at=1, session="e1")
    assert (again["output"]["turns"], again["output"]["given"]) == ([3], False)
    shown = home.session("brief", "e1")
    assert shown["session"]["tasks"] == 1
    assert [t["task_id"] for t in shown["history"]] == [again["task_id"]]
    home.call("sessions.end", {"agent": "brief", "session": "e1"})


def test_an_idle_session_of_no_session_ttl_is_listed_with_no_expiry_at_every_entry(
        home: Home) -> None:
    """An agent's session_ttl of 0 keeps its idle sessions: every entry lists the session
    with no expiry once no turn of it runs (on the cluster, between the turn's end and its
    session's move, decision 1500, as after it)."""
    first = home.run("keep", {"turn": 1}, session="k1")
    second = home.run("keep", {"turn": 2}, at=1, session="k1")
    assert (first["status"], second["output"]["turns"]) == ("succeeded", [1, 2])
    for at in (0, 1):
        # (a client may read a cluster turn's end before its node's outbox has written it
        # to Redis, the views still naming it running: waited for)
        view = wait_until(f"k1's turn ended at entry {at}", lambda at=at: next(
            (v for v in listed(home, "keep", "k1", at) if v["running"] is None), None))
        assert (view["waiting"], view["expires"], view["tasks"]) == (0, None, 2), view
    home.call("sessions.end", {"agent": "keep", "session": "k1"}, at=1)


def test_a_running_turn_keeps_its_session_from_expiring(home: Home, tmp_path: Path
                                                        ) -> None:
    home.run("brief", {"turn": 1}, session="e2")
    gate = tmp_path / "gate"
    os.mkfifo(gate)
    turn = home.submit("brief", {"turn": 2, "hold": str(gate)}, at=1, session="e2")
    home.status_of(turn, "running")
    # past its ttl from the first turn's end, as the second runs
    started = time.time()
    wait_until("the session's ttl passed", lambda: time.time() > started + BRIEF_TTL + 0.5)
    for at in (0, 1):
        [view] = listed(home, "brief", "e2", at)
        assert (view["running"], view["expires"], view["tasks"]) == (turn, None, 2), view
    opening = held(gate)
    opening.start()
    assert home.wait(turn)["output"]["turns"] == [1, 2]
    opening.join(10)
    home.call("sessions.end", {"agent": "brief", "session": "e2"})


def test_a_waiting_turn_says_which_turn_runs_and_how_many_wait_ahead(home: Home,
                                                                     tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    os.mkfifo(gate)
    first = home.submit("chat", {"turn": 1, "hold": str(gate)}, session="w1")
    home.status_of(first, "running")
    second = home.submit("chat", {"turn": 2}, at=1, session="w1")
    third = home.submit("chat", {"turn": 3}, session="w1")
    waits = [home.status_of(t, "queued", at=at)["waiting"] for at in (0, 1)
             for t in (second, third)]
    opening = held(gate)
    opening.start()
    assert home.wait(third)["output"]["turns"] == [1, 2, 3]
    opening.join(10)
    home.call("sessions.end", {"agent": "chat", "session": "w1"})
    assert waits == [f"session w1: task {first} runs",
                     f"session w1: task {first} runs (1 task of it ahead)"] * 2


def test_a_sessions_history_is_its_turns_in_order_with_their_status_at_every_entry(
        home: Home) -> None:
    ok = home.run("chat", {"turn": 1}, session="h1")
    # a turn that fails leaves the session its last state: the next turn is given it
    failed = home.run("chat", {"no turn": 2}, at=1, session="h1")
    after = home.run("chat", {"turn": 3}, session="h1")
    assert (failed["status"], failed["error"]["message"]) == ("failed", "KeyError: 'turn'")
    assert after["output"]["turns"] == [1, 3]
    seen = [[(t["task_id"], t["status"], t["created"])
             for t in home.session("chat", "h1", at=at)["history"]] for at in (0, 1)]
    assert seen[0] == seen[1] == [(rec["task_id"], rec["status"], rec["created"])
                                  for rec in (ok, failed, after)]
    home.call("sessions.end", {"agent": "chat", "session": "h1"}, at=1)


def test_a_turn_ending_after_its_line_was_cancelled_rests_its_session(
        home: Home, tmp_path: Path) -> None:
    """A turn's end moves its session as the rule decides on what its store read
    (turns.ended): the line's one waiting turn cancelled leaves it, and the running
    turn's end then rests the session, no line left behind it, at every entry; the next
    turn starts with the last state kept."""
    gate = tmp_path / "gate"
    os.mkfifo(gate)
    first = home.submit("chat", {"turn": 1, "hold": str(gate)}, session="r1")
    home.status_of(first, "running")
    dropped = home.submit("chat", {"turn": 2}, at=1, session="r1")
    home.status_of(dropped, "queued")
    home.call("tasks.cancel", {"task_id": dropped})
    assert home.status_of(dropped, "cancelled", at=1)["attempts"] == []
    opening = held(gate)
    opening.start()
    assert home.wait(first)["output"]["turns"] == [1]
    opening.join(10)
    for at in (0, 1):
        view = wait_until(f"r1 idle at entry {at}", lambda at=at: next(
            (v for v in listed(home, "chat", "r1", at)
             if v["running"] is None and v["expires"] is not None), None))
        assert (view["tasks"], view["waiting"]) == (2, 0), view
        assert view["expires"] == pytest.approx(view["last_used"] + DEFAULT_SESSION_TTL,
                                                abs=0.5)
    assert [(t["task_id"], t["status"]) for t in home.session("chat", "r1", at=1)[
        "history"]] == [(first, "succeeded"), (dropped, "cancelled")]
    after = home.run("chat", {"turn": 3}, at=1, session="r1")
    assert (after["output"]["turns"], after["output"]["given"]) == ([1, 3], True)
    home.call("sessions.end", {"agent": "chat", "session": "r1"})


def test_a_turn_held_for_its_time_keeps_its_session_live_and_unfinished(home: Home) -> None:
    """A turn with a delay takes its session's free place as it is submitted and holds it
    till its time: a later turn waits behind it, in the order they came."""
    home.run("brief", {"turn": 1}, session="d1")
    later = home.submit("brief", {"turn": 2}, at=1, session="d1", delay=BRIEF_TTL + 3)
    # past the ttl of the first turn's end, while the second waits for its time
    for at in (0, 1):
        wait_until(f"d1 counts its held turn at entry {at}", lambda at=at: [
            (v["tasks"], v["expires"]) for v in listed(home, "brief", "d1", at)] == [
            (2, None)])
    code, message = home.refusal("sessions.end", {"agent": "brief", "session": "d1"})
    after = home.submit("brief", {"turn": 3}, session="d1")
    done = home.wait(later, at=1)
    assert (done["status"], done["output"]["turns"]) == ("succeeded", [1, 2]), done
    assert home.wait(after)["output"]["turns"] == [1, 2, 3]
    assert (code, message) == (jsonrpc.CONFLICT, f"session d1 of agent brief has 1 "
                               f"unfinished task: task {later} is queued; cancel them or "
                               "wait for them to end")
    home.call("sessions.end", {"agent": "brief", "session": "d1"})


def test_a_turn_held_for_its_time_cancelled_gives_its_place_to_the_next(home: Home) -> None:
    """A turn holding its session's place till its time, cancelled, gives the place to
    the turn behind it at once, and is never run (its time no longer comes)."""
    home.run("chat", {"turn": 1}, session="d3")
    later = home.submit("chat", {"turn": 2}, at=1, session="d3", delay=600)
    after = home.submit("chat", {"turn": 3}, session="d3")
    for at in (0, 1):
        assert [(v["running"], v["waiting"]) for v in listed(home, "chat", "d3", at)] == [
            (later, 1)]
    home.call("tasks.cancel", {"task_id": later}, at=1)
    assert home.wait(after)["output"]["turns"] == [1, 3]
    gone = home.task(later)
    assert (gone["status"], gone["attempts"]) == ("cancelled", []), gone
    assert [(t["task_id"], t["status"]) for t in home.session("chat", "d3", at=1)[
        "history"]][1:] == [(later, "cancelled"), (after, "succeeded")]
    home.call("sessions.end", {"agent": "chat", "session": "d3"})


def test_a_turn_held_for_its_time_behind_a_running_one_starts_at_its_time(
        home: Home, tmp_path: Path) -> None:
    """A turn with a delay, submitted while another of its session runs, takes its place in
    the line behind it; that turn's end, before its time, gives it the place, which it
    holds till then: it starts at its time, given the state the first one kept, a turn
    submitted after it waits behind it, and its session neither idles nor expires
    meanwhile."""
    gate = tmp_path / "gate"
    os.mkfifo(gate)
    first = home.submit("chat", {"turn": 1, "hold": str(gate)}, session="d2")
    home.status_of(first, "running")
    later = home.submit("chat", {"turn": 2}, at=1, session="d2", delay=HELD)
    due = home.task(later, at=1)["not_before"]
    after = home.submit("chat", {"turn": 3}, session="d2")
    opening = held(gate)
    opening.start()
    ended = home.wait(first)["attempts"][-1]["finished"]
    opening.join(10)
    assert ended < due, (ended, due)  # (else this test did not test the move)
    for at in (0, 1):
        assert [(v["tasks"], v["expires"]) for v in listed(home, "chat", "d2", at)] == [
            (3, None)]
    done = home.wait(later, at=1)
    assert (done["status"], done["output"]["turns"]) == ("succeeded", [1, 2]), done
    assert done["attempts"][0]["started"] >= due - 0.01, (done, due)
    assert home.wait(after)["output"]["turns"] == [1, 2, 3]
    home.call("sessions.end", {"agent": "chat", "session": "d2"})
