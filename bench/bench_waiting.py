"""Waiting for a person (issue 55 item 4, docs/approvals.md#waiting-without-a-process), side
by side with LangGraph's interrupt and DBOS's recv, in one run.

    .venv/bin/python -m bench.bench_waiting [--tasks 10000] [--samples 40] [--only ...]

1. **10,000 tasks waiting for a person.** A daemon of its own (a subprocess, manual clock)
   with an elastic agent (bench/waiting_agent.py, async SDK handler; min_replicas 0,
   idle_after 0.5 s, one replica running `--slots` tasks at once, one agent per tenant of ten:
   the inbox bounds a tenant to 1,000 pending asks) whose tasks each ask a question
   (`ctx.ask`) with `suspend_after = 300`, run twice: with each agent running 100 of them
   at once, then 1,000 (`--slots`). The tasks are submitted at once; the bench moves
   the daemon's clock 10 minutes every second (`daemon.clock {advance}`) so that those that
   asked are suspended and give their slots to the next, until all are `suspended` and the
   agent asleep. Reported: the time that took, the processes the suspended tasks hold (the
   agent's replicas with a pid, the daemon's descendants), and the daemon's memory per
   suspended task (RSS, USS and PSS from /proc by psutil, from outside: the daemon after
   a warm-up round that suspended and answered WARM tasks and its agent asleep, against
   the same with the 10,000 suspended); then after an upgrade in place (`corral upgrade`:
   the same pid, agents and tasks, the state read back by the new image) and after a
   restart, against the cold daemon; then again once all are answered and done.
2. **Resume after an answer.** A daemon of its own with three agents (the same script),
   each task making 20 tool calls to a stdio MCP server (bench/min_mcp_server.py, each
   call journaled) then asking: `awake` (min_replicas 1: its replica stays), `asleep`
   (min_replicas 0, idle_after 0.3 s: the answer wakes it, a cold spawn) and
   `asleep-warm` (the same with `warm = true`: the wake forks from the zygote). Per sample:
   a task asks, the clock moves 10 minutes, the task is suspended (its attempt ended; for
   the asleep agents, the agent asleep), then on one control connection a `tasks.get
   {wait}` waits for its end and on another `approvals.resolve` answers it; the time from
   the resolve's send to the end's arrival is the sample. The task's output carries the
   worker's wall clock at its steps: where the time went (to the handler's start, the 20
   calls answered from the journal, the question's answer, the end's report).
3. **The peers**, each in one process of a venv of its own (bench/.work/waiting-peers,
   from bench/requirements-waiting.txt: bench/peers/waiting_peer.py): LangGraph (a graph
   of 20 no-op nodes then one that calls `interrupt()`, its SqliteSaver checkpointer,
   `durability="sync"`; resumed by `invoke(Command(resume=...))`) and DBOS on SQLite (an
   async workflow of 20 `@DBOS.step`s then `DBOS.recv_async`; resumed by
   `DBOS.send_async` and the handle's result), DBOS measured as its quick start configures
   it (the notification listener polling every 1 s) and with the listener at 10 ms. Each:
   resume latency p50/p99 over the same count of samples, and what N waiting
   threads/workflows cost the process holding them (RSS/USS growth / N) and its database
   file.

Every process is a child of this one, stopped by its pid at the end."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

import msgspec
import psutil

from .bench_cluster import Client
from .bench_upgrade import upgrade
from .harness import BIN, PY, ROOT, CorralDaemon, report, workdir

AGENT = ROOT / "bench" / "waiting_agent.py"
MCP = ROOT / "bench" / "min_mcp_server.py"
PEER = ROOT / "bench" / "peers" / "waiting_peer.py"
PEERS_VENV = ROOT / "bench" / ".work" / "waiting-peers"
PEERS_PINS = ROOT / "bench" / "requirements-waiting.txt"
SUSPEND_AFTER = 300
CALLS = 20
SLOTS = 1000  # an agent's tasks at once: past MAX_IN_FLIGHT (waiting_config)
# the passages measured: 1,000 attempts at once in all, then 10,000 (the allocator keeps
# the high-water of the second: bench/RESULTS.md)
SHAPES = (100, SLOTS)
WARM = 1000


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def summary(xs: list[float]) -> dict[str, float]:
    """Seconds in, ms out."""
    return {"p50_ms": round(statistics.median(xs) * 1e3, 2),
            "p99_ms": round(pct(xs, 0.99) * 1e3, 2),
            "max_ms": round(max(xs) * 1e3, 2), "n": len(xs)}


def agent(name: str, extra: str, auto: str | None) -> str:
    out = f"""
