"""A task's question for a person (issue 55 item 3; `ctx.ask`, the protocol's `task/ask`,
docs/protocol.md#questions): asked into the inbox, the task waits, the answer comes back
to the agent; the answer is a step of the task, so a retried attempt is given it without
asking again; declined and timed-out questions are the agent's errors with exact words;
a schema that is not one, and a prompt past its bound, are refused to the agent.

Real processes: the daemon in this loop (its SQLite journals and inbox) and SDK workers
(tests/asking_agent.py); the person is the inbox's `decide`, as its surfaces call it."""

from __future__ import annotations

import asyncio
import textwrap
from pathlib import Path
from typing import Any

import pytest

from corral import jsonrpc
from corral.supervisor.tasks.inbox import Ask, AskEnd, AskEnded, AskKind, Decision, decide
from corral.taskoptions import TaskOptions
from corral.workerproto import MAX_KEY_CHARS, MAX_PROMPT_CHARS

from .conftest import ROOT
from .daemon_harness import PY, in_process

HERE = Path(__file__).parent


def fleet(extra: str = "") -> str:
    return textwrap.dedent(f"""
        [agents.asker]
        command = ["{PY}", "{HERE}/asking_agent.py"]
        env = {{ PYTHONPATH = "{ROOT}" }}
        retries = 1
        max_concurrent_tasks = 4
        backoff_initial = 0.05

        [agents.async-asker]
        command = ["{PY}", "{HERE}/asking_agent.py", "--async"]
        env = {{ PYTHONPATH = "{ROOT}" }}
        max_concurrent_tasks = 4
    """) + extra


def asks_made(d: Any) -> asyncio.Queue[Ask]:
    """Each ask as the inbox makes it (pending), in order."""
    made: asyncio.Queue[Ask] = asyncio.Queue()
    d.sup.tasks.stream.subscribe(
        lambda e: made.put_nowait(e.ask) if e.ask.pending else None, AskEnded)
    return made


async def answered(d: Any, made: asyncio.Queue[Ask], data: Any) -> Ask:
    ask = await asyncio.wait_for(made.get(), 30)
    return await decide(d.sup.tasks.inbox, Decision(ask.id, AskEnd.ANSWERED, "token ann", data))


SCHEMA = {"type": "object", "properties": {"path": {"type": "string"}},
          "required": ["path"]}


@pytest.mark.parametrize("agent", ["asker", "async-asker"])
async def test_a_question_waits_for_a_person_and_the_answer_comes_back(
        tmp_path: Path, agent: str) -> None:
    async with in_process(tmp_path, fleet()) as d:
        made = asks_made(d)
        tasks = d.sup.tasks
        running = asyncio.ensure_future(tasks.run(
            agent, {"prompt": "Which file?", "schema": SCHEMA}, TaskOptions(timeout=60)))
        ask = await asyncio.wait_for(made.get(), 30)
        assert (ask.kind, ask.agent, ask.key, ask.subject) == (
            AskKind.QUESTION, agent, "ask:1", {"prompt": "Which file?", "schema": SCHEMA})
        assert [a.id for a in tasks.inbox.waiting_for(ask.task_id)] == [ask.id]
        await decide(tasks.inbox, Decision(ask.id, AskEnd.ANSWERED, "token ann",
                                           {"path": "/srv/a"}))
        res = await running
        assert (res.task_id, res.status) == (ask.task_id, "succeeded"), res
        assert res.output["answer"] == {"path": "/srv/a"}
        assert tasks.questions.asked == 1


