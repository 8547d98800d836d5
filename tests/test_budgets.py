"""Token and cost budgets (supervisor/tasks/budget.py): `ctx.report_usage` from real
workers (examples/misbehave.py), the windows, the gate in dispatch and its timer, bad
reports, and usage shown by `corral stats`, `corral task`, the API, /metrics and after a
restart of the daemon."""

from __future__ import annotations

import asyncio
import gc
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest

from corral import jsonrpc
from corral.daemon.caller import Caller
from corral.jsonrpc import RpcError
from corral.supervisor import LogBatch, State, Supervisor
from corral.supervisor.config import ConfigError
from corral.supervisor.configload import load_config
from corral.supervisor.tasks import Budget, Budgets, ModelUsage, Task, TaskStatus, Usage
from corral.supervisor.tasks.budget import DAY, MINUTE, BadUsage, SumWindow, parse_report
from corral.text import iso_time, ordinal
from corral.workerproto import BadParams, UsageReportParams, params_of

from .conftest import EXAMPLES, ROOT, agent
from .daemon_harness import PY, in_process, running_daemon, shared_tmpdir
from .test_ui import chromium_page, needs_chromium

SOCKET = Caller(via="socket")


def mb(name: str, **kw: Any) -> Any:
    return agent(name, "misbehave.py", **kw)


def spend(tokens: int = 10_000, cost: float = 0.0, model: str = "m1") -> dict[str, Any]:
    """A task whose worker reports `tokens` (four fifths input) and `cost` dollars."""
    return {"do": "usage", "reports": [{"input_tokens": tokens * 4 // 5,
                                        "output_tokens": tokens // 5, "cost_usd": cost,
                                        "model": model}]}


async def done(*tasks: Task, timeout: float = 30.0) -> None:
    await asyncio.wait_for(asyncio.gather(*(asyncio.shield(t.done) for t in tasks)),
                           timeout)


# -- the windows, as pure code --------------------------------------------------------------
def test_a_window_slides_in_buckets_and_says_when_it_falls_below_a_limit() -> None:
    w = SumWindow(MINUTE, 1.0)
    w.add(10_000, 1000.2)
    w.add(10_000, 1000.9)  # the same bucket
    w.add(10_000, 1002.5)
    assert w.used(1000.5) == 30_000
    # the first bucket [1000, 1001) leaves at 1061, the second [1002, 1003) at 1063
    assert w.below_at(25_000, 1030.0) == 1061.0
    assert w.below_at(5_000, 1030.0) == 1063.0
    assert w.below_at(40_000, 1030.0) == 1030.0  # below already
    assert w.used(1060.99) == 30_000
    assert w.used(1061.0) == 10_000
    assert w.used(1063.0) == 0.0 and not w.buckets
    # usage restored after a restart comes in out of order: in its place
    w.add(5, 2000.0)
    w.add(7, 1990.5)
    assert [b[0] for b in w.buckets] == [1990.0, 2000.0] and w.used(2000.0) == 12


def test_a_budget_holds_by_the_limit_that_holds_longest_and_0_is_none() -> None:
    b = Budget()
    b.add(30_000, 0.06, 3600.0)
    assert b.held(0, 0, 0, 3600.0) is None
    assert b.held(40_000, 40_000, 0.1, 3600.0) is None
    held = b.held(25_000, 0, 0, 3600.0)
    assert held is not None and (held.budget, held.limit, held.used, held.until) == (
        "tokens_per_minute", 25_000, 30_000, 3661.0)
    assert held.text() == f"budget: tokens_per_minute 25000 used 30000, next at " \
                          f"{iso_time(3661.0)}"
    # over both: the day's, which opens later, is the one that holds
    held = b.held(25_000, 30_000, 0, 3600.0)
    assert held is not None and (held.budget, held.until) == ("tokens_per_day",
                                                              3600.0 + MINUTE + DAY)
    held = b.held(0, 0, 0.05, 3600.0)
    assert held is not None and (held.budget, held.used) == ("max_cost_usd_per_day", 0.06)
    assert held.text().startswith("budget: max_cost_usd_per_day 0.05 used 0.06, next at ")


