"""Issue 24 (budgets): what usage reports and the budget gate cost on the dispatch path,
side by side in one run.

    .venv/bin/python -m bench.bench_budgets [--quick]

Three agents on one supervisor (Python API, no journal), each one replica with 64 task
slots, run the same pipelined echo tasks (`map`, 256 in flight) in alternating rounds:
  plain     echo, no report, no budget (the baseline)
  reports   a `usage/report` per task (ctx.report_usage), no budget
  budgeted  the same with tokens_per_minute, tokens_per_day and max_cost_usd_per_day set
            far above what it spends, so the gate is judged at every start and never holds
Tasks per second and the supervisor's own CPU time per task (its process; the workers'
is theirs), the median of the rounds, and each against the baseline. And what a daemon's
start-up spends rebuilding the day windows from a journal of 100,000 tasks with usage.
"""

from __future__ import annotations

import statistics
import sys
import time

import uvloop

from corral.supervisor import AgentSpec, Supervisor
from corral.supervisor.lifecycle import SERVING

from .harness import PY, ROOT, report

QUICK = "--quick" in sys.argv
TASKS = 3000 if QUICK else 20000
ROUNDS = 3 if QUICK else 7
ECHO = ROOT / "bench" / "echo_agent.py"
USAGE = ROOT / "bench" / "usage_agent.py"
BIG = 10**12

AGENTS = {
    "plain": dict(command=[PY, str(ECHO)]),
    "reports": dict(command=[PY, str(USAGE)]),
    "budgeted": dict(command=[PY, str(USAGE)], tokens_per_minute=BIG, tokens_per_day=BIG,
                     max_cost_usd_per_day=float(BIG)),
}


async def rounds() -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Tasks per second, and the supervisor's CPU microseconds per task (this process:
    the workers' own work is theirs), per agent and round."""
    rates: dict[str, list[float]] = {name: [] for name in AGENTS}
    costs: dict[str, list[float]] = {name: [] for name in AGENTS}
    async with Supervisor() as sup:
        for name, kw in AGENTS.items():
            sup.add(AgentSpec(name=name, env={"PYTHONPATH": str(ROOT)},
                              max_concurrent_tasks=64, max_queue=1_000_000,
                              **kw))  # type: ignore[arg-type]
        for name in AGENTS:
            await sup.wait_state(name, SERVING)
        for _ in range(ROUNDS):
            for name in AGENTS:
                t0, c0 = time.perf_counter(), time.process_time()
                results = await sup.tasks.map(name, ({"n": i} for i in range(TASKS)),
                                              concurrency=256)
                dt, cpu = time.perf_counter() - t0, time.process_time() - c0
                assert all(r.status == "succeeded" for r in results)
                rates[name].append(TASKS / dt)
                costs[name].append(cpu / TASKS * 1e6)
        used = sup.tasks.budgets.usage
        # every report counted: the figures are of the work they say
        for name in ("reports", "budgeted"):
            assert used[name].reports == TASKS * ROUNDS, (name, used[name].reports)
        assert not sup.tasks.budgets.holding
    return rates, costs


async def rebuild(n: int) -> dict[str, float]:
    """The start-up's rebuild of the day windows from a task journal of `n` finished
    tasks that reported usage (200 agents), as the daemon does it: the query, the decode,
    the windows."""
    import tempfile
    from pathlib import Path

    import msgspec

    from corral.daemon.storeschema import open_database
    from corral.daemon.taskjournal import TaskJournalDB
    from corral.supervisor.tasks import Budgets, ModelUsage, Usage
    from corral.supervisor.tasks.budget import DAY

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "corral.db"
        db = open_database(path)
        now = time.time()
        usage = msgspec.json.encode(ModelUsage(100, 20, 0.0001, 1,
                                               {"m": Usage(100, 20, 0.0001, 1)}))
        db.executemany(
            "INSERT INTO tasks (id, arrival, agent, priority, timeout, retries_left, "
            "created, started, finished, status, attempts, usage) VALUES "
            "(?, ?, ?, 0, 60, 0, ?, ?, ?, 'succeeded', '[]', ?)",
            [(f"t{i}", i, f"a{i % 200}", now - DAY + i * DAY / n, now - DAY + i * DAY / n,
              now - DAY + i * DAY / n + 0.01, usage) for i in range(n)])
        db.commit()
        db.close()
        journal = TaskJournalDB(path)
        budgets = Budgets(lambda _: None, lambda _: None)
        t0 = time.perf_counter()
        rows = journal.usage_since(time.time() - DAY)
        for agent, when, tokens, cost in rows:
            budgets.restore(agent, tokens, cost, when)
        dt = time.perf_counter() - t0
        await journal.close()
    day = sum(w.day_tokens.used(time.time()) for w in budgets.windows.values())
    assert day >= n * 120 * 0.99  # (the oldest may have left the day meanwhile)
    return {"journal_tasks": n, "rebuild_ms": round(dt * 1e3, 1)}


def main() -> None:
    startup = uvloop.run(rebuild(10_000 if QUICK else 100_000))
    rates, costs = uvloop.run(rounds())
    base = statistics.median(rates["plain"])
    base_cpu = statistics.median(costs["plain"])
    out: dict[str, object] = {"tasks_per_round": TASKS, "rounds": ROUNDS, **startup}
    for name, rs in rates.items():
        med = statistics.median(rs)
        cpu = statistics.median(costs[name])
        out[f"{name}_per_s"] = round(med)
        out[f"{name}_vs_plain"] = round(med / base, 3)
        out[f"{name}_supervisor_cpu_us_per_task"] = round(cpu, 1)
        out[f"{name}_cpu_vs_plain"] = round(cpu / base_cpu, 3)
        out[f"{name}_rounds_per_s"] = [round(r) for r in rs]
    report("budgets", out)


if __name__ == "__main__":
    main()
