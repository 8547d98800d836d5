"""A session's labels on each home (DESIGN 28; supervisor/labels.py): what a turn read of
an untrusted tool is its session's, handed to its next turn wherever it runs, and goes
with the session: a session ended, or expired after its session_ttl, leaves its name no
taint, so the name's next session sends unasked. The agents: examples/misbehave.py
calling tests/servers/policy_mcp.py (test_labels.py's fleet)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ..test_labels import AGENT, FETCH, FETCHED, FLEET, SEND, SENT, TAINT, sequence
from .home import Home, wait_until

pytestmark = pytest.mark.timeout(180)
BRIEF_TTL = 3.0  # seconds an idle session of `brief` lives


def agents(directory: Path) -> str:
    del directory
    return FLEET + f"\n[agents.brief]{AGENT}session_ttl = {BRIEF_TTL}\n"


def tainted(home: Home, agent: str, name: str) -> None:
    """A turn of the session reads the untrusted fetcher; the next, at the other entry,
    asks before it sends, naming the taint."""
    first = home.run(agent, sequence(FETCH), session=name)
    assert (first["status"], first["output"]) == ("succeeded", [FETCHED]), first
    turn = home.submit(agent, sequence(SEND), at=1, session=name)
    [ask] = wait_until(f"an ask of {turn}", lambda: [
        a for a in home.asks(1) if a["task_id"] == turn])
    assert ask["subject"] == {**SEND, "policy": TAINT}
    home.decide(ask["id"], "approved", at=1)
    assert home.wait(turn, at=1)["output"] == [SENT]


def sends_unasked(home: Home, agent: str, name: str) -> dict[str, Any]:
    turn = home.submit(agent, sequence(SEND), session=name)
    done = wait_until(f"{turn} ended or asking", lambda: [
        a for a in home.asks() if a["task_id"] == turn] or (
        (t := home.task(turn))["status"] not in ("queued", "running") and t))
    assert isinstance(done, dict), done
    assert (done["status"], done["output"]) == ("succeeded", [SENT]), done
    return done


def test_an_ended_sessions_name_starts_with_no_taint(home: Home) -> None:
    tainted(home, "reader", "t1")
    home.call("sessions.end", {"agent": "reader", "session": "t1"}, at=1)
    sends_unasked(home, "reader", "t1")
    home.call("sessions.end", {"agent": "reader", "session": "t1"})


def test_an_expired_sessions_name_starts_with_no_taint(home: Home) -> None:
    tainted(home, "brief", "t2")
    for at in (0, 1):
        wait_until(f"t2 expired at entry {at}", lambda at=at: "t2" not in {
            v["session"] for v in home.call("sessions.list", {"agent": "brief"},
                                            at=at)["sessions"]}, timeout=BRIEF_TTL + 30)
    sends_unasked(home, "brief", "t2")
    home.call("sessions.end", {"agent": "brief", "session": "t2"})