@pytest.mark.parametrize(("params", "said"), [
    ({}, "task_id must be a task's id"),
    ({"task_id": 7}, "task_id must be a string"),
    ({"task_id": "t", "input_tokens": -1}, "input_tokens must not be negative (-1)"),
    ({"task_id": "t", "output_tokens": "many"},
     "output_tokens must be a number"),
    ({"task_id": "t", "input_tokens": True}, "input_tokens must be a number"),
    ({"task_id": "t", "input_tokens": 1.5}, "input_tokens must be a whole number, not 1.5"),
    ({"task_id": "t", "cost_usd": -0.5}, "cost_usd must not be negative (-0.5)"),
    ({"task_id": "t", "cost_usd": "free"}, "cost_usd must be a number"),
    ({"task_id": "t", "cost_usd": math.inf}, "cost_usd must be at most 1e+12 (inf)"),
    ({"task_id": "t", "cost_usd": math.nan}, "cost_usd must be a number, not nan"),
    ({"task_id": "t", "cost_usd": 10**400}, "cost_usd must be at most 1e+12 (1000000000"
                                            "000000000000000000000000000000)"),
    ({"task_id": "t", "input_tokens": 10**16},
     "input_tokens must be at most 1e+15 (10000000000000000)"),
    ({"task_id": "t", "model": 7}, "model must be a string"),
    ({"task_id": "t", "model": "m" * 201},
     "model must be a name of at most 200 characters, not '" + "m" * 39),
])
def test_a_bad_report_says_what_is_wrong(params: dict[str, Any], said: str) -> None:
    """Of the wrong shape, refused where it is decoded (workerproto.py); out of range,
    where it is counted: both the same way to the worker's log."""
    with pytest.raises((BadParams, BadUsage)) as err:
        parse_report(params_of("usage/report", UsageReportParams, params))
    detail = err.value.detail if isinstance(err.value, BadParams) else str(err.value)
    assert detail == said


def test_a_report_with_nothing_but_its_task_counts_as_zero_of_an_unknown_model() -> None:
    def parse(params: dict[str, Any]) -> tuple[str, int, int, float, str]:
        return parse_report(params_of("usage/report", UsageReportParams, params))

    assert parse({"task_id": "t"}) == ("t", 0, 0, 0.0, "unknown")
    assert parse({"task_id": "t", "input_tokens": 3.0, "cost_usd": 1,
                  "model": "m"}) == ("t", 3, 0, 1.0, "m")


def test_a_worker_naming_a_new_model_in_each_report_grows_no_totals_past_the_bound() -> None:
    """Attacker's pass: a task's and its agent's usage keep MODELS_MAX models by name;
    every further model's reports are counted together under OTHER_MODELS, and every
    token is in the total."""
    from corral.taskviews import MODELS_MAX, OTHER_MODELS

    task = Task("a", msgspec.Raw(b"{}"), 0, 60.0, 0, 0)
    budgets = Budgets(lambda _: task, lambda _: None)
    for i in range(10_000):
        budgets.count(task, 1, 2, 0.5, f"model-{i}", time.time())
    for used in (task.usage, budgets.usage["a"]):
        assert used is not None
        assert len(used.models) == MODELS_MAX + 1
        assert used.models["model-0"] == Usage(1, 2, 0.5, 1)
        assert used.models[OTHER_MODELS] == Usage(
            10_000 - MODELS_MAX, 2 * (10_000 - MODELS_MAX), 0.5 * (10_000 - MODELS_MAX),
            10_000 - MODELS_MAX)
        assert (used.input_tokens, used.output_tokens, used.reports) == (10_000, 20_000,
                                                                         10_000)
    budgets.count(task, 5, 0, 0.0, "model-3", time.time())  # a model it kept: its own
    assert task.usage is not None and task.usage.models["model-3"].input_tokens == 6