[agents.{name}]
command = ["{PY}", "{AGENT}"]
env = {{ PYTHONPATH = "{ROOT}" }}
suspend_after = {SUSPEND_AFTER}
start_timeout = 120
stop_timeout = 10
{extra}
"""
    if auto is not None:
        out += f"[agents.{name}.autoscale]\n{auto}\n"
    return out


def memory(pid: int) -> dict[str, int]:
    m = psutil.Process(pid).memory_full_info()
    return {"rss": m.rss, "uss": m.uss, "pss": m.pss}


def descendants(pid: int) -> list[int]:
    return [c.pid for c in psutil.Process(pid).children(recursive=True)]


def replicas_up(c: Client, name: str) -> list[int]:
    return [a["pid"] for a in c.call("agents.status", {"names": [name]})["agents"]
            if a["name"] == name and a["pid"]]


def wait_for(what: str, check: Any, timeout: float, every: float = 0.01) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(every)


def submit_many(sock: Path, agents: list[str], n: int, window: int = 500) -> list[str]:
    """`n` tasks submitted on one connection, to `agents` in turn, `window` in flight;
    their ids."""
    s = socket.socket(socket.AF_UNIX)
    s.connect(str(sock))
    f = s.makefile("rb")
    enc = msgspec.json.Encoder()
    ids: list[str] = []
    sent = 0
    try:
        while len(ids) < n:
            batch = []
            while sent < n and sent - len(ids) < window:
                batch.append(enc.encode({"jsonrpc": "2.0", "id": sent, "method": "tasks.submit",
                                         "params": {"agent": agents[sent % len(agents)],
                                                    "input": {"prompt": f"#{sent}?"}}})
                             + b"\n")
                sent += 1
            if batch:
                s.sendall(b"".join(batch))
            msg = msgspec.json.decode(f.readline())
            if "id" not in msg:
                continue
            assert "result" in msg, msg
            ids.append(msg["result"]["task_id"])
    finally:
        f.close()
        s.close()
    return ids


def count(c: Client, status: str) -> int:
    got = c.call("tasks.list", {"status": status, "limit": 1_000_000, "local": True})
    return len(got["tasks"])


def answer_all(c: Client, sock: Path, window: int = 500) -> int:
    """Every pending ask answered, pipelined on one connection; how many."""
    asks = [a["id"] for a in c.call("approvals.list", {})["asks"]]
    s = socket.socket(socket.AF_UNIX)
    s.connect(str(sock))
    f = s.makefile("rb")
    enc = msgspec.json.Encoder()
    sent = got = 0
    try:
        while got < len(asks):
            batch = []
            while sent < len(asks) and sent - got < window:
                batch.append(enc.encode({"jsonrpc": "2.0", "id": sent,
                                         "method": "approvals.resolve",
                                         "params": {"id": asks[sent], "decision": "answered",
                                                    "answer": "yes"}}) + b"\n")
                sent += 1
            if batch:
                s.sendall(b"".join(batch))
            msg = msgspec.json.decode(f.readline())
            if "id" in msg:
                assert "result" in msg, msg
                got += 1
    finally:
        f.close()
        s.close()
    return len(asks)


def state_bytes(d: Path) -> int:
    """The daemon's state directory: its database, with its WAL, and its step log."""
    return sum(p.stat().st_size for p in (d / "state").rglob("*") if p.is_file())


