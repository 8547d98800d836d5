"""Asks, on each home (DESIGN 23, 25): an ask (a call's approval, a task's question) is
decided once, whoever races to decide it, and the loser is told how it ended; an ask past
its timeout ends `timed_out`; a task that ends withdraws its pending asks. The agents:
examples/misbehave.py calling the counting MCP server with `approve` on its tool, and
tests/asking_agent.py (`ctx.ask`)."""

from __future__ import annotations

import re
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest

from corral import jsonrpc
from corral.cli.client import CallFailed

from ..conftest import EXAMPLES, ROOT
from ..daemon_harness import PY
from ..test_approvals import bump, fleet
from .home import Home, wait_until

pytestmark = pytest.mark.timeout(120)
HERE = Path(__file__).parent.parent


def agents(directory: Path) -> str:
    return fleet(directory) + textwrap.dedent(f"""
        [agents.asker]
        command = ["{PY}", "{HERE}/asking_agent.py"]
        env = {{ PYTHONPATH = "{ROOT}" }}
        max_concurrent_tasks = 2
        retries = 1

        [agents.dozer]
        command = ["{PY}", "{EXAMPLES}/misbehave.py"]
        env = {{ PYTHONPATH = "{ROOT}" }}
        tools = ["counting__*"]
        approve = ["counting__bump"]
        suspend_after = 0.5
    """)


def made_calls(home: Home) -> list[str]:
    path = home.dir / "server-count"
    return path.read_text().split() if path.exists() else []


def ask_id_in(pattern: str, said: str) -> str:
    found = re.fullmatch(pattern, said)
    assert found is not None, (pattern, said)
    return found.group(1)


def test_an_ask_two_deciders_race_for_is_decided_once(home: Home) -> None:
    """An approve at one entry and a deny at the other (the other node of a cluster), at
    once: one wins, the other is refused naming how the ask ended, and the call runs as
    the winner said, once."""
    (home.dir / "server-count").unlink(missing_ok=True)
    task_id = home.submit("writer", bump(1))
    ask = home.ask_of(task_id)
    assert (ask["kind"], ask["agent"], ask["subject"], ask["end"]) == (
        "approval", "writer", {"tool": "counting__bump", "arguments": {"i": 1}}, None)
    assert [a["id"] for a in home.asks(at=1)] == [ask["id"]]
    start = threading.Barrier(2)
    said: dict[str, Any] = {}

    def decide(decision: str, at: int) -> None:
        start.wait()
        try:
            said[decision] = home.decide(ask["id"], decision, at=at, reason="not now")
        except CallFailed as e:
            said[decision] = e

    racers = [threading.Thread(target=decide, args=(d, at))
              for at, d in enumerate(("approved", "denied"))]
    for t in racers:
        t.start()
    for t in racers:
        t.join(60)
    [(won, ended)] = [(d, got) for d, got in said.items() if not isinstance(got, Exception)]
    [refused] = [got for got in said.values() if isinstance(got, CallFailed)]
    assert ended["end"] == won
    assert refused.code == jsonrpc.CONFLICT, refused.code
    # the loser is told how the ask ended (one whose winner is still writing waits for it)
    assert re.fullmatch(rf"ask {ask['id']} has ended: {won} by {ended['by']} at \S+",
                        refused.message), refused.message
    done = home.wait(task_id)
    assert done["status"] == "succeeded", done
    [result] = done["output"]
    if won == "approved":
        assert result["content"][0]["text"] == "bumped 1"
        assert made_calls(home) == ["1"]
    else:
        assert result["isError"] is True
        assert made_calls(home) == []
    for at in (0, 1):
        got = home.call("approvals.get", {"id": ask["id"]}, at=at)
        assert (got["end"], got["by"]) == (won, ended["by"])
        assert home.asks(at=at) == []


def test_a_task_held_for_a_decision_reads_waiting_and_names_its_ask(home: Home) -> None:
    task_id = home.submit("writer", bump(6))
    ask = home.ask_of(task_id)
    held = home.task(task_id, at=1)
    home.decide(ask["id"], "denied", at=1, reason="not now")
    assert home.wait(task_id)["status"] == "succeeded"
    assert [a["id"] for a in held["asks"]] == [ask["id"]], held
    assert held["status"] == "waiting", held