def test_an_agents_usage_of_one_second_is_counted_as_each_call_alone() -> None:
    """An agent's calls of one second and model are added to its totals and windows
    together (budget.py `_Tally`): its totals, models, reports and windows' buckets are
    those of each call added alone, and every reader (the gate, a reservation, stats,
    the totals, forget) sees what was counted last, added or not yet."""
    from types import SimpleNamespace

    from corral.supervisor.tasks.budget import Reservation

    budgets = Budgets(lambda _: None, lambda _: None)
    agent = SimpleNamespace(name="a", spec=SimpleNamespace(
        tokens_per_minute=100, tokens_per_day=0, max_cost_usd_per_day=0.0))
    t = math.floor(time.time()) + 0.25  # (a second's first quarter: three in one)
    budgets.count_agent("a", 30, 10, 0.125, "m1", t)
    budgets.count_agent("a", 20, 0, 0.25, "m1", t + 0.5)
    # what the calls of the second still open hold is read by every reader
    assert budgets.over(agent) is None
    budgets.count_agent("a", 20, 0, 0.5, "m1", t + 0.6)  # 80 in the minute
    first = Reservation(20, 0.0)
    assert budgets.reserve(agent, first) is None  # (80 and none held: room)
    held = budgets.reserve(agent, Reservation(1, 0.0))
    assert held is not None and (held.budget, held.used, held.reserved) == (
        "tokens_per_minute", 80, 20)
    first.release()
    budgets.count_agent("a", 5, 15, 0.0, "m2", t + 0.7)  # another model, the same second
    over = budgets.over(agent)
    assert over is not None and (over.budget, over.used) == ("tokens_per_minute", 100)
    budgets.count_agent("a", 1, 1, 1.0, "m1", t + 1.0)  # the next second
    stats = budgets.stats("a")
    assert stats is not None and (stats["tokens_last_minute"], stats["tokens_last_day"],
                                  stats["cost_usd_last_day"]) == (102, 102, 1.875)
    assert budgets.usage["a"] == ModelUsage(76, 26, 1.875, 5, {
        "m1": Usage(71, 11, 1.875, 4), "m2": Usage(5, 15, 0.0, 1)})
    # the windows' buckets: each second's once, as each call added alone leaves them
    window = budgets.windows["a"]
    assert [tuple(b) for b in window.minute_tokens.buckets] == [
        (t - 0.25, 100.0), (t + 0.75, 2.0)]
    assert sum(b[1] for b in window.day_cost.buckets) == 1.875
    budgets.count_agent("a", 7, 0, 0.0, "m1", t + 1.5)
    budgets.forget("a")  # (what was counted and not yet added goes with the rest)
    assert budgets.stats("a") is None and "a" not in budgets.usage
    budgets.count_agent("a", 3, 0, 0.0, "m1", t + 1.6)
    assert budgets.usage["a"] == ModelUsage(3, 0, 0.0, 1, {"m1": Usage(3, 0, 0.0, 1)})


def test_the_budget_keys_are_validated(tmp_path: Path) -> None:
    path = tmp_path / "corral.toml"
    for line, said in (("tokens_per_minute = -5", "Expected `int` >= 0"),
                       ("tokens_per_day = 1.5", "Expected `int`, got `float`"),
                       ("max_cost_usd_per_day = -1.0", "Expected `float` >= 0.0"),
                       ("max_cost_usd_per_day = \"ten\"", "Expected `float`, got `str`")):
        path.write_text(f'[agents.a]\ncommand = ["true"]\n{line}\n')
        key = line.split(" ")[0]
        with pytest.raises(ConfigError) as err:
            load_config(path)
        assert str(err.value) == f"{path}: agents.a.{key}: {said}", line
    path.write_text('[agents.a]\ncommand = ["true"]\ntokens_per_minute = 25000\n'
                    'tokens_per_day = 1000000\nmax_cost_usd_per_day = 2.5\n')
    spec = load_config(path).agents["a"]
    assert (spec.tokens_per_minute, spec.tokens_per_day, spec.max_cost_usd_per_day) == (
        25_000, 1_000_000, 2.5)