def asleep(c: Client, agents: list[str]) -> bool:
    return not any(replicas_up(c, a) for a in agents)


def suspend_all(c: Client, sock: Path, agents: list[str], n: int,
                timeout: float) -> dict[str, Any]:
    """Submit `n` asking tasks and move the clock until all are suspended and the agents
    asleep; the seconds it took, and the clock's moves."""
    t0 = time.perf_counter()
    ids = submit_many(sock, agents, n)
    submitted = time.perf_counter() - t0
    moves = 0
    deadline = time.monotonic() + timeout
    while True:
        time.sleep(1.0)
        c.call("daemon.clock", {"advance": 600})
        moves += 1
        done = count(c, "suspended")
        failed = count(c, "failed") + count(c, "lost")
        print(f"  {done}/{n} suspended ({failed} failed or lost) after "
              f"{time.perf_counter() - t0:.0f} s, load {os.getloadavg()[0]:.1f}", flush=True)
        assert not failed, "tasks failed or lost: see the agents' logs"
        if done >= n:
            break
        assert time.monotonic() < deadline, f"{done} of {n} suspended in {timeout} s"
    all_suspended = time.perf_counter() - t0
    wait_for("the agents asleep", lambda: asleep(c, agents), 120, 0.1)
    return {"ids": ids, "submit_s": round(submitted, 2),
            "all_suspended_s": round(all_suspended, 1),
            "asleep_s": round(time.perf_counter() - t0, 1), "clock_moves": moves}


def finish_all(c: Client, sock: Path, n: int, timeout: float) -> float:
    t0 = time.perf_counter()
    answered = answer_all(c, sock)
    assert answered == n, (answered, n)
    wait_for("every task done", lambda: count(c, "succeeded") >= n, timeout, 1.0)
    return time.perf_counter() - t0


def waiting_config(tenants: int, per_agent: int, slots: int = SLOTS) -> str:
    """An elastic agent per tenant: the inbox holds at most 1,000 pending asks a tenant
    (docs/approvals.md#bounds), 10,000 in all. Each runs SLOTS tasks at once, more than
    the 256 requests of a worker the daemon works on at once (launch.py's MAX_IN_FLIGHT):
    a request that waits for a person is not counted (Peer.park); before it was, a worker
    holding 256 asks was not read until one ended, its suspended attempts' ends included,
    and a suspension's stop found it hung and lost its other tasks (bench/RESULTS.md)."""
    return "".join(
        f"[tenants.t{i}]\n" + agent(f"waiter{i}", f'tenant = "t{i}"\n'
                                    f"max_concurrent_tasks = {min(slots, per_agent)}\n"
                                    f"max_queue = {per_agent * 3}",
                                    "min_replicas = 0\nmax_replicas = 1\nidle_after = 0.5")
        for i in range(tenants))


