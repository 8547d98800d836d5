"""A task's view on each home (issue 86: one behaviour on both homes): what `tasks.get`,
the REST API's task and `corral task --json` say of a task is the same on a node and on a
cluster, at every entry: the tool calls it made (each once, a call answered from its
journal not again), its queue wait, its last progress, and what its workers reported
they spent, every attempt's. The agent (tests/durable_agent.py) calls the counting MCP server
(tests/servers/counting_mcp.py); `usage` is examples/misbehave.py's, `spender`
tests/contract/usage_agent.py's."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ..daemon_harness import PY, ROOT, counting_fleet, sleeper
from .home import Home, wait_until

pytestmark = pytest.mark.timeout(120)
HERE = Path(__file__).parent.parent


def agents(directory: Path) -> str:
    # `once`: the durable agent with no next attempt, so its calls are journaled nowhere
    return counting_fleet(directory, "durable", "durable_agent.py") + sleeper("usage") + \
        textwrap.dedent(f"""
        [agents.once]
        command = ["{PY}", "{HERE}/durable_agent.py"]
        env = {{ PYTHONPATH = "{ROOT}" }}
        retry_lost = 0
        tools = ["counting__*"]

        [agents.spender]
        command = ["{PY}", "{HERE}/contract/usage_agent.py"]
        env = {{ PYTHONPATH = "{ROOT}" }}
        retries = 1
        retry_on = ["failed"]
        backoff_initial = 0.05
        """)


def views(home: Home, task_id: str) -> list[dict[str, Any]]:
    """The task as every door of every entry says it: tasks.get, the REST API, the CLI."""
    got = []
    for at in range(len(home.entries)):
        got.append(home.task(task_id, at))
        status, body = home.tenant("default", at)("GET", f"/tasks/{task_id}")
        assert status == 200, body
        got.append(body)
        r = home.cli("task", task_id, "--json", at=at)
        assert r.returncode == 0, r.stderr
        got.append(json.loads(r.stdout))
    return got


def test_a_finished_tasks_view_counts_the_tool_calls_it_made(home: Home) -> None:
    done = home.run("durable", {"calls": 3})
    assert done["status"] == "succeeded", done
    assert [v["tool_calls"] for v in views(home, done["task_id"])] == [3] * 3 * len(
        home.entries)


def test_a_retried_tasks_view_counts_each_call_once(home: Home, tmp_path: Path) -> None:
    # its first attempt makes two calls and dies; the retry is answered them from the
    # journal and makes the third: three calls, none counted twice
    done = home.run("durable", {"calls": 3, "stop_after": 2, "how": "die",
                                "marker": str(tmp_path / "marker")})
    assert [a["outcome"] for a in done["attempts"]] == ["lost", "succeeded"], done
    assert done["attempts"][1]["replayed"] == 2, done["attempts"]
    assert [v["tool_calls"] for v in views(home, done["task_id"])] == [3] * 3 * len(
        home.entries)


def running_calls(home: Home, agent: str, marker: Path,
                  until: Callable[[list[dict[str, Any]]], bool] = lambda _: True
                  ) -> list[dict[str, Any]]:
    """The views of a task of `agent` hanging after its second call (the first read that
    `until` admits), then cancelled."""
    task_id = home.submit(agent, {"calls": 3, "stop_after": 2, "how": "hang",
                                  "marker": str(marker)})
    try:
        wait_until("the worker past call 2", marker.exists)
        said: list[list[dict[str, Any]]] = []
        wait_until("its views", lambda: until(said.append(views(home, task_id)) or said[-1]))
        running = said[-1]
        assert [v["status"] for v in running] == ["running"] * len(running), running
        return running
    finally:
        home.call("tasks.cancel", {"task_id": task_id})
        home.wait(task_id)


def test_a_running_tasks_view_counts_the_calls_made_so_far(home: Home,
                                                           tmp_path: Path) -> None:
    running = running_calls(home, "durable", tmp_path / "marker")
    assert [v["tool_calls"] for v in running] == [2] * len(running), running


def test_a_running_tasks_view_counts_its_calls_journaled_nowhere(home: Home,
                                                                tmp_path: Path) -> None:
    # on a cluster the node running it says them at once, and writes them for the other
    # entries once a beat (decision 2095): every view says them within a beat of the call
    running = running_calls(home, "once", tmp_path / "marker",
                            lambda said: all(v["tool_calls"] == 2 for v in said))
    assert [v["tool_calls"] for v in running] == [2] * len(running), running


def test_a_started_tasks_view_says_its_queue_wait(home: Home) -> None:
    done = home.run("durable", {"calls": 0})
    for view in views(home, done["task_id"]):
        assert view["queue_wait"] == pytest.approx(
            max(0.0, view["started"] - view["created"]), abs=1e-3), view


def test_a_tasks_view_says_the_usage_its_worker_reported(home: Home) -> None:
    done = home.run("usage", {"do": "usage", "reports": [
        {"input_tokens": 10, "output_tokens": 4, "cost_usd": 0.5, "model": "m"}]})
    assert done["status"] == "succeeded", done
    for view in views(home, done["task_id"]):
        assert view["usage"] is not None, view
        assert (view["usage"]["input_tokens"], view["usage"]["output_tokens"],
                view["usage"]["cost_usd"]) == (10, 4, 0.5), view


def test_a_tasks_view_asked_with_its_input_says_it(home: Home) -> None:
    sent = {"calls": 1, "note": "as sent"}
    done = home.run("durable", sent)
    for at in range(len(home.entries)):
        view = home.call("tasks.get", {"task_id": done["task_id"], "input": True}, at)
        assert view["input"] == sent, view
        status, body = home.tenant("default", at)("GET",
                                                   f"/tasks/{done['task_id']}?input=true")
        assert (status, body["input"]) == (200, sent), body


def test_a_retried_tasks_view_says_the_usage_of_every_attempt(home: Home) -> None:
    # each attempt reports the same: the task spent it twice, once on each home's node
    done = home.run("spender", {"reports": [
        {"input_tokens": 10, "output_tokens": 4, "cost_usd": 0.5, "model": "m"},
        {"input_tokens": 1, "output_tokens": 2, "cost_usd": 0.25, "model": "n"}]})
    assert [a["outcome"] for a in done["attempts"]] == ["failed", "succeeded"], done
    for view in views(home, done["task_id"]):
        usage = view["usage"]
        assert (usage["input_tokens"], usage["output_tokens"], usage["cost_usd"],
                usage["reports"]) == (22, 12, 1.5, 4), view
        assert {k: (u["input_tokens"], u["reports"]) for k, u in usage["models"].items()
                } == {"m": (20, 2), "n": (2, 2)}, view


def test_a_finished_tasks_view_says_its_last_progress(home: Home) -> None:
    done = home.run("usage", {"do": "progress", "steps": 3})
    assert done["status"] == "succeeded", done
    last = {"progress": 3, "total": 3, "message": "step 3"}
    assert [v["progress"] for v in views(home, done["task_id"])] == [last] * 3 * len(
        home.entries)