# -- the gate, on a real supervisor ---------------------------------------------------------
async def test_10000_tokens_a_task_at_25000_a_minute_runs_3_and_the_rest_wait(
        sup: Supervisor) -> None:
    """The issue's test: the first minute runs what fits (a task starts while the window
    is under the limit: 0, 10,000, 20,000), the rest wait queued, with the reason and the
    moment the window has room again; one timer is armed for it."""
    logs: list[str] = []
    sup.stream.subscribe(lambda e: logs.extend(x.decode() for x in e.lines), LogBatch)
    sup.add(mb("tpm", tokens_per_minute=25_000))
    await sup.wait_state("tpm", State.READY)
    before = time.time()
    tasks = [sup.tasks.submit("tpm", spend()) for _ in range(6)]
    await done(*tasks[:3])
    after = time.time()
    assert [t.status for t in tasks] == [TaskStatus.SUCCEEDED] * 3 + [TaskStatus.QUEUED] * 3
    budgets = sup.tasks.budgets
    held = budgets.holding["tpm"]
    # the window has room once the bucket of the first report has left it
    assert math.floor(before) + 61 <= held.until <= math.floor(after) + 61
    waiting = f"budget: tokens_per_minute 25000 used 30000, next at {iso_time(held.until)}"
    for place, t in enumerate(tasks[3:], 1):
        assert (await sup.tasks.info(t.id)).waiting == (
            f"{ordinal(place)} of 3 waiting for tpm: {waiting}")
    assert (await sup.tasks.info(tasks[0].id)).waiting is None
    assert [when for when, _ in budgets._timers.values()] == [held.until]
    # usage per task, per agent and per model
    one = ModelUsage(8000, 2000, 0.0, 1, {"m1": Usage(8000, 2000, 0.0, 1)})
    assert [t.usage for t in tasks] == [one] * 3 + [None] * 3
    assert budgets.usage["tpm"] == ModelUsage(24_000, 6000, 0.0, 3,
                                              {"m1": Usage(24_000, 6000, 0.0, 3)})
    # a finished task's usage is nothing the cyclic collector walks
    used = tasks[0].usage
    assert used is not None and not gc.is_tracked(used) and not gc.is_tracked(used.models)
    # nothing else starts while held: a pump finds the gate shut
    sup.tasks.pump("tpm")
    assert [t.status for t in tasks[3:]] == [TaskStatus.QUEUED] * 3
    # the agent's log says so once, however often the gate is looked at
    assert [x for x in logs if "budget:" in x] == [f"{waiting}: its tasks wait until then"]


async def test_the_gate_reopens_by_its_timer_at_the_windows_edge(sup: Supervisor) -> None:
    """Usage of 59.5 s ago (restored, as after a restart) holds new tasks until its
    bucket leaves the minute; then the timer starts them, none lost."""
    logs: list[str] = []
    sup.stream.subscribe(lambda e: logs.extend(x.decode() for x in e.lines), LogBatch)
    sup.add(mb("edge", tokens_per_minute=25_000))
    await sup.wait_state("edge", State.READY)
    budgets = sup.tasks.budgets
    budgets.restore("edge", 30_000, 0.0, time.time() - 59.5)
    tasks = [sup.tasks.submit("edge", spend()) for _ in range(3)]
    assert [t.status for t in tasks] == [TaskStatus.QUEUED] * 3
    until = budgets.holding["edge"].until
    assert 0 < until - time.time() <= 1.5
    assert (await sup.tasks.info(tasks[0].id)).waiting == (
        f"1st of 3 waiting for edge: budget: tokens_per_minute 25000 used 30000, next at "
        f"{iso_time(until)}")
    # a timer that fires before the edge (as the loop's clock may) finds the gate shut:
    # the hold goes on, told once, with its timer armed again
    budgets._reopen("edge")
    assert [t.status for t in tasks] == [TaskStatus.QUEUED] * 3
    assert budgets.holding["edge"].until == until
    assert [when for when, _ in budgets._timers.values()] == [until]
    assert len([x for x in logs if "budget:" in x]) == 1
    await done(*tasks)
    assert [t.status for t in tasks] == [TaskStatus.SUCCEEDED] * 3
    assert min(t.started or 0 for t in tasks) >= until
    # 30,000 reported again: the next task is held once more, for a minute
    assert sup.tasks.submit("edge", spend()).status == TaskStatus.QUEUED
    assert budgets.holding["edge"].used == 30_000