async def test_an_answer_is_a_step_a_retry_is_given_it_and_no_one_is_asked_twice(
        tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    async with in_process(tmp_path, fleet()) as d:
        made = asks_made(d)
        tasks = d.sup.tasks
        running = asyncio.ensure_future(tasks.run(
            "asker", {"prompt": "Go?", "twice": True, "die_after_answer": True,
                      "marks": str(marks)}, TaskOptions(timeout=60)))
        first = await answered(d, made, "yes")
        second = await answered(d, made, "then stop")
        assert (first.key, second.key) == ("ask:1", "ask:2")
        res = await running
        assert res.status == "succeeded", res
        assert [a.outcome for a in res.attempts] == ["lost", "succeeded"]
        # the retry asked both again and was answered from the journal, no ask made
        assert res.output == {"answer": "yes", "second": "then stop", "attempt": 2}
        assert marks.read_text() == "1\n2\n"
        assert made.empty()
        assert (tasks.questions.asked, tasks.questions.replayed) == (2, 2)


async def test_a_declined_or_unanswered_question_is_the_agents_error(tmp_path: Path) -> None:
    async with in_process(tmp_path, fleet()) as d:
        made = asks_made(d)
        tasks = d.sup.tasks
        running = asyncio.ensure_future(tasks.run("asker", {"prompt": "Delete it?"},
                                                  TaskOptions(timeout=60)))
        ask = await asyncio.wait_for(made.get(), 30)
        await decide(tasks.inbox, Decision(ask.id, AskEnd.DENIED, "token ann",
                                           {"reason": "not today"}))
        res = await running
        assert res.output == {"refused": f"task/ask: question {ask.id} was declined by "
                                         "token ann: not today", "code": jsonrpc.REFUSED}
        running = asyncio.ensure_future(tasks.run("asker", {"prompt": "Quick?", "timeout": 0.3},
                                                  TaskOptions(timeout=60)))
        ask = await asyncio.wait_for(made.get(), 30)
        res = await running
        assert res.output == {"refused": f"task/ask: question {ask.id} had no answer "
                                         "within 0.3s", "code": jsonrpc.REQUEST_TIMEOUT}
        assert tasks.inbox.get(ask.id).end is AskEnd.TIMED_OUT


async def test_a_bad_schema_or_a_prompt_past_its_bound_is_refused_to_the_agent(
        tmp_path: Path) -> None:
    async with in_process(tmp_path, fleet()) as d:
        made = asks_made(d)
        tasks = d.sup.tasks
        res = await tasks.run("asker", {"prompt": "Which?", "schema": {"type": "nope"}},
                              TaskOptions(timeout=60))
        assert res.output["code"] == jsonrpc.INVALID_PARAMS
        assert res.output["refused"].startswith(
            "task/ask: the schema is not a JSON Schema: 'nope' is not valid under any of "
            "the given schemas"), res.output
        long = "x" * (MAX_PROMPT_CHARS + 1)
        res = await tasks.run("asker", {"prompt": long}, TaskOptions(timeout=60))
        assert res.output == {
            "refused": f"task/ask: the prompt is {MAX_PROMPT_CHARS + 1} characters, more "
                       f"than MAX_PROMPT_CHARS ({MAX_PROMPT_CHARS})",
            "code": jsonrpc.INVALID_PARAMS}
        res = await tasks.run("asker", {"prompt": "Which?", "key": "k" * (MAX_KEY_CHARS + 1)},
                              TaskOptions(timeout=60))
        assert res.output == {
            "refused": f"task/ask: key must be a non-empty string of at most MAX_KEY_CHARS "
                       f"({MAX_KEY_CHARS}) characters", "code": jsonrpc.INVALID_PARAMS}
        res = await tasks.run("asker", {"prompt": ""}, TaskOptions(timeout=60))
        assert res.output == {"refused": "task/ask: prompt must be a non-empty string",
                              "code": jsonrpc.INVALID_PARAMS}
        assert made.empty()  # nothing was asked of anyone


@pytest.mark.parametrize(("bound", "refused"), [
    ("max_pending_asks_per_tenant", "the operator's tasks hold 1 pending asks, its bound "
                                    "(max_pending_asks_per_tenant 1)"),
    ("max_pending_asks", "the inbox holds 1 pending asks, its bound (max_pending_asks 1)")])
async def test_the_inboxs_bounds_are_the_configs(tmp_path: Path, bound: str, refused: str
                                                 ) -> None:
    """[supervisor] max_pending_asks_per_tenant 1, or the daemon's max_pending_asks 1: a
    second task's question is refused to its agent by the bound's name while the first
    waits; the first answered, the next one is asked."""
    async with in_process(tmp_path, fleet(), supervisor=f"{bound} = 1") as d:
        made = asks_made(d)
        tasks = d.sup.tasks
        first = asyncio.ensure_future(tasks.run("asker", {"prompt": "One?"},
                                                TaskOptions(timeout=60)))
        ask = await asyncio.wait_for(made.get(), 30)
        second = await tasks.run("asker", {"prompt": "Two?"}, TaskOptions(timeout=60))
        assert second.output == {"refused": refused, "code": jsonrpc.QUOTA_EXCEEDED}
        await decide(tasks.inbox, Decision(ask.id, AskEnd.ANSWERED, "token ann", "yes"))
        assert (await first).output["answer"] == "yes"
        third = asyncio.ensure_future(tasks.run("asker", {"prompt": "Three?"},
                                                TaskOptions(timeout=60)))
        await answered(d, made, "ok")
        assert (await third).output["answer"] == "ok"


async def test_a_worker_whose_tasks_wait_for_more_asks_than_its_requests_in_flight_is_read(
        tmp_path: Path) -> None:
    """A worker's requests worked on at once are bounded (MAX_IN_FLIGHT: past it its line
    is not read), but one that waits for a person is not counted: a worker of more
    asking tasks than the bound has every question asked, and every answer delivered."""
    from corral.supervisor.launch import MAX_IN_FLIGHT

    n = MAX_IN_FLIGHT + 20
    agents = textwrap.dedent(f"""
        [agents.many]
        command = ["{PY}", "{HERE}/asking_agent.py", "--async"]
        env = {{ PYTHONPATH = "{ROOT}" }}
        max_concurrent_tasks = {n}
        max_queue = {n}
    """)
    async with in_process(tmp_path, agents) as d:
        made = asks_made(d)
        tasks = d.sup.tasks
        running = [asyncio.ensure_future(tasks.run("many", {"prompt": f"#{i}?"},
                                                    TaskOptions(timeout=120)))
                   for i in range(n)]
        asks = [await asyncio.wait_for(made.get(), 30) for _ in range(n)]
        assert len(tasks.inbox.pending()) == n
        for ask in asks:
            await decide(tasks.inbox, Decision(ask.id, AskEnd.ANSWERED, "token ann",
                                               ask.subject["prompt"]))
        done = await asyncio.wait_for(asyncio.gather(*running), 60)
        assert [(r.status, r.output["answer"]) for r in done] == [
            ("succeeded", f"#{i}?") for i in range(n)]


async def test_held_calls_past_a_workers_requests_in_flight_are_all_asked(
        tmp_path: Path) -> None:
    """The same for tool calls held for approval (a sync handler: a thread a task)."""
    from corral.supervisor.launch import MAX_IN_FLIGHT

    n = MAX_IN_FLIGHT + 20
    agents = textwrap.dedent(f"""
        [agents.many]
        command = ["{PY}", "{HERE}/asking_agent.py"]
        env = {{ PYTHONPATH = "{ROOT}" }}
        tools = ["counting__*"]
        approve = ["counting__bump"]
        max_concurrent_tasks = {n}
        max_queue = {n}

        [mcp_servers.counting]
        command = ["{PY}", "{HERE}/servers/counting_mcp.py", "{tmp_path}/count"]
    """)
    async with in_process(tmp_path, agents) as d:
        made = asks_made(d)
        tasks = d.sup.tasks
        running = [asyncio.ensure_future(tasks.run("many", {"calls": 1},
                                                    TaskOptions(timeout=120)))
                   for _ in range(n)]
        asks = [await asyncio.wait_for(made.get(), 30) for _ in range(n)]
        for ask in asks:
            await decide(tasks.inbox, Decision(ask.id, AskEnd.APPROVED, "token ann", None))
        done = await asyncio.wait_for(asyncio.gather(*running), 60)
        assert [(r.status, r.output["bumped"]) for r in done] == [
            ("succeeded", ["bumped 0"])] * n
        assert len((tmp_path / "count").read_text().split()) == n


async def test_a_question_that_may_be_suspended_waits_with_no_task_of_its_own(
        tmp_path: Path) -> None:
    """Thousands of questions may wait at once (issue 55: 10,000 tasks, 1,000 an agent at
    once): one held for its task's suspend_after waits on its worker's request alone,
    not a task of its own around it (what its suspension answers it, REQUEST_CANCELLED,
    is tests/test_suspension.py's); answered, it runs on."""
    n = 20
    agents = textwrap.dedent(f"""
        [agents.held]
        command = ["{PY}", "{HERE}/asking_agent.py", "--async"]
        env = {{ PYTHONPATH = "{ROOT}" }}
        suspend_after = 300
        max_concurrent_tasks = {n}
    """)
    async with in_process(tmp_path, agents) as d:
        made = asks_made(d)
        tasks = d.sup.tasks
        before = len(asyncio.all_tasks())
        running = [asyncio.ensure_future(tasks.run("held", {"prompt": f"#{i}?"},
                                                    TaskOptions(timeout=120)))
                   for i in range(n)]
        asks = [await asyncio.wait_for(made.get(), 30) for _ in range(n)]
        for ask in asks:
            while (await tasks.info(ask.task_id)).status != "waiting":
                await asyncio.sleep(0.01)
        await asyncio.sleep(0)
        # each: the test's tasks.run and its worker's task/ask request, nothing more
        assert len(asyncio.all_tasks()) - before == 2 * n
        for ask in asks:
            await decide(tasks.inbox, Decision(ask.id, AskEnd.ANSWERED, "token ann",
                                               ask.subject["prompt"]))
        done = await asyncio.wait_for(asyncio.gather(*running), 60)
        assert sorted((r.status, r.output["answer"]) for r in done) == sorted(
            ("succeeded", f"#{i}?") for i in range(n))
