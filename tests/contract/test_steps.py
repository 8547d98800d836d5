"""Steps replay, on each home (DESIGN 17, 25, 26): a retried attempt is answered its
earlier tool calls and named steps from the task's journal, in order, and each call is
made once; a crash of the home (a node's daemon SIGKILLed and started again, a cluster
node SIGKILLed) costs only the work in flight. The agent (tests/durable_agent.py) calls
the counting MCP server (tests/servers/counting_mcp.py), which keeps a line per call it
really made, across every kill."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral import jsonrpc

from ..daemon_harness import PY, counting_fleet
from .home import Home, wait_until

pytestmark = pytest.mark.timeout(120)
HERE = Path(__file__).parent.parent


def agents(directory: Path) -> str:
    # `asks`: a raw worker (tests/replaying_agent.py) that keeps step "s" by the protocol
    # on its first attempt, exits, and asks for it again and again on its retry
    return counting_fleet(directory, "durable", "durable_agent.py") + textwrap.dedent(f"""
        [agents.asks]
        command = ["{PY}", "{HERE}/replaying_agent.py"]
        retries = 1
        backoff_initial = 0.05
    """)


def made_calls(home: Home) -> list[str]:
    """The calls the server really made, each its `i`, in order."""
    path = home.dir / "server-count"
    return path.read_text().split() if path.exists() else []


@pytest.fixture(autouse=True)
def no_calls_yet(home: Home) -> Iterator[None]:
    (home.dir / "server-count").unlink(missing_ok=True)
    yield


def test_a_retried_attempt_is_answered_its_earlier_tool_calls_each_made_once(
        home: Home, tmp_path: Path) -> None:
    done = home.run("durable", {"calls": 6, "stop_after": 3, "how": "die",
                                "marker": str(tmp_path / "marker"), "checkpoint": True})
    assert done["status"] == "succeeded", done
    assert done["output"]["results"] == [f"bumped {i}" for i in range(1, 7)]
    assert made_calls(home) == [str(i) for i in range(1, 7)]
    first, second = done["attempts"]
    assert (first["outcome"], second["outcome"]) == ("lost", "succeeded")
    assert second["replayed"] == 3 and "diverged" not in second
    # and the retry was given the task's last checkpoint
    assert (done["output"]["resumed"], done["output"]["task_state"]) == (True, {"done": 3})


def test_a_retried_attempt_is_given_its_named_steps_each_run_once(
        home: Home, tmp_path: Path) -> None:
    counter = tmp_path / "counter"
    done = home.run("durable", {"calls": 5, "stop_after": 2, "how": "die", "named": True,
                                "counter": str(counter), "marker": str(tmp_path / "m")})
    assert done["status"] == "succeeded", done
    assert done["output"]["results"] == [f"counted {i}" for i in range(1, 6)]
    assert counter.read_text().split() == [str(i) for i in range(1, 6)]
    assert [a["outcome"] for a in done["attempts"]] == ["lost", "succeeded"]
    assert done["attempts"][1]["replayed"] == 2


def test_a_named_step_kept_by_the_protocol_is_given_to_every_ask_of_the_retry(
        home: Home) -> None:
    done = home.run("asks", {"asks": 50})
    assert done["status"] == "succeeded", done
    assert done["output"] == {"got": [{"found": True, "result": 42}] * 50, "own": {
        "code": jsonrpc.INVALID_PARAMS,
        "message": "step/get: the step name 'corral/lineage' is reserved: names "
                   "beginning spawn: or corral/ are corral's own steps"}}
    assert [a["outcome"] for a in done["attempts"]] == ["lost", "succeeded"]
    assert done["attempts"][1]["replayed"] == 1


def test_a_retry_that_diverges_is_marked_and_goes_on_live(home: Home, tmp_path: Path
                                                          ) -> None:
    done = home.run("durable", {"calls": 5, "stop_after": 4, "how": "die",
                                "diverge_at": 3, "marker": str(tmp_path / "m")})
    assert done["status"] == "succeeded", done
    # 1-2 from the steps; from 3 other arguments: live
    assert made_calls(home) == ["1", "2", "3", "4", "300", "400", "500"]
    second = done["attempts"][1]
    assert (second["replayed"], second["diverged"]) == (2, 3)


def test_a_crash_of_the_home_costs_only_the_work_in_flight(home: Home, tmp_path: Path
                                                           ) -> None:
    marker = tmp_path / "marker"
    task_id = home.submit("durable", {"calls": 6, "stop_after": 4, "how": "hang",
                                      "marker": str(marker), "checkpoint": True})
    wait_until("the worker past call 4", marker.exists)
    home.crash(task_id)
    done = home.wait(task_id)
    assert done["status"] == "succeeded", done
    assert done["output"]["results"] == [f"bumped {i}" for i in range(1, 7)]
    # the four calls made before the crash are not made again
    assert made_calls(home) == [str(i) for i in range(1, 7)]
    assert [a["outcome"] for a in done["attempts"]] == ["lost", "succeeded"]
    assert done["attempts"][1]["replayed"] == 4
    # and the retry was given the checkpoint answered before the crash: durable then
    assert (done["output"]["resumed"], done["output"]["task_state"]) == (True, {"done": 4})