async def test_day_and_cost_budgets_hold_and_a_full_queue_still_refuses(
        sup: Supervisor) -> None:
    sup.add(mb("tpd", tokens_per_day=15_000, max_queue=1))
    sup.add(mb("usd", max_cost_usd_per_day=0.05))
    await sup.wait_state("tpd", State.READY)
    await sup.wait_state("usd", State.READY)
    before = time.time()
    day = [sup.tasks.submit("tpd", spend()) for _ in range(2)]
    cost = [sup.tasks.submit("usd", spend(100, cost=0.03, model="m2")) for _ in range(3)]
    await done(*day, *cost[:2])
    after = time.time()
    third = sup.tasks.submit("tpd", spend())
    assert third.status == TaskStatus.QUEUED
    held = sup.tasks.budgets.holding["tpd"]
    # the day window's buckets are minutes: room again a day after the first one's end
    assert (math.floor(before / 60) * 60 + 60 + DAY <= held.until
            <= math.floor(after / 60) * 60 + 60 + DAY)
    assert (await sup.tasks.info(third.id)).waiting == (
        f"1st of 1 waiting for tpd: budget: tokens_per_day 15000 used 20000, next at "
        f"{iso_time(held.until)}")
    assert cost[2].status == TaskStatus.QUEUED
    waiting = (await sup.tasks.info(cost[2].id)).waiting
    assert waiting is not None and waiting.startswith(
        "1st of 1 waiting for usd: budget: max_cost_usd_per_day 0.05 used 0.06, next at ")
    # a held agent with a free replica still has a bounded queue
    with pytest.raises(RpcError) as err:
        sup.tasks.submit("tpd", spend())
    assert (err.value.code, err.value.message) == (
        jsonrpc.REFUSED, "queue full: agent tpd has 1 task waiting (max_queue 1)")
    # cancelling a held task is as for any queued task; with none left waiting, no
    # reason is shown (the gate stays shut until its timer)
    assert sup.tasks.cancel(third.id).status == TaskStatus.CANCELLED
    assert "tpd" in sup.tasks.budgets.holding
    assert sup.tasks.budgets.waiting("tpd") is None
    shown = sup.tasks.budgets.stats("tpd")
    assert shown is not None and shown["waiting"] is None
    usd = sup.tasks.budgets.usage["usd"]
    assert (usd.input_tokens, usd.output_tokens, round(usd.cost_usd, 6), usd.reports,
            list(usd.models)) == (160, 40, 0.06, 2, ["m2"])


async def test_running_tasks_are_never_stopped_by_a_budget(sup: Supervisor) -> None:
    """A task that reports past the limit while running runs to its end, as do the others
    running beside it; only starts wait."""
    sup.add(mb("busy", tokens_per_minute=1000, max_concurrent_tasks=3))
    await sup.wait_state("busy", State.READY)
    many = {"do": "usage", "reports": [{"input_tokens": 5000}] * 4}
    tasks = [sup.tasks.submit("busy", many) for _ in range(3)]
    late = sup.tasks.submit("busy", spend())
    await done(*tasks)
    assert [t.status for t in tasks] == [TaskStatus.SUCCEEDED] * 3
    assert [t.usage.input_tokens if t.usage else None for t in tasks] == [20_000] * 3
    assert late.status == TaskStatus.QUEUED


async def test_bad_reports_are_counted_and_logged_and_change_nothing(
        sup: Supervisor) -> None:
    logs: list[str] = []
    sup.stream.subscribe(lambda e: logs.extend(x.decode() for x in e.lines), LogBatch)
    sup.add(mb("bad", tokens_per_minute=100))
    sup.add(mb("other"))
    r = await sup.wait_state("bad", State.READY)
    await sup.wait_state("other", State.READY)
    pid = r.pid
    mine = (await sup.tasks.run("bad", {"do": "echo"})).task_id
    theirs = (await sup.tasks.run("other", {"do": "echo"})).task_id
    cases: list[tuple[Any, str]] = [
        ({"task_id": mine, "input_tokens": -1}, "input_tokens must not be negative (-1)"),
        ({"task_id": mine, "output_tokens": "many"}, "output_tokens must be a number"),
        ({"task_id": mine, "cost_usd": -0.5}, "cost_usd must not be negative (-0.5)"),
        ({"input_tokens": 5}, "task_id must be a task's id"),
        ({"task_id": "nope", "input_tokens": 5}, "task 'nope' is not a task of agent bad"),
        ({"task_id": theirs, "input_tokens": 5},
         f"task '{theirs}' is not a task of agent bad"),
    ]
    for params, _ in cases:
        res = await sup.tasks.run("bad", {"do": "raw", "method": "usage/report",
                                          "params": params, "notify": True})
        assert res.status == "succeeded"
    await sup.tasks.run("bad", {"do": "raw", "method": "usage/report", "params": [1],
                                "notify": True})
    for _, said in cases:
        assert f"ignored usage/report: {said}" in logs, said
    assert "ignored usage/report: params must be an object" in logs
    budgets = sup.tasks.budgets
    assert budgets.bad_reports == len(cases)
    assert "bad" not in budgets.usage and "other" not in budgets.usage
    # a good report of a task that already ended still counts, for it and its agent
    await sup.tasks.run("bad", {"do": "raw", "method": "usage/report", "notify": True,
                                "params": {"task_id": mine, "output_tokens": 150}})
    assert sup.tasks.get(mine).usage == ModelUsage(0, 150, 0.0, 1,
                                                   {"unknown": Usage(0, 150, 0.0, 1)})
    assert budgets.usage["bad"].output_tokens == 150
    assert r.pid == pid and r.state in (State.READY, State.IDLE)
    # the agent is over its 100 tokens: the next task waits
    assert sup.tasks.submit("bad", {"do": "echo"}).status == TaskStatus.QUEUED


