"""recorded.outcome, the one way a workflow's or a team's step waits for the task whose id
it recorded: waited for while the engine runs it, read once it ended (from memory, or from
the task journal in the next daemon), made once by `submit` when the engine never heard of
it; a refused submission said as the engine says it. A real daemon's engine each time."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pytest

from corral.jsonrpc import RpcError
from corral.supervisor.tasks.ids import new_id
from corral.supervisor.tasks.model import Task
from corral.supervisor.tasks.recorded import RecordedTask, outcome
from corral.taskoptions import RetryOptions, TaskOptions

from .daemon_harness import in_process
from .test_workflows import agent_toml


def rec(task_id: str, agent: str = "wf") -> RecordedTask:
    """A step's record of its task, of no one tenant (the operator's run)."""
    return RecordedTask(task_id, agent, None)


def never() -> Task:
    raise AssertionError("submitted a task the engine has")


def output(info: Any) -> Any:
    return msgspec.json.decode(info.output) if isinstance(info.output, msgspec.Raw) \
        else info.output


@pytest.mark.deadline(120)
async def test_a_recorded_task_is_waited_for_read_or_made_once(tmp_path: Path) -> None:
    made: list[str] = []
    task_id = new_id()
    async with in_process(tmp_path, agent_toml(tmp_path, replicas=1)) as d:
        engine = d.services.task_engine
        # waited for: the engine runs it
        running = engine.submit("wf", {"op": "echo", "v": 1, "sleep": 0.3})
        info = await outcome(engine, rec(running.id), never)
        assert (info.task_id, str(info.status), output(info)) == (
            running.id, "succeeded", {"op": "echo", "v": 1, "sleep": 0.3})
        # read: it ended
        again = await outcome(engine, rec(running.id), never)
        assert (again.task_id, str(again.status)) == (running.id, "succeeded")

        # made: the engine never heard of it; made once, under the recorded id
        def submit() -> Task:
            made.append(task_id)
            return engine.submit("wf", {"op": "echo", "v": 2}, task_id=task_id)
        info = await outcome(engine, rec(task_id), submit)
        assert (made, info.task_id, str(info.status), output(info)) == (
            [task_id], task_id, "succeeded", {"op": "echo", "v": 2})
        assert str((await outcome(engine, rec(task_id), never)).status) == "succeeded"
        # one that fails is read as failed, with the worker's error
        failing = engine.submit("wf", {"op": "square", "x": "two"},
                                TaskOptions(retry=RetryOptions(retries=0)))
        info = await outcome(engine, rec(failing.id), never)
        assert (str(info.status), info.error is not None) == ("failed", True), info
        assert "can't multiply sequence" in info.error.message  # type: ignore[union-attr]
        # a submission the engine refuses: its refusal, nothing made
        ghost = new_id()
        with pytest.raises(RpcError) as refused:
            await outcome(engine, rec(ghost, "nope"),
                          lambda: engine.submit("nope", 1, task_id=ghost))
        assert refused.value.message == "no such agent: nope (agents: wf)"
        assert ghost not in engine.active
    # read where it ended: the next daemon has it in its task journal only
    async with in_process(tmp_path, agent_toml(tmp_path, replicas=1)) as d:
        engine = d.services.task_engine
        assert task_id not in engine.active and task_id not in engine.finished
        info = await outcome(engine, rec(task_id), never)
        assert (info.task_id, str(info.status), output(info)) == (
            task_id, "succeeded", {"op": "echo", "v": 2})
        assert made == [task_id]


@pytest.mark.deadline(120)
async def test_a_fresh_id_is_submitted_without_asking_the_journal(tmp_path: Path) -> None:
    """A step whose row was made just now (StepEngine.step): no task of its id can exist,
    so the journal is not read for it; an id the engine knows is still looked for."""
    async with in_process(tmp_path, agent_toml(tmp_path, replicas=1)) as d:
        engine = d.services.task_engine
        journal = engine.journal
        assert journal is not None
        asked: list[str] = []
        journal._loop_rows().set_trace_callback(asked.append)
        task_id = new_id()
        info = await outcome(engine, rec(task_id), lambda: engine.submit(
            "wf", {"op": "echo", "v": 3}, task_id=task_id), fresh=True)
        assert (info.task_id, str(info.status), output(info)) == (
            task_id, "succeeded", {"op": "echo", "v": 3})
        assert not [q for q in asked if "FROM tasks" in q], asked
        # (not fresh: looked for, and found ended, not made again)
        done = new_id()
        engine.submit("wf", {"op": "echo", "v": 4}, task_id=done)
        await engine.info(done, wait=True)
        await engine.committed()
        engine.finished.pop(done, None)
        again = await outcome(engine, rec(done), never)
        assert (again.task_id, output(again)) == (done, {"op": "echo", "v": 4})
        assert [q for q in asked if "FROM tasks WHERE id" in q], asked

