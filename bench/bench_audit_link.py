"""Issue 86: what the chain's audit link costs a worker-link tool call, in the daemon's CPU.

    .venv/bin/python -m bench.bench_audit_link --before TREE [--after TREE] [--quick]

Two real daemons side by side in one sitting: one of `--after` (default this tree), one
of `--before` (a checkout of the commit before the link), each its `corral` package run
from its tree, with the minimal stdio MCP server (bench/min_mcp_server.py) and
bench/tool_agent.py. Round by
round, the daemons taking turns (a load that comes and goes falls on both alike), each
runs a task of CALLS sequential `ctx.call_tool`s on the worker link and a task of none;
the daemon's CPU over the first less the second, per call, is the figure: its loop's
thread's and all its threads' (the store's writer among them), read in nanoseconds from
the scheduler (/proc/PID/task/*/schedstat). Medians over the rounds; the link's cost is
after less before, and the median of the rounds' paired differences. Beside them, in
this process, the link alone: AuditLink around a call
answered at once, with the daemon's Audit (its log hub, its stderr echo to /dev/null, a
real state database and its writer thread), against the same call without it: per call,
the loop's thread's CPU and the writer thread's.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any

from corral.cli.client import Client
from corral.daemon.audit import Audit, AuditLink
from corral.daemon.journald import StderrEcho
from corral.daemon.logs import LogHub
from corral.daemon.store import StateStore
from corral.supervisor.config import AgentSpec
from corral.supervisor.tasks.call import Call

from .harness import PY, ROOT, report

QUICK = "--quick" in sys.argv
CALLS = 500 if QUICK else 2000
ROUNDS = 3 if QUICK else 11
SERVER = ROOT / "bench" / "min_mcp_server.py"


class Variant:
    """A daemon run from `tree`'s corral package."""

    def __init__(self, name: str, tree: Path, d: Path) -> None:
        self.name, self.tree, self.dir = name, tree, d
        self.sock = d / "corral.sock"
        env = f'env = {{ PYTHONPATH = "{tree}" }}'
        (d / "corral.toml").write_text(textwrap.dedent(f"""
            [supervisor]
            socket = "{self.sock}"
            state_dir = "{d}/state"
            log_dir = "{d}/logs"
            dynamic_uids = []

            [mcp_servers.min]
            command = ["{PY}", "{SERVER}"]
            start = "eager"

            [agents.caller]
            command = ["{PY}", "{tree}/bench/tool_agent.py"]
            {env}
            tools = ["min__*"]
            max_tool_calls_per_task = {CALLS}
        """))
        notify_path = d / "notify.sock"
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(str(notify_path))
        notify.settimeout(120)
        self.proc = subprocess.Popen(
            [PY, "-m", "corral", "daemon", "--config", str(d / "corral.toml")],
            env={**os.environ, "PYTHONPATH": str(tree), "NOTIFY_SOCKET": str(notify_path)},
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while "READY=1" not in notify.recv(4096).decode():
            pass
        notify.close()

    def cpu(self) -> tuple[int, int]:
        """Nanoseconds on a CPU: the loop's thread's, and all the daemon's threads'."""
        pid, loop, threads = self.proc.pid, 0, 0
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                    ns = int(f.read().split()[0])
            except FileNotFoundError:  # (a thread that ended meanwhile)
                continue
            threads += ns
            if tid == str(pid):
                loop = ns
        return loop, threads

    def cpu_of(self, calls: int) -> tuple[int, int]:
        """The daemon's CPU over a task of `calls` tool calls."""
        before = self.cpu()
        with Client(self.sock) as c:
            done = c.call("tasks.run", {"agent": "caller", "input": {"calls": calls}})
        assert done["status"] == "succeeded", done
        after = self.cpu()
        return after[0] - before[0], after[1] - before[1]

    def per_call_us(self) -> tuple[float, float]:
        many, none = self.cpu_of(CALLS), self.cpu_of(0)
        return (many[0] - none[0]) / CALLS / 1e3, (many[1] - none[1]) / CALLS / 1e3

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(60)


def threads_ns() -> dict[str, int]:
    out = {}
    for tid in os.listdir("/proc/self/task"):
        with contextlib.suppress(FileNotFoundError), \
                open(f"/proc/self/task/{tid}/schedstat") as f:
            out[tid] = int(f.read().split()[0])
    return out


class _Replica:  # what the link reads of a replica: its label and spec
    label = "caller#0"
    spec = AgentSpec(name="caller", command=["true"])


async def link_alone(d: Path, n: int = 20000) -> dict[str, float]:
    """The link's cost per call on the loop's thread and the store's writer's, in us."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    saved = os.dup(2)
    os.dup2(devnull, 2)
    hub = LogHub(d / "logs", echo=StderrEcho())
    store = StateStore(d / "corral.db")
    store.open_writer()
    audit = Audit(hub)
    audit.to(store)
    link = AuditLink(audit)
    call = Call(_Replica(), "min__echo", {"text": "1"}, None)  # type: ignore[arg-type]

    async def answered() -> dict[str, Any]:
        return {"content": [{"type": "text", "text": "1"}]}

    def bare(c: Call) -> Any:
        return answered()

    def linked(c: Call) -> Any:
        return link.intercept_call(c, bare)

    loop_tid = str(os.getpid())
    out: dict[str, list[float]] = {"bare_loop": [], "linked_loop": [], "linked_writer": []}
    try:
        for _ in range(ROUNDS):
            for name, one in (("bare", bare), ("linked", linked)):
                await store.writer.committed()  # type: ignore[union-attr]
                before = threads_ns()
                for _ in range(n):
                    await one(call)
                await store.writer.committed()  # type: ignore[union-attr]
                after = threads_ns()
                out[f"{name}_loop"].append((after[loop_tid] - before[loop_tid]) / n / 1e3)
                if name == "linked":
                    out["linked_writer"].append(sum(
                        after[t] - before.get(t, 0) for t in after if t != loop_tid) / n / 1e3)
    finally:
        await store.close_writer()
        store.close()
        hub.close()
        os.dup2(saved, 2)
        os.close(devnull)
        os.close(saved)
    med = {k: statistics.median(v) for k, v in out.items()}
    return {"link_alone_loop_us": round(med["linked_loop"] - med["bare_loop"], 2),
            "link_alone_writer_us": round(med["linked_writer"], 2)}


def main() -> dict[str, Any]:
    before = Path(sys.argv[sys.argv.index("--before") + 1]).resolve()
    after = Path(sys.argv[sys.argv.index("--after") + 1]).resolve() \
        if "--after" in sys.argv else ROOT
    results: dict[str, Any] = {"loadavg_start": os.getloadavg()[0], "calls": CALLS,
                               "rounds": ROUNDS}
    with tempfile.TemporaryDirectory(prefix="corral-bench-audit-") as tmp:
        (Path(tmp) / "alone").mkdir()
        results.update(asyncio.run(link_alone(Path(tmp) / "alone")))
        variants = []
        for name, tree in (("before", before), ("after", after)):
            (Path(tmp) / name).mkdir()
            variants.append(Variant(name, tree, Path(tmp) / name))
        try:
            for v in variants:  # warm each path
                v.cpu_of(200)
            acc: dict[str, list[float]] = {}
            for i in range(ROUNDS):
                for v in variants if i % 2 == 0 else reversed(variants):
                    loop, whole = v.per_call_us()
                    acc.setdefault(f"{v.name}_loop", []).append(loop)
                    acc.setdefault(f"{v.name}_daemon", []).append(whole)
        finally:
            for v in variants:
                v.stop()
    med = {k: statistics.median(xs) for k, xs in acc.items()}
    results.update({f"{k}_cpu_us_per_call": round(v, 1) for k, v in med.items()})
    results["rounds_us"] = {k: [round(x, 1) for x in xs] for k, xs in acc.items()}
    for part in ("loop", "daemon"):
        results[f"link_{part}_us"] = round(med[f"after_{part}"] - med[f"before_{part}"], 1)
        results[f"paired_link_{part}_us"] = round(statistics.median(
            a - b for a, b in zip(acc[f"after_{part}"], acc[f"before_{part}"], strict=True)),
            1)
    results["loadavg_end"] = os.getloadavg()[0]
    print(f"a worker-link tool call's CPU, the loop's thread: before {med['before_loop']:.1f}"
          f" us, after {med['after_loop']:.1f} us ({results['link_loop_us']:+.1f}); the "
          f"daemon's threads: before {med['before_daemon']:.1f} us, after "
          f"{med['after_daemon']:.1f} us ({results['link_daemon_us']:+.1f}); paired "
          f"{results['paired_link_loop_us']:+.1f} / {results['paired_link_daemon_us']:+.1f}; "
          f"the link alone "
          f"{results['link_alone_loop_us']:.2f} us on the loop, "
          f"{results['link_alone_writer_us']:.2f} us on the writer; load "
          f"{results['loadavg_end']:.1f}", flush=True)
    return results


if __name__ == "__main__":
    report("audit_link", main())
