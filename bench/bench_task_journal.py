"""The task journal (issue 8) and finished tasks' memory (issue 15.1), side by side in one
run.

    .venv/bin/python -m bench.bench_task_journal [--quick] [--api-only]

(`--api-only`: part 1 alone, printed, for a short before/after comparison;
`--socket-only`: part 2 alone, likewise)

1. task throughput through the Python API, journal off and on (alternating rounds,
   medians): goal on >= 80 % of off
2. the same through the control socket (a daemon with `task_journal = false`, one with
   `true`; a window of 256 pipelined `tasks.run`)
3. daemon restart after a crash with 100 agents and 10,000 journaled tasks (5,000
   finished, 5,000 queued): time to READY=1 (all agents Ready, queue restored) and until
   the restored queue has drained, beside the same restart with an empty journal
4. supervisor RSS after 10,000 finished tasks of 100 KB (input and output), journal on and
   off (issue 15 goal: <= 100 MiB); run in a fresh process each
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sqlite3
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
import uvloop

from corral.supervisor import AgentSpec, State, Supervisor
from corral.supervisor.memory import TRIM_DELAY

from .harness import (
    ENV,
    PY,
    ROOT,
    CorralDaemon,
    cleanup,
    corral_agents,
    pipelined_tasks,
    report,
    workdir,
)

QUICK = "--quick" in sys.argv
TP = 5000 if QUICK else 20000
ROUNDS = 2 if QUICK else 3
ECHO = ROOT / "bench" / "echo_agent.py"


# -- 1. the Python API ----------------------------------------------------------------------
async def api_round(journal_on: bool, d: Path) -> float:
    from corral.daemon.storeschema import open_database
    from corral.daemon.taskjournal import TaskJournalDB

    journal = None
    if journal_on:
        db = d / f"api-{uuid.uuid4().hex[:6]}" / "corral.db"
        open_database(db).close()
        journal = TaskJournalDB(db)
    async with Supervisor(journal=journal) as sup:
        sup.add(AgentSpec(name="echo", command=[PY, str(ECHO)], env={"PYTHONPATH": str(ROOT)},
                          max_concurrent_tasks=64, max_queue=1_000_000))
        await sup.wait_state("echo", State.READY)
        await sup.tasks.map("echo", ({"n": i} for i in range(500)), concurrency=256)
        t0 = time.perf_counter()
        results = await sup.tasks.map("echo", ({"n": i} for i in range(TP)), concurrency=256)
        await sup.tasks.committed()
        dt = time.perf_counter() - t0
        assert all(r.status == "succeeded" for r in results)
    if journal is not None:
        await journal.close()
    return TP / dt


# -- 2. the control socket ------------------------------------------------------------------
def socket_round(sock_path: str) -> float:
    s = socket.socket(socket.AF_UNIX)
    s.connect(sock_path)
    try:
        return pipelined_tasks(s, TP // 2)
    finally:
        s.close()


def socket_throughput() -> dict[str, float]:
    rates: dict[bool, list[float]] = {False: [], True: []}
    daemons = {}
    dirs = []
    try:
        for on in (False, True):
            d = workdir(f"journal-{'on' if on else 'off'}")
            dirs.append(d)
            c = CorralDaemon(d, corral_agents(1, [PY, str(ECHO)], name="echo",
                                              extra="max_concurrent_tasks = 64\n"
                                                    "max_queue = 1000000"),
                             extra=f"task_journal = {'true' if on else 'false'}")
            c.start()
            daemons[on] = c
        for _ in range(ROUNDS):
            for on in (False, True):
                rates[on].append(socket_round(str(daemons[on].sock)))
    finally:
        for c in daemons.values():
            c.stop()
        for d in dirs:
            cleanup(d)
    return {"off": statistics.median(rates[False]), "on": statistics.median(rates[True])}


# -- 3. restart after a crash ---------------------------------------------------------------
AGENTS = 100
FINISHED = 5000
QUEUED = 5000


def seed_journal(db: Path) -> None:
    """5,000 finished and 5,000 queued tasks spread over the agents, as a crashed daemon
    leaves them."""
    conn = sqlite3.connect(db)
    now = time.time()
    attempts = b'[{"replica":0,"pid":1,"started":0.0,"finished":0.0,"outcome":"succeeded"}]'
    rows = []
    for seq in range(FINISHED + QUEUED):
        done = seq < FINISHED
        rows.append((uuid.uuid4().hex[:12], seq, f"a{seq % AGENTS}", 0, 300.0, 0,
                     now - 60, now - 60 if done else None, now - 59 if done else None,
                     "succeeded" if done else "queued", 0, b'{"n":1}',
                     b'{"output":{"n":1}}' if done else None, None,
                     attempts if done else b"[]", None, None))
    conn.executemany(f"INSERT INTO tasks VALUES ({','.join('?' * len(rows[0]))})", rows)
    conn.commit()
    conn.close()


def restart_after_crash(seeded: bool) -> dict[str, float]:
    d = workdir("journal-restart")
    agents = "".join(corral_agents(1, [PY, str(ECHO)], name=f"a{i}") for i in range(AGENTS))
    c = CorralDaemon(d, agents)
    try:
        c.start()
        assert c.proc is not None
        c.proc.kill()  # the crash
        c.proc.wait()
        if seeded:
            seed_journal(d / "state" / "corral.db")
        c.notify.close()
        c.notify_path.unlink()
        c = CorralDaemon(d, agents)
        ready = c.start()
        t0 = time.perf_counter()
        drained = 0.0
        if seeded:
            while True:  # the restored queue runs
                out = subprocess.run([PY, "-m", "corral", "--socket", str(c.sock), "stats",
                                      "--json"], capture_output=True, env=ENV, check=True)
                total = json.loads(out.stdout)["tasks"]["total"]
                if total["succeeded"] >= QUEUED:
                    break
                time.sleep(0.05)
            drained = time.perf_counter() - t0
        return {"ready_s": ready, "drained_after_ready_s": drained}
    finally:
        c.stop()
        cleanup(d)


# -- 4. memory after 10,000 finished 100 KB tasks --------------------------------------------
async def rss_child(journal_on: bool, n: int) -> dict[str, float]:
    from corral.daemon.storeschema import open_database
    from corral.daemon.taskjournal import TaskJournalDB

    d = workdir("journal-rss")
    journal = None
    if journal_on:
        open_database(d / "corral.db").close()
        journal = TaskJournalDB(d / "corral.db")
    me = psutil.Process()
    pad = "x" * 100_000
    async with Supervisor(journal=journal) as sup:
        sup.add(AgentSpec(name="echo", command=[PY, str(ECHO)], env={"PYTHONPATH": str(ROOT)},
                          max_concurrent_tasks=16, max_queue=1_000_000))
        await sup.wait_state("echo", State.READY)
        base = me.memory_info().rss
        sem = asyncio.Semaphore(32)

        async def one(i: int) -> str:
            # the supervisor's side only: the caller keeps no output (map would decode
            # and hold each batch's outputs, which is the caller's memory, not corral's)
            async with sem:
                task = sup.tasks.submit("echo", {"n": i, "pad": pad})
                await sup.tasks.committed()
                await task.done
                return task.status

        for start in range(0, n, 500):
            statuses = await asyncio.gather(*(one(i) for i in range(start, start + 500)))
            assert set(statuses) == {"succeeded"}
        await sup.tasks.committed()
        rss = me.memory_info().rss
        # and a moment later, once the payloads let go are given back (memory.py)
        await asyncio.sleep(TRIM_DELAY + 0.5)
        settled = me.memory_info().rss
    if journal is not None:
        await journal.close()
    cleanup(d)
    return {"rss_mib": rss / 2**20, "rss_settled_mib": settled / 2**20,
            "rss_before_tasks_mib": base / 2**20}


def rss(journal_on: bool, n: int) -> dict[str, float]:
    out = subprocess.run([PY, "-m", "bench.bench_task_journal", "--rss-child",
                          "on" if journal_on else "off", str(n)],
                         capture_output=True, env={**ENV, "PYTHONPATH": str(ROOT)},
                         cwd=ROOT, check=True)
    result: dict[str, float] = json.loads(out.stdout)
    return result


def main() -> None:
    load = Path("/proc/loadavg").read_text().split()[:3]
    if "--socket-only" in sys.argv:
        ctl = socket_throughput()
        print(json.dumps({"load_at_start": load, "journal_off_per_s": round(ctl["off"]),
                          "journal_on_per_s": round(ctl["on"]), "tasks": TP // 2,
                          "window": 256,
                          "load_at_end": Path("/proc/loadavg").read_text().split()[:3]}))
        return
    d = workdir("journal-api")
    api: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(ROUNDS):
        for on in (False, True):
            api[on].append(uvloop.run(api_round(on, d)))
    cleanup(d)
    api_off, api_on = statistics.median(api[False]), statistics.median(api[True])
    if "--api-only" in sys.argv:
        print(json.dumps({"load_at_start": load, "journal_off_per_s": round(api_off),
                          "journal_on_per_s": round(api_on),
                          "ratio_on_off": round(api_on / api_off, 3), "tasks": TP,
                          "rounds": ROUNDS, "rates": {"off": api[False], "on": api[True]},
                          "load_at_end": Path("/proc/loadavg").read_text().split()[:3]}))
        return
    ctl = socket_throughput()
    empty = restart_after_crash(False)
    full = restart_after_crash(True)
    n = 2000 if QUICK else 10_000
    mem_on, mem_off = rss(True, n), rss(False, n)
    report("task_journal", {
        "load_at_start": load,
        "throughput_api": {"journal_off_per_s": round(api_off), "journal_on_per_s":
                           round(api_on), "ratio_on_off": round(api_on / api_off, 3),
                           "tasks": TP, "rounds": ROUNDS},
        "throughput_control_socket": {"journal_off_per_s": round(ctl["off"]),
                                      "journal_on_per_s": round(ctl["on"]),
                                      "ratio_on_off": round(ctl["on"] / ctl["off"], 3),
                                      "tasks": TP // 2, "window": 256},
        "restart_after_crash": {
            "agents": AGENTS, "journal_finished": FINISHED, "journal_queued": QUEUED,
            "ready_s": round(full["ready_s"], 3),
            "ready_with_empty_journal_s": round(empty["ready_s"], 3),
            "ratio": round(full["ready_s"] / empty["ready_s"], 3),
            "restored_queue_drained_after_ready_s": round(full["drained_after_ready_s"], 3)},
        "rss_after_finished_100kb_tasks": {
            "tasks": n,
            "journal_on_mib": round(mem_on["rss_mib"], 1),
            "journal_off_mib": round(mem_off["rss_mib"], 1),
            "journal_on_settled_mib": round(mem_on["rss_settled_mib"], 1),
            "journal_off_settled_mib": round(mem_off["rss_settled_mib"], 1),
            "before_tasks_mib": round(mem_on["rss_before_tasks_mib"], 1),
            "goal_mib": 100},
        "load_at_end": Path("/proc/loadavg").read_text().split()[:3],
    })


if __name__ == "__main__":
    if "--rss-child" in sys.argv:
        i = sys.argv.index("--rss-child")
        print(json.dumps(uvloop.run(rss_child(sys.argv[i + 1] == "on", int(sys.argv[i + 2])))))
    else:
        os.environ.setdefault("PYTHONPATH", str(ROOT))
        main()