def test_an_approval_past_its_timeout_ends_timed_out_and_its_task_fails(home: Home
                                                                          ) -> None:
    done = home.run("hasty", bump(3))
    assert done["status"] == "failed", done
    ask_id = ask_id_in(r"tool call counting__bump was not approved within 0\.5 s "
                       r"\(approve_timeout; ask (\S+)\)", done["error"]["message"])
    got = home.call("approvals.get", {"id": ask_id}, at=1)
    assert (got["end"], got["by"], got["task_id"]) == ("timed_out", "corral",
                                                       done["task_id"])
    assert home.asks() == []


def test_a_question_past_its_timeout_ends_timed_out_and_the_agent_is_told(home: Home
                                                                         ) -> None:
    done = home.run("asker", {"prompt": "Quick?", "timeout": 0.5})
    assert done["status"] == "succeeded", done
    assert done["output"]["code"] == jsonrpc.REQUEST_TIMEOUT
    ask_id = ask_id_in(r"task/ask: question (\S+) had no answer within 0\.5s",
                       done["output"]["refused"])
    got = home.call("approvals.get", {"id": ask_id}, at=1)
    assert (got["kind"], got["end"], got["task_id"]) == ("question", "timed_out",
                                                         done["task_id"])


def test_a_question_is_answered_once_and_the_answer_reaches_the_agent(home: Home) -> None:
    task_id = home.submit("asker", {"prompt": "Which file?"})
    ask = home.ask_of(task_id, at=1)
    assert (ask["kind"], ask["subject"]) == ("question", {"prompt": "Which file?"})
    home.decide(ask["id"], "answered", at=1, answer="/srv/a")
    done = home.wait(task_id)
    assert done["status"] == "succeeded", done
    assert done["output"]["answer"] == "/srv/a"
    code, message = home.refusal("approvals.resolve", {
        "id": ask["id"], "decision": "answered", "answer": "/srv/b"})
    assert code == jsonrpc.CONFLICT
    assert re.fullmatch(rf"ask {ask['id']} has ended: answered by uid \d+ pid \d+ at \S+",
                        message), message


