"""TaskSteps.tool_call's `hash_while_live` (the model gateway's): the journaled step
names the same arguments' hash whether it was made while the call waited, after a call
that never waited, or not early at all; a call that fails journals nothing."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from corral.supervisor.stream import Stream
from corral.supervisor.tasks.interceptors import Interceptors
from corral.supervisor.tasks.stepjournal import Step
from corral.supervisor.tasks.steps import TaskSteps, args_hash


class Journal:
    def __init__(self) -> None:
        self.steps: list[Step] = []

    def put(self, step: Step) -> None:
        self.steps.append(step)

    async def committed(self, task_id: str | None = None) -> None:
        return None


def _engine() -> tuple[TaskSteps, Journal, Any, Any]:
    steps = TaskSteps(Stream(), lambda task_id: None, Interceptors())
    journal = Journal()
    task = SimpleNamespace(id="t1", attempt=1, retries_left=1, journal_here=True,
                           steps_kept=None, attempts=[])
    replica = SimpleNamespace(spec=SimpleNamespace(replay=True, replay_tools=[],
                                                   tenant="default", max_step_bytes=0),
                              host=SimpleNamespace(tenant_spec=lambda tenant: None))
    steps.journal_to(journal)  # type: ignore[arg-type]
    return steps, journal, task, replica


ARGUMENTS = {"endpoint": "/v1/chat/completions",
             "body": {"model": "m", "messages": [{"role": "user", "content": "hi"}]}}


async def _waits() -> dict[str, Any]:
    await asyncio.sleep(0)  # an upstream's answer awaited
    return {"answer": 1}


async def _answers_at_once() -> dict[str, Any]:
    return {"answer": 1}


@pytest.mark.parametrize("live", [_waits, _answers_at_once])
@pytest.mark.parametrize("early", [True, False])
async def test_the_step_names_the_arguments_hash_however_it_was_made(
        live: Any, early: bool) -> None:
    steps, journal, task, replica = _engine()
    await steps.tool_call(task, replica, "model:m", ARGUMENTS, live, hash_while_live=early)
    assert [(s.seq, s.name, s.args) for s in journal.steps] == [
        (1, "model:m", args_hash(ARGUMENTS))]


async def test_a_call_that_fails_journals_nothing_and_its_early_hash_is_dropped() -> None:
    steps, journal, task, replica = _engine()

    async def fails() -> Any:
        raise RuntimeError("upstream down")

    with pytest.raises(RuntimeError):
        await steps.tool_call(task, replica, "model:m", ARGUMENTS, fails,
                              hash_while_live=True)
    await asyncio.sleep(0)
    assert journal.steps == []
