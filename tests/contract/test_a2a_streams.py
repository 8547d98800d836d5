"""An A2A stream resubscribed after the daemon running its task was killed (-9), on each
home (DESIGN 29; docs/a2a.md, "Streams that survive"): at the same daemon started again (a
node), at the other node, which took the task over (a cluster). The journal is replayed,
then followed: every chunk the first stream was sent comes again first, in its order,
each attempt's chunks from its first, none twice, and the last attempt's whole (a
cluster's live output is in its Redis, written by the node that runs the task, read by
any: cluster/clusteroutput.py)."""

from __future__ import annotations

import json
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ..a2a.counter_agent import COUNT
from ..a2a.harness import assert_replayed
from ..cluster.harness import kill9
from ..conftest import ROOT
from ..daemon_harness import PY
from .home import PATIENCE, Home, wait_until

pytestmark = pytest.mark.timeout(180)
COUNTER = Path(__file__).resolve().parent.parent / "a2a" / "counter_agent.py"


ASKING = Path(__file__).resolve().parent / "asking_agent.py"


def agents(directory: Path) -> str:
    return textwrap.dedent(f"""
        [agents.counter]
        command = ["{PY}", "{COUNTER}"]
        env = {{ PYTHONPATH = "{ROOT}" }}
        retry_lost = 3
        backoff_initial = 0.05
        [agents.asking]
        command = ["{PY}", "{ASKING}"]
        env = {{ PYTHONPATH = "{ROOT}", ASKING_MARK = "{directory}/ask-now" }}
        [a2a]
        anonymous = ["counter", "asking"]
    """)


def stream(home: Home, at: int, method: str, params: dict[str, Any], agent: str = "counter"
           ) -> Iterator[dict[str, Any]]:
    """The events of a streamed JSON-RPC call of the door at an entry, as they come."""
    port = home.ports[at % len(home.ports)]
    body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}
    with httpx.stream("POST", f"http://127.0.0.1:{port}/a2a/{agent}", json=body,
                      timeout=PATIENCE) as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            if line.startswith("data:"):
                event: dict[str, Any] = json.loads(line[len("data:"):])["result"]
                yield event


def chunks(events: list[dict[str, Any]]) -> list[str]:
    """The texts of the `stream` artifact's pieces: the agent's live output."""
    return [p["text"] for e in events if "artifactUpdate" in e
            and e["artifactUpdate"]["artifact"]["artifactId"] == "stream"
            for p in e["artifactUpdate"]["artifact"]["parts"]]


def test_a_stream_resubscribed_where_its_task_went_has_no_gap_and_no_duplicate(
        home: Home) -> None:
    before: list[dict[str, Any]] = []
    message = {"messageId": f"count-{uuid.uuid4().hex[:8]}", "role": "ROLE_USER",
               "parts": [{"text": "hi"}]}
    for event in stream(home, 0, "SendStreamingMessage", {"message": message}):
        before.append(event)
        if len(chunks(before)) == 5:
            break
    task_id = before[0]["task"]["id"]
    if home.kind == "node":
        home.crash(task_id)  # (-9 of its one daemon, started again)
        after = list(stream(home, 0, "SubscribeToTask", {"id": task_id}))
    else:
        # -9 of the node its attempt ran on; the other's subscriber comes once that
        # node runs the task's next attempt, and the killed one is started after: its
        # start on a loaded host outlasted the next attempt, which had ended by then
        ran = ["a", "b"].index(home.task(task_id)["attempts"][-1]["node"])
        dead = home.entries[ran]
        kill9(dead)
        try:
            wait_until("the task's next attempt running on the other node", lambda: (
                (last := home.task(task_id, 1 - ran)["attempts"][-1])["node"]
                == "ab"[1 - ran] and last["outcome"] == "running"))
            after = list(stream(home, 1 - ran, "SubscribeToTask", {"id": task_id}))
        finally:
            dead.start()
            home.joined()
    assert after[0]["task"]["id"] == task_id, after[0]
    assert_replayed(chunks(before), chunks(after), COUNT)
    final = after[-1]["statusUpdate"]["status"]["state"]
    assert final == "TASK_STATE_COMPLETED", after[-1]


def test_a_subscriber_where_the_task_does_not_run_is_sent_its_chunks_then_its_question(
        home: Home) -> None:
    """A stream followed at the other entry (a cluster's node that does not run the task)
    while the task runs: its chunk as it comes, then input-required once it asks."""
    message = {"messageId": f"ask-{uuid.uuid4().hex[:8]}", "role": "ROLE_USER",
               "parts": [{"text": "hi"}]}
    first = stream(home, 0, "SendStreamingMessage", {"message": message}, "asking")
    task_id = next(first)["task"]["id"]
    first.close()
    ran = (["a", "b"].index(home.task(task_id)["attempts"][-1]["node"])
           if home.kind == "cluster" else 0)
    after: list[dict[str, Any]] = []
    for event in stream(home, 1 - ran, "SubscribeToTask", {"id": task_id}, "asking"):
        after.append(event)
        if any("artifactUpdate" in e for e in after):
            (home.dir / "ask-now").touch()
        if "statusUpdate" in event:
            break
    assert [list(e) for e in after] == [["task"], ["artifactUpdate"], ["statusUpdate"]]
    assert after[1]["artifactUpdate"]["artifact"]["parts"] == [{"text": "before the question"}]
    assert after[2]["statusUpdate"]["status"]["state"] == "TASK_STATE_INPUT_REQUIRED"