def test_an_answer_is_a_step_a_retry_is_given_without_asking_again(home: Home,
                                                                    tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    task_id = home.submit("asker", {"prompt": "Go?", "die_after_answer": True,
                                    "marks": str(marks)})
    home.decide(home.ask_of(task_id)["id"], "answered", at=1, answer="yes")
    done = home.wait(task_id)
    assert done["status"] == "succeeded", done
    assert [a["outcome"] for a in done["attempts"]] == ["lost", "succeeded"]
    # the retry asked again and was answered from the journal: no ask made
    assert done["output"] == {"answer": "yes", "second": None, "attempt": 2}
    assert marks.read_text() == "1\n2\n"
    assert home.asks() == []


def test_a_pending_ask_outlives_a_crash_and_approved_its_call_runs_once(home: Home
                                                                       ) -> None:
    (home.dir / "server-count").unlink(missing_ok=True)
    task_id = home.submit("writer", bump(5))
    ask = home.ask_of(task_id)
    home.crash(task_id)
    # the same ask, pending; the task's retry made the same call and waits on it again
    wait_until("the retry waiting on the same ask", lambda: [
        a["id"] for a in home.task(task_id, at=1).get("asks", [])] == [ask["id"]])
    assert [a["id"] for a in home.asks(at=1)] == [ask["id"]]
    home.decide(ask["id"], "approved", at=1)
    done = home.wait(task_id)
    assert done["status"] == "succeeded", done
    assert done["output"][0]["content"][0]["text"] == "bumped 5"
    assert made_calls(home) == ["5"]


SCHEMA = {"type": "object", "properties": {"path": {"type": "string"}},
          "required": ["path"]}


def test_every_bad_decision_is_refused_with_its_words_and_the_ask_kept(home: Home
                                                                        ) -> None:
    (home.dir / "server-count").unlink(missing_ok=True)
    asking = home.submit("asker", {"prompt": "Which?", "schema": SCHEMA})
    question = home.ask_of(asking)["id"]
    calling = home.submit("writer", bump(7))
    approval = home.ask_of(calling)["id"]
    for params, said in [
        ({"id": question, "decision": "answered", "answer": "x"},
         f"the answer does not fit ask {question}'s schema: the answer: 'x' is not of "
         "type 'object'"),
        ({"id": question, "decision": "approved"},
         f"ask {question} is a question: it is answered or denied, not approved"),
        ({"id": approval, "decision": "answered", "answer": 1},
         f"ask {approval} is an approval: it is approved or denied, not answered")]:
        assert home.refusal("approvals.resolve", params, at=1) == (
            jsonrpc.INVALID_PARAMS, said)
    assert home.refusal("approvals.resolve", {"id": "ask-none", "decision": "denied"}
                        ) == (jsonrpc.NOT_FOUND, "no such ask: ask-none")
    assert sorted(a["id"] for a in home.asks()) == sorted([question, approval])
    # decided as they may be: an answer that fits, an approval with other arguments
    home.decide(question, "answered", at=1, answer={"path": "/a"})
    assert home.wait(asking)["output"]["answer"] == {"path": "/a"}
    home.decide(approval, "approved", arguments={"i": 8})
    assert home.wait(calling)["output"][0]["content"][0]["text"] == "bumped 8"
    assert made_calls(home) == ["8"]


def test_a_denied_call_is_the_agents_error_naming_who_and_why(home: Home) -> None:
    task_id = home.submit("writer", bump(9))
    ask = home.ask_of(task_id)
    denied = home.decide(ask["id"], "denied", at=1, reason="not today")
    assert denied["end"] == "denied"
    [result] = home.wait(task_id)["output"]
    assert result["isError"] is True
    assert result["content"][0]["text"] == (f"tool call counting__bump was denied by "
                                            f"{denied['by']} (ask {ask['id']}): not today")
    assert re.fullmatch(r"uid \d+ pid \d+", denied["by"]), denied


def test_a_task_that_ends_withdraws_its_pending_asks(home: Home) -> None:
    """Once the task's end is readable, so is its ask's withdrawal: listed no more, read
    and refused as withdrawn."""
    (home.dir / "server-count").unlink(missing_ok=True)
    task_id = home.submit("writer", bump(4))
    ask = home.ask_of(task_id, at=1)
    home.call("tasks.cancel", {"task_id": task_id})
    assert home.wait(task_id)["status"] == "cancelled"
    for at in (0, 1):
        assert home.asks(at=at) == []
        got = home.call("approvals.get", {"id": ask["id"]}, at=at)
        assert (got["end"], got["by"]) == ("withdrawn", "corral"), got
    code, message = home.refusal("approvals.resolve", {"id": ask["id"],
                                                       "decision": "approved"}, at=1)
    assert code == jsonrpc.CONFLICT
    assert message.startswith(f"ask {ask['id']} has ended: withdrawn by corral at "), message
    assert made_calls(home) == []


def test_a_suspended_task_cancelled_ends_so_in_the_same_words_and_withdraws_its_ask(
        home: Home) -> None:
    """A task suspended for its ask (past its agent's suspend_after: on a cluster, its
    record in Redis, on no node), cancelled at the other entry: the engine's words on
    either home (taskmachine.cancel_failure), its ask withdrawn, its call never made."""
    (home.dir / "server-count").unlink(missing_ok=True)
    task_id = home.submit("dozer", bump(7))
    ask = home.ask_of(task_id)
    home.status_of(task_id, "suspended")
    home.call("tasks.cancel", {"task_id": task_id}, at=1)
    done = home.wait(task_id)
    assert (done["status"], done["error"]) == ("cancelled", {
        "code": jsonrpc.REQUEST_CANCELLED,
        "message": "cancelled while suspended (waiting for a person)"}), done
    for at in (0, 1):
        got = home.call("approvals.get", {"id": ask["id"]}, at=at)
        assert (got["end"], got["by"]) == ("withdrawn", "corral"), got
    assert made_calls(home) == []