# -- shown, and kept across a restart: the real daemon ---------------------------------------
def usage_agent(name: str, budget: str) -> str:
    return (f'[agents.{name}]\ncommand = ["{PY}", "{EXAMPLES}/misbehave.py"]\n'
            f'env = {{ PYTHONPATH = "{ROOT}" }}\nbackoff_initial = 0.05\n{budget}\n')


async def cli(tmp_path: Path, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        PY, "-m", "corral", "--socket", str(tmp_path / "corral.sock"), *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode(), err.decode()


@pytest.mark.deadline(120)
async def test_usage_in_stats_task_json_the_api_and_metrics(tmp_path: Path) -> None:
    http = '\n[http]\nlisten = "127.0.0.1:0"\nmetrics_public = true\n'
    async with in_process(tmp_path, usage_agent("spender", "tokens_per_minute = 25000")
                          + usage_agent("idle", ""), http) as d:
        sup = d.sup
        a = sup.tasks.submit("spender", spend(10_000, cost=0.02, model="m1"))
        b = sup.tasks.submit("spender", spend(20_000, cost=0.05, model="m2"))
        c = sup.tasks.submit("spender", spend())
        await done(a, b)
        assert c.status == TaskStatus.QUEUED
        until = sup.tasks.budgets.holding["spender"].until
        waiting = f"budget: tokens_per_minute 25000 used 30000, next at {iso_time(until)}"

        # the methods' answers (what the CLI and HTTP show)
        st = msgspec.to_builtins(await d.dispatcher.call(SOCKET, "stats.get", {}))
        assert st["agents"]["idle"]["usage"] is None
        u = st["agents"]["spender"]["usage"]
        assert (u["input_tokens"], u["output_tokens"], round(u["cost_usd"], 6),
                u["reports"], u["tokens_last_minute"], u["waiting"]) == (
            24_000, 6000, 0.07, 2, 30_000, waiting)
        assert u["models"]["m2"] == {"input_tokens": 16_000, "output_tokens": 4000,
                                     "cost_usd": 0.05, "reports": 1}
        assert st["supervisor"]["usage_reports_ignored"] == 0

        # corral task ID --json: the usage a task reported, and why a waiting one waits
        rc, out, err = await cli(tmp_path, "task", a.id, "--json")
        assert rc == 0, err
        shown = json.loads(out)
        assert (shown["usage"], shown["waiting"]) == (
            {"input_tokens": 8000, "output_tokens": 2000, "cost_usd": 0.02, "reports": 1,
             "models": {"m1": {"input_tokens": 8000, "output_tokens": 2000,
                               "cost_usd": 0.02, "reports": 1}}}, None)
        rc, out, err = await cli(tmp_path, "task", c.id)
        assert rc == 0 and f"waiting: 1st of 1 waiting for spender: {waiting}\n" in out, (
            out, err)
        rc, out, err = await cli(tmp_path, "task", b.id)
        assert "usage: 20,000 tokens (16,000 in, 4,000 out), $0.0500, models m2\n" in out

        # corral stats: per agent and model, and the windows
        rc, out, err = await cli(tmp_path, "stats")
        assert rc == 0, err
        lines = [" ".join(x.split()) for x in out.splitlines()]
        assert "AGENT MODEL INPUT TOKENS OUTPUT TOKENS COST USD REPORTS" in lines
        assert "spender m1 8,000 2,000 0.0200 1" in lines
        assert "spender m2 16,000 4,000 0.0500 1" in lines
        assert f"spender 30,000 30,000 0.0700 {waiting}" in lines
        assert not any(x.startswith("idle m") for x in lines)

        async with aiohttp.ClientSession() as session:
            # HTTP: /api/v1/tasks/ID (it needs a token) and /metrics (public here)
            made = await d.dispatcher.call(SOCKET, "tokens.create", {
                "name": "reader", "scopes": ["tasks:read", "metrics:read"]})
            headers = {"Authorization": f"Bearer {made.token}"}
            base = d.http_server.url
            async with session.get(f"{base}/api/v1/tasks/{c.id}", headers=headers) as r:
                body = msgspec.json.decode(await r.read())
            assert (r.status, body["status"], body["waiting"]) == (
                200, "queued", f"1st of 1 waiting for spender: {waiting}")
            async with session.get(f"{base}/api/v1/stats", headers=headers) as r:
                body = msgspec.json.decode(await r.read())
            assert body["agents"]["spender"]["usage"]["tokens_last_minute"] == 30_000
            async with session.get(f"{base}/metrics") as r:
                text = await r.text()
        series = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
                  for line in text.splitlines() if line.startswith("corral_agent_")
                  and ("tokens" in line or "cost" in line) and not line.startswith("#")}
        assert series == {
            'corral_agent_tokens_total{agent="spender",kind="input",model="m1"}': 8000,
            'corral_agent_tokens_total{agent="spender",kind="output",model="m1"}': 2000,
            'corral_agent_tokens_total{agent="spender",kind="input",model="m2"}': 16_000,
            'corral_agent_tokens_total{agent="spender",kind="output",model="m2"}': 4000,
            'corral_agent_cost_usd_total{agent="spender",model="m1"}': 0.02,
            'corral_agent_cost_usd_total{agent="spender",model="m2"}': 0.05}
        sup.tasks.cancel(c.id)