def waiting(d: Path, n: int, warm_n: int, tenants: int, slots: int = SLOTS
            ) -> dict[str, Any]:
    d.mkdir()
    agents = [f"waiter{i}" for i in range(tenants)]
    cfg = waiting_config(tenants, -(-n // tenants), slots)
    extra = "manual_clock = true\ndrain_timeout = 0"
    daemon = CorralDaemon(d, cfg, extra=extra)
    daemon.start()
    assert daemon.proc is not None
    pid = daemon.proc.pid
    c = Client(daemon.sock)
    out: dict[str, Any] = {"tasks": n, "tenants": tenants, "warm_up": warm_n}

    def read_back(name: str) -> None:
        """The daemon (its image new, its state read back): every task still suspended,
        the agents asleep, its memory against the cold daemon's."""
        assert count(c, "suspended") == n
        wait_for("the agents asleep", lambda: asleep(c, agents), 120, 0.1)
        time.sleep(2)
        out[name] = memory(pid)
        out[f"{name}_per_task_bytes"] = {k: round((out[name][k] - out["cold"][k]) / n)
                                         for k in out["cold"]}

    try:
        wait_for("the agents asleep", lambda: asleep(c, agents), 120, 0.1)
        time.sleep(2)
        out["cold"] = memory(pid)
        # warm-up: warm_n tasks through the whole cycle (asked, suspended, answered, done)
        warm = suspend_all(c, daemon.sock, agents, warm_n, 600)
        finish_all(c, daemon.sock, warm_n, 600)
        wait_for("the agents asleep", lambda: asleep(c, agents), 120, 0.1)
        time.sleep(2)
        before = memory(pid)
        out["before"] = before
        disk = state_bytes(d)
        out["warm_up_suspend_s"] = warm["all_suspended_s"]
        got = suspend_all(c, daemon.sock, agents, n, 1800)
        ids = got.pop("ids")
        out.update(got)
        time.sleep(2)
        after = memory(pid)
        out["after"] = after
        out["per_task_bytes"] = {k: round((after[k] - before[k]) / n) for k in before}
        out["replicas_with_a_pid"] = [p for a in agents for p in replicas_up(c, a)]
        out["daemon_descendants"] = descendants(pid)
        sample = c.call("tasks.get", {"task_id": ids[-1]})
        assert sample["status"] == "suspended", sample["status"]
        out["state_dir_bytes_per_task"] = round((state_bytes(d) - disk) / n)
        # the same daemon upgraded in place (`corral upgrade`: its pid, its agents and the
        # suspended tasks kept, its state read back by the new image): how an operator has
        # the passage's high-water back without a stop
        c.close()
        out["upgrade_s"] = round(upgrade(daemon)[0], 2)
        c = Client(daemon.sock)
        read_back("upgraded")
        # the same daemon restarted: the suspended tasks read back from its journal, none
        # of the traffic that brought them there (its memory's high-water) in the process
        c.close()
        daemon.stop()
        (d / "notify.sock").unlink()
        daemon = CorralDaemon(d, cfg, extra=extra)
        out["restart_ready_s"] = round(daemon.start(), 2)
        assert daemon.proc is not None
        pid = daemon.proc.pid
        c = Client(daemon.sock)
        read_back("restarted")
        t = finish_all(c, daemon.sock, n, 1800)
        out["answer_all_and_done_s"] = round(t, 1)
        wait_for("the agents asleep", lambda: asleep(c, agents), 120, 0.1)
        time.sleep(2)
        out["done"] = memory(pid)
        out["retained_per_task_bytes"] = {k: round((out["done"][k] - before[k]) / n)
                                          for k in before}
    finally:
        c.close()
        daemon.stop()
    return out


# -- 2. resume after an answer -----------------------------------------------------------
VARIANTS = {
    "awake": ("", "min_replicas = 1\nmax_replicas = 1"),
    "asleep": ("", "min_replicas = 0\nmax_replicas = 1\nidle_after = 0.3"),
    "asleep-warm": ("warm = true", "min_replicas = 0\nmax_replicas = 1\nidle_after = 0.3"),
    "asleep-warm-preload": ('warm = true\npreload = ["asyncio"]',
                            "min_replicas = 0\nmax_replicas = 1\nidle_after = 0.3"),
}


def resume_config() -> str:
    tools = 'tools = ["fast__*"]\nmax_tool_calls_per_task = 1000'
    return "".join(agent(name, f"{tools}\n{extra}", auto)
                   for name, (extra, auto) in VARIANTS.items()) + f"""
[mcp_servers.fast]
command = ["{PY}", "{MCP}"]
"""


def one_resume(c: Client, waiter: Client, name: str) -> dict[str, Any]:
    task_id = c.call("tasks.submit", {"agent": name, "input": {
        "calls": CALLS, "prompt": "Which file?"}})["task_id"]
    info = wait_for("the task waiting", lambda: (t := c.call(
        "tasks.get", {"task_id": task_id}))["status"] == "waiting" and t["asks"] and t, 60)
    ask = info["asks"][0]["id"]
    c.call("daemon.clock", {"advance": 600})
    wait_for("suspended", lambda: (t := c.call("tasks.get", {"task_id": task_id}))[
        "status"] == "suspended" and t["attempts"][-1]["finished"] is not None, 60)
    if name != "awake":
        wait_for("asleep", lambda: not replicas_up(c, name), 60, 0.02)
    else:
        assert replicas_up(c, name)
    time.sleep(0.2)  # quiet: the stopped attempt's end and the autoscaler's tick done
    waiter.n += 1
    waiter.sock.sendall(msgspec.json.encode({"jsonrpc": "2.0", "id": waiter.n,
                                             "method": "tasks.get",
                                             "params": {"task_id": task_id, "wait": True}})
                        + b"\n")
    time.sleep(0.05)  # the wait is registered
    wall0 = time.time()
    t0 = time.perf_counter()
    c.call("approvals.resolve", {"id": ask, "decision": "answered", "answer": "/srv/a"})
    t_resolved = time.perf_counter()
    while True:
        msg = msgspec.json.decode(waiter.file.readline())
        if msg.get("id") == waiter.n:
            break
    t1 = time.perf_counter()
    done = msg["result"]
    assert done["status"] == "succeeded", done
    out = done["output"]
    assert out["answer"] == "/srv/a" and out["attempt"] == 2, out
    assert done["attempts"][-1]["replayed"] == CALLS, done["attempts"][-1]
    t = out["t"]
    return {"total": t1 - t0, "resolve_call": t_resolved - t0,
            # the worker's wall clock against this process's (one machine, one clock)
            "to_handler": t["handler"] - wall0,
            "process_started": t["process"] - wall0,
            "replay_calls": t["calls"] - t["handler"],
            "answer": t["answered"] - t["calls"],
            "to_end_seen": (wall0 + (t1 - t0)) - t["answered"],
            "replayed": done["attempts"][-1].get("replayed")}


def resumes(d: Path, samples: int) -> dict[str, Any]:
    d.mkdir()
    daemon = CorralDaemon(d, resume_config(), extra="manual_clock = true\ndrain_timeout = 0")
    daemon.start()
    c = Client(daemon.sock)
    waiter = Client(daemon.sock)
    got: dict[str, list[dict[str, Any]]] = {k: [] for k in VARIANTS}
    try:
        for name in VARIANTS:  # warm: each agent's first task
            one_resume(c, waiter, name)
        for r in range(samples):
            for name in VARIANTS:
                got[name].append(one_resume(c, waiter, name))
            if r % 10 == 9:
                print(f"  resume sample {r + 1}/{samples} load {os.getloadavg()[0]:.1f}: "
                      + ", ".join(f"{k} {statistics.median(x['total'] for x in v) * 1e3:.1f}"
                                  f" ms" for k, v in got.items()), flush=True)
    finally:
        waiter.close()
        c.close()
        daemon.stop()
    out: dict[str, Any] = {}
    for name, rows in got.items():
        out[name] = {"resume": summary([x["total"] for x in rows]),
                     "replayed": rows[-1]["replayed"],
                     "parts_p50_ms": {k: round(statistics.median(x[k] for x in rows) * 1e3, 2)
                                      for k in ("resolve_call", "to_handler", "process_started",
                                                "replay_calls", "answer", "to_end_seen")
                                      if k != "process_started" or name != "awake"}}
    return out


# -- 3. the peers ----------------------------------------------------------------------------
def peers_python() -> Path | None:
    """The peers' venv, installed from their pins (their dependencies are not corral's);
    None, said, when it does not install."""
    py = PEERS_VENV / "bin" / "python"
    stamp = PEERS_VENV / ".pins"
    pins = PEERS_PINS.read_text()
    if py.exists() and stamp.exists() and stamp.read_text() == pins:
        return py
    uv = BIN / "uv"
    made = subprocess.run([str(uv), "venv", "-q", "--clear", "-p", PY, str(PEERS_VENV)])
    pip = subprocess.run([str(uv), "pip", "install", "-q", "-p", str(py), "-r",
                          str(PEERS_PINS)])
    if made.returncode or pip.returncode:
        print("the peers did not install: measured without them", flush=True)
        return None
    stamp.write_text(pins)
    return py


def peer(py: Path, d: Path, kind: str, samples: int, waiting_n: int,
         extra: list[str] | None = None) -> dict[str, Any]:
    d.mkdir()
    run = subprocess.run([str(py), str(PEER), kind, str(d), "--samples", str(samples),
                          "--waiting", str(waiting_n), "--calls", str(CALLS), *(extra or [])],
                         capture_output=True, text=True, timeout=3600)
    if run.returncode:
        return {"error": run.stderr.strip().splitlines()[-1:] or [f"exit {run.returncode}"]}
    got: dict[str, Any] = json.loads(run.stdout.strip().splitlines()[-1])
    return got


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, default=10_000)
    ap.add_argument("--samples", type=int, default=40)
    ap.add_argument("--tenants", type=int, default=10)
    ap.add_argument("--warm", type=int, default=WARM)
    ap.add_argument("--slots", default=",".join(map(str, SHAPES)),
                    help="an agent's tasks at once, a passage each (comma-separated): "
                         "its high-water")
    ap.add_argument("--peer-waiting", type=int, default=200,
                    help="waiting threads/workflows for the peers' memory figure")
    ap.add_argument("--only", default="waiting,resume,langgraph,dbos")
    args = ap.parse_args()
    only = args.only.split(",")
    d = workdir("waiting")
    out: dict[str, Any] = {"load_before": os.getloadavg(), "cores": os.cpu_count()}
    t0 = time.time()
    try:
        if "waiting" in only:
            out["waiting"] = {}
            for slots in map(int, args.slots.split(",")):
                print(f"1. {args.tasks} tasks waiting for a person, {slots} at once an "
                      "agent", flush=True)
                out["waiting"][slots] = waiting(d / f"waiting-{slots}", args.tasks,
                                                args.warm, args.tenants, slots)
                print(json.dumps(out["waiting"][slots]), flush=True)
            out["load_after_waiting"] = os.getloadavg()
        if "resume" in only:
            print(f"2. resume after an answer, {args.samples} samples each", flush=True)
            out["resume"] = resumes(d / "resume", args.samples)
            out["load_after_resume"] = os.getloadavg()
            print(json.dumps(out["resume"]), flush=True)
        py = peers_python() if {"langgraph", "dbos"} & set(only) else None
        if py is not None:
            out["peers"] = {}
            if "langgraph" in only:
                print("3. LangGraph", flush=True)
                out["peers"]["langgraph"] = peer(py, d / "langgraph", "langgraph",
                                                 args.samples, args.peer_waiting)
                print(json.dumps(out["peers"]["langgraph"]), flush=True)
            if "dbos" in only:
                for label, poll in (("dbos", None), ("dbos-poll-10ms", "0.01")):
                    print(f"3. {label}", flush=True)
                    out["peers"][label] = peer(py, d / label, "dbos", args.samples,
                                               args.peer_waiting,
                                               ["--poll", poll] if poll else None)
                    print(json.dumps(out["peers"][label]), flush=True)
    finally:
        shutil.rmtree(d, ignore_errors=True)
    out["load_after"] = os.getloadavg()
    out["seconds"] = round(time.time() - t0, 1)
    report("waiting", out)


if __name__ == "__main__":
    main()
