"""A task's tool budget on each home (DESIGN 28: the chain's budget link): a task's
max_tool_calls_per_task counts the calls it made live across its attempts, so a retry,
answered its earlier calls from its journal, has only what is left of its budget, on
whichever node it runs. The agent (tests/durable_agent.py) calls the counting MCP server
(tests/servers/counting_mcp.py), which keeps a line per call it really made."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ..daemon_harness import counting_fleet
from .home import Home, wait_until

pytestmark = pytest.mark.timeout(120)


def agents(directory: Path) -> str:
    return counting_fleet(directory, "budgeted", "durable_agent.py",
                          "max_tool_calls_per_task = 2")


@pytest.fixture(autouse=True)
def no_calls_yet(home: Home) -> Iterator[None]:
    (home.dir / "server-count").unlink(missing_ok=True)
    yield


def made_calls(home: Home) -> list[str]:
    path = home.dir / "server-count"
    return path.read_text().split() if path.exists() else []


def test_a_retry_has_only_what_is_left_of_its_tasks_tool_budget(home: Home,
                                                                tmp_path: Path) -> None:
    done = home.run("budgeted", {"calls": 3, "stop_after": 2, "how": "die",
                                 "marker": str(tmp_path / "marker")})
    assert [a["outcome"] for a in done["attempts"]] == ["lost", "failed"], done
    assert done["attempts"][1]["replayed"] == 2, done["attempts"]
    assert done["status"] == "failed", done
    assert (f"tool budget exceeded: task {done['task_id']} has made 2 tool calls "
            "(max_tool_calls_per_task 2)") in done["error"]["message"], done["error"]
    assert made_calls(home) == ["1", "2"]


def test_a_crash_of_the_home_gives_its_retry_no_new_tool_budget(home: Home,
                                                                tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    task_id = home.submit("budgeted", {"calls": 3, "stop_after": 2, "how": "hang",
                                       "marker": str(marker)})
    wait_until("the worker past call 2", marker.exists)
    home.crash(task_id)
    done = home.wait(task_id)
    assert [a["outcome"] for a in done["attempts"]] == ["lost", "failed"], done
    assert (f"tool budget exceeded: task {task_id} has made 2 tool calls "
            "(max_tool_calls_per_task 2)") in done["error"]["message"], done["error"]
    assert made_calls(home) == ["1", "2"]