@pytest.mark.deadline(150)
async def test_a_restarted_daemon_keeps_the_days_usage_from_the_journal(
        tmp_path: Path) -> None:
    agents = usage_agent("daily", "tokens_per_day = 15000")
    async with in_process(tmp_path, agents) as d:
        sup = d.sup
        tasks = [sup.tasks.submit("daily", spend()) for _ in range(2)]
        await done(*tasks)
        await sup.tasks.committed()
        first = tasks[0].id
    async with in_process(tmp_path, agents) as d:
        sup = d.sup
        budgets = sup.tasks.budgets
        window = budgets.windows["daily"]
        # the tasks ended within the minute: in both windows
        assert window.day_tokens.used(time.time()) == 20_000
        assert window.minute_tokens.used(time.time()) == 20_000
        assert "daily" not in budgets.usage  # totals count since this daemon started
        shown = budgets.stats("daily")
        assert shown is not None and (shown["input_tokens"], shown["reports"],
                                      shown["models"], shown["tokens_last_day"]) == (
            0, 0, {}, 20_000)
        waiting = sup.tasks.submit("daily", spend())
        assert waiting.status == TaskStatus.QUEUED
        said = (await sup.tasks.info(waiting.id)).waiting
        assert said is not None and said.startswith(
            "1st of 1 waiting for daily: budget: tokens_per_day 15000 used 20000, next at ")
        # a task of the last daemon: its usage from the journal
        info = await d.dispatcher.call(SOCKET, "tasks.get", {"task_id": first})
        assert info.usage is not None and (info.usage.input_tokens,
                                           info.usage.output_tokens) == (8000, 2000)
        sup.tasks.cancel(waiting.id)


@needs_chromium
@pytest.mark.timeout(180)
def test_the_dashboards_agent_page_shows_its_usage_and_why_tasks_wait() -> None:
    from playwright.sync_api import expect

    agents = usage_agent("spender", "tokens_per_minute = 25000")
    with running_daemon(shared_tmpdir(), agents,
                        extra='[http]\nlisten = "127.0.0.1:0"\n') as d:
        for tokens in (10_000, 20_000):
            r = d.cli("run", "spender", "--input", json.dumps(spend(tokens, cost=0.01)))
            assert r.returncode == 0, r.stderr
        r = d.cli("run", "spender", "--detach", "--input", json.dumps(spend()))
        assert r.returncode == 0, r.stderr
        link = d.cli("ui").stdout.strip()
        with chromium_page() as page:
            page.goto(link)
            page.click('#fleet a[href="#/agent/spender"]')
            usage = page.locator("#usage")
            expect(usage).to_contain_text(
                "Usage since the daemon started: 30,000 tokens (24,000 in, 6,000 out), "
                "$0.0200 (m1); last minute 30,000 tokens", timeout=20_000)
            expect(page.locator("#usage-waiting")).to_contain_text(
                "Tasks wait: budget: tokens_per_minute 25000 used 30000, next at ")


