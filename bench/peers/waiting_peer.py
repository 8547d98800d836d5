"""The peers of bench/bench_waiting.py, run in their own venv (bench/.work/waiting-peers,
bench/requirements-waiting.txt), one process per peer: a run of CALLS no-op steps then a
wait for a person's answer, durable, resumed by the answer.

    waiting_peer.py langgraph|dbos DIR --samples N --waiting M --calls 20 [--poll S]

- langgraph: a StateGraph of CALLS no-op nodes then a node that calls `interrupt()`, its
  checkpointer SqliteSaver (DIR/lg.sqlite), `durability="sync"` (each step's checkpoint
  written before the next: what corral's journal does); resumed by
  `invoke(Command(resume=...))`.
- dbos: an async `@DBOS.workflow` of CALLS `@DBOS.step`s then `DBOS.recv_async`, its
  system database SQLite (DIR/dbos.sqlite); resumed by `DBOS.send_async` then the
  handle's result. `--poll`: its notification listener's polling interval (default 1 s,
  its quick start's).

Printed, last line, JSON: the resume's p50/p99 (from the answer's send to the result in
hand, in this process) and what M runs left waiting cost: this process's RSS/USS growth
and its database file's, per run."""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import statistics
import time
import uuid
from pathlib import Path
from typing import Any

import psutil


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def summary(xs: list[float]) -> dict[str, float]:
    return {"p50_ms": round(statistics.median(xs) * 1e3, 2),
            "p99_ms": round(pct(xs, 0.99) * 1e3, 2),
            "max_ms": round(max(xs) * 1e3, 2), "n": len(xs)}


def mem() -> dict[str, int]:
    gc.collect()
    m = psutil.Process().memory_full_info()
    return {"rss": m.rss, "uss": m.uss}


def db_bytes(d: Path) -> int:
    return sum(p.stat().st_size for p in d.iterdir() if ".sqlite" in p.name)


def per(before: dict[str, int], after: dict[str, int], n: int) -> dict[str, int]:
    return {k: round((after[k] - before[k]) / n) for k in before}


# -- LangGraph -------------------------------------------------------------------------------
def langgraph(d: Path, samples: int, waiting: int, calls: int) -> dict[str, Any]:
    import sqlite3
    from importlib.metadata import version
    from typing import TypedDict

    from langgraph.checkpoint.sqlite import SqliteSaver
    from langgraph.graph import END, START, StateGraph
    from langgraph.types import Command, interrupt

    class State(TypedDict):
        n: int
        answer: str

    def step(state: State) -> dict[str, Any]:
        return {"n": state["n"] + 1}

    def ask(state: State) -> dict[str, Any]:
        return {"answer": interrupt("Which file?")}

    g = StateGraph(State)
    prev = START
    for i in range(calls):
        g.add_node(f"s{i}", step)
        g.add_edge(prev, f"s{i}")
        prev = f"s{i}"
    g.add_node("ask", ask)
    g.add_edge(prev, "ask")
    g.add_edge("ask", END)
    conn = sqlite3.connect(str(d / "lg.sqlite"), check_same_thread=False)
    graph = g.compile(checkpointer=SqliteSaver(conn))

    def start() -> dict[str, Any]:
        cfg = {"configurable": {"thread_id": str(uuid.uuid4())}}
        got = graph.invoke({"n": 0, "answer": ""}, cfg, durability="sync")
        assert "__interrupt__" in got, got
        return cfg

    def resume(cfg: dict[str, Any]) -> float:
        t0 = time.perf_counter()
        got = graph.invoke(Command(resume="/srv/a"), cfg, durability="sync")
        took = time.perf_counter() - t0
        assert got["answer"] == "/srv/a" and got["n"] == calls, got
        return took

    resume(start())  # warm
    took = [resume(start()) for _ in range(samples)]
    before, disk = mem(), db_bytes(d)
    t0 = time.perf_counter()
    held = [start() for _ in range(waiting)]
    made = time.perf_counter() - t0
    after = mem()
    out = {"version": version("langgraph"),
           "resume": summary(took), "waiting": waiting, "waiting_made_s": round(made, 1),
           "per_waiting_bytes": per(before, after, waiting),
           "db_bytes_per_waiting": round((db_bytes(d) - disk) / waiting)}
    assert len(held) == waiting
    conn.close()
    return out


# -- DBOS ----------------------------------------------------------------------------------
def dbos(d: Path, samples: int, waiting: int, calls: int, poll: float | None) -> dict[str, Any]:
    from dbos import DBOS

    config: dict[str, Any] = {"name": "corral-bench-waiting",
                              "system_database_url": f"sqlite:///{d}/dbos.sqlite",
                              "run_admin_server": False, "log_level": "WARNING"}
    if poll is not None:
        config["notification_listener_polling_interval_sec"] = poll
    DBOS(config=config)

    @DBOS.step()
    async def noop(i: int) -> int:
        return i

    @DBOS.workflow()
    async def waiter(n: int) -> str:
        for i in range(n):
            await noop(i)
        answer = await DBOS.recv_async("answer", timeout_seconds=7 * 86400)
        assert answer is not None
        return str(answer)

    async def main() -> dict[str, Any]:
        DBOS.launch()

        async def asking() -> Any:
            handle = await DBOS.start_workflow_async(waiter, calls)
            # waiting in recv once its steps are done: the step count reached
            while len(await DBOS.list_workflow_steps_async(handle.workflow_id)) < calls + 1:
                await asyncio.sleep(0.005)
            return handle

        async def resume(handle: Any) -> float:
            t0 = time.perf_counter()
            await DBOS.send_async(handle.workflow_id, "/srv/a", "answer")
            got = await handle.get_result()
            took = time.perf_counter() - t0
            assert got == "/srv/a", got
            return took

        await resume(await asking())  # warm
        took = [await resume(await asking()) for _ in range(samples)]
        before, disk = mem(), db_bytes(d)
        t0 = time.perf_counter()
        held = [await DBOS.start_workflow_async(waiter, calls) for _ in range(waiting)]
        while True:  # all of them in recv
            steps = [len(await DBOS.list_workflow_steps_async(h.workflow_id))
                     for h in held[-10:]]
            if min(steps) >= calls + 1:
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(1)
        made = time.perf_counter() - t0
        after = mem()
        from importlib.metadata import version
        return {"version": version("dbos"), "poll_s": poll or 1.0,
                "resume": summary(took), "waiting": waiting,
                "waiting_made_s": round(made, 1), "per_waiting_bytes": per(before, after,
                                                                           waiting),
                "threads": psutil.Process().num_threads(),
                "db_bytes_per_waiting": round((db_bytes(d) - disk) / waiting)}

    try:
        return asyncio.run(main())
    finally:
        DBOS.destroy(destroy_registry=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("kind", choices=["langgraph", "dbos"])
    ap.add_argument("dir", type=Path)
    ap.add_argument("--samples", type=int, default=40)
    ap.add_argument("--waiting", type=int, default=1000)
    ap.add_argument("--calls", type=int, default=20)
    ap.add_argument("--poll", type=float)
    a = ap.parse_args()
    if a.kind == "langgraph":
        out = langgraph(a.dir, a.samples, a.waiting, a.calls)
    else:
        out = dbos(a.dir, a.samples, a.waiting, a.calls, a.poll)
    out["load"] = os.getloadavg()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