@pytest.mark.deadline(120)
@pytest.mark.parametrize("after", ["tokens_per_day = 5000", ""], ids=["raised", "removed"])
async def test_a_budget_raised_by_a_reload_lets_the_held_tasks_go_at_once(
        tmp_path: Path, after: str) -> None:
    """Raised, or taken away (the gate's path of an agent with no budget: its hold, and
    the reason its tasks wait, go)."""
    before = usage_agent("tight", "tokens_per_day = 100")
    async with in_process(tmp_path, before) as d:
        sup = d.sup
        await done(sup.tasks.submit("tight", spend(1000)))
        held = sup.tasks.submit("tight", spend(1000))
        assert held.status == TaskStatus.QUEUED
        config = tmp_path / "corral.toml"
        assert "tight" in sup.tasks.budgets.holding
        config.write_text(config.read_text().replace("tokens_per_day = 100", after))
        await d.dispatcher.call(SOCKET, "config.reload", {})
        await done(held)
        assert held.status == TaskStatus.SUCCEEDED
        assert "tight" not in sup.tasks.budgets.holding


async def test_the_journal_gives_back_the_days_usage_summed_per_bucket(
        db_path: Path) -> None:
    import sqlite3

    from corral.daemon.taskjournal import TaskJournalDB

    now = time.time()
    # 10 s into a minute an hour ago: the rows 0.1 and 0.2 s later share its minute
    # (at now - 3600 they crossed a minute's edge once in a few hundred runs)
    hour_ago = math.floor((now - 3600) / 60) * 60 + 10
    second = math.floor(now) - 10
    usage = msgspec.json.encode(ModelUsage(100, 20, 0.5, 1, {"m": Usage(100, 20, 0.5, 1)}))
    rows = [("old", now - 2 * DAY, usage),  # out of the day
            ("a", hour_ago, usage), ("b", hour_ago + 0.1, usage),  # one minute each
            ("a", hour_ago + 0.2, usage),  # the same minute as the first
            ("a", second + 0.5, usage),  # in the last minute: to the second
            ("b", second + 0.2, usage), ("b", second + 0.7, usage),  # one second
            ("a", None, usage),  # not ended: counted now
            ("a", now - 5, None)]  # no usage reported
    db = sqlite3.connect(db_path)
    db.executemany(
        "INSERT INTO tasks (id, arrival, agent, priority, timeout, retries_left, created, "
        "started, finished, status, attempts, usage, tenant) VALUES (?, ?, ?, 0, 60, 0, ?, "
        "?, ?, ?, '[]', ?, 'default')",  # (the tenant of agents no revision names)
        [(f"t{i}", i, agent, now - 2 * DAY, now - 2 * DAY, when,
          "queued" if when is None else "succeeded", u)
         for i, (agent, when, u) in enumerate(rows)])
    db.commit()
    db.close()
    journal = TaskJournalDB(db_path)
    try:
        got = await asyncio.to_thread(journal.usage_since, now - DAY)
    finally:
        await journal.close()
    minute = math.floor(hour_ago / 60) * 60
    late = [when for name, when, _, _ in got if name == "a" and when > second]
    assert len(late) == 1 and math.floor(now) <= late[0] <= time.time()
    # one row per bucket: the minute's, and the second's in the last minute
    assert sorted(got) == sorted([("a", minute, 240, 1.0), ("b", minute, 120, 0.5),
                                  ("a", second, 120, 0.5), ("b", second, 240, 1.0),
                                  ("a", late[0], 120, 0.5)])
    budgets = Budgets(lambda _: None, lambda _: None)
    for name, when, tokens, cost in got:
        budgets.restore(name, tokens, cost, when)
    a = budgets.windows["a"]
    t = time.time()
    # the hour-old usage is in the day's window only
    assert (a.minute_tokens.used(t), a.day_tokens.used(t), a.day_cost.used(t)) == (
        240, 480, 2.0)


ROW_BEFORE_USAGE = (
    "INSERT INTO tasks (id, arrival, agent, priority, timeout, retries_left, created, "
    "started, finished, status, attempts) VALUES (?, ?, 'a', 0, 60, 0, ?, ?, ?, ?, '[]')")


