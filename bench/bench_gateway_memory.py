"""Memory under traffic (issue 77): N calls through one of corral's gateways, the daemon's
RSS, open fds and threads sampled every 10,000; done when its RSS at the end is within
+10 % of its RSS at 100,000 and its fds and threads are flat.

    .venv/bin/python -m bench.bench_gateway_memory --calls N --gateway model|mcp
        [--concurrency C] [--seconds S] [--heap-dump DIR] [--json PATH]

model: Chat Completions through the model gateway to bench/gateways' instant mock
provider (a process of its own), one call in four streamed, the rest whole, as the
replica of bench/gateways/token_agent.py (a caller of no task).
mcp: tools/call of the echo tool of bench/min_mcp_server.py (in the gateway's pool) over
Streamable HTTP: C long-lived sessions, one a worker, and every 1,000 calls one more
session opened, called once and abandoned (never deleted: the gateway's idle timeout and
session bounds are what must end it).

The load is driven from this process (aiohttp on uvloop); the daemon is the process
bench/gateways/targets.py starts, measured alone (not its agents or MCP servers: they are
processes of their own with their own lifetimes). `--seconds` bounds the run: a run
stopped short says the count it reached and the RSS slope past 100,000 (MB per 100,000
calls, least squares). `--heap-dump DIR` starts the daemon with CORRAL_HEAP_DUMP=DIR
(corral/daemon/heapdump.py; CORRAL_HEAP_DUMP_EVERY from the environment, default 300 s).
Every process started is ended by its id (its group) at the end, on SIGTERM and on ^C.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import psutil

from bench.gateways import loadgen
from bench.gateways.targets import ENV, HERE, PY, CorralMcp, CorralModel, Target, free_port

SAMPLE_EVERY = 10_000
BASE_AT = 100_000
ABANDON_EVERY = 1_000  # mcp: one session opened, called once and left, per this many calls
STREAM_ONE_IN = 4  # model: one call in this many streamed


class _HeapEnv(Target):
    """The daemon's environment with the heap-dump hook's variables, when asked for."""

    extra: dict[str, str] = {}

    def popen(self, cmd: list[str], env: dict[str, str] | None = None,
              cwd: Path | None = None) -> subprocess.Popen[bytes]:
        return super().popen(cmd, {**(env or ENV), **self.extra}, cwd)


class ModelTarget(_HeapEnv, CorralModel):
    pass


class McpTarget(_HeapEnv, CorralMcp):
    pass


def sample(proc: psutil.Process, calls: int, t0: float, errors: int) -> dict[str, Any]:
    return {"calls": calls, "seconds": round(time.perf_counter() - t0, 1),
            "rss_mb": round(proc.memory_info().rss / 2**20, 2), "fds": proc.num_fds(),
            "threads": proc.num_threads(), "errors": errors}


def slope_mb_per_100k(samples: list[dict[str, Any]]) -> float | None:
    """The RSS's least-squares slope over the samples from 100,000 calls on."""
    pts = [(s["calls"], s["rss_mb"]) for s in samples if s["calls"] >= BASE_AT]
    if len(pts) < 2:
        return None
    n = len(pts)
    mx = sum(x for x, _ in pts) / n
    my = sum(y for _, y in pts) / n
    var = sum((x - mx) ** 2 for x, _ in pts)
    return sum((x - mx) * (y - my) for x, y in pts) / var * BASE_AT if var else None


class Driver:
    """The calls of one gateway, numbered; `run(n)` makes n of them, C at a time."""

    def __init__(self, target: Target, kind: str, c: int) -> None:
        self.spec = target.spec()
        self.kind = kind
        self.c = c
        self.errors = 0
        self.first_error: str | None = None
        self.next_i = 0
        self.calls: list[loadgen.Call] = []

    async def open(self, session: aiohttp.ClientSession) -> None:
        self.session = session
        if self.kind == "model":
            self.calls = [loadgen.model_call(session, {**self.spec, "stream": s})
                          for s in (False, True)]
        else:
            self.calls = [await loadgen.mcp_call(session, self.spec) for _ in range(self.c)]

    def _failed(self, exc: BaseException) -> None:
        self.errors += 1
        self.first_error = self.first_error or f"{type(exc).__name__}: {exc}"[:300]

    async def _one(self, i: int, worker: int) -> None:
        try:
            if self.kind == "model":
                await self.calls[1 if i % STREAM_ONE_IN == 0 else 0](i)
            elif i % ABANDON_EVERY == 0:
                # a session of its own: opened, called once, never closed
                call = await loadgen.mcp_call(self.session, self.spec)
                await call(i)
            else:
                await self.calls[worker](i)
        except (loadgen.Wrong, TimeoutError, aiohttp.ClientError, AssertionError,
                KeyError) as exc:
            self._failed(exc)

    async def run(self, n: int) -> None:
        end = self.next_i + n

        async def worker(w: int) -> None:
            while self.next_i < end:
                i = self.next_i
                self.next_i += 1
                await self._one(i, w)

        await asyncio.gather(*(worker(w) for w in range(self.c)))


async def drive(target: Target, kind: str, calls: int, c: int, seconds: float,
                proc: psutil.Process, log: list[dict[str, Any]]) -> float:
    connector = aiohttp.TCPConnector(limit=c * 2)
    async with aiohttp.ClientSession(connector=connector,
                                     timeout=aiohttp.ClientTimeout(total=60)) as session:
        d = Driver(target, kind, c)
        await d.open(session)
        t0 = time.perf_counter()
        log.append(sample(proc, 0, t0, 0))
        while d.next_i < calls and time.perf_counter() - t0 < seconds:
            await d.run(min(SAMPLE_EVERY, calls - d.next_i))
            s = sample(proc, d.next_i, t0, d.errors)
            log.append(s)
            rate = s["calls"] / max(s["seconds"], 1e-9)
            print(f"{kind} {s['calls']:>9,} calls {s['seconds']:>7.0f} s {rate:6.0f}/s "
                  f"rss {s['rss_mb']:7.1f} MB fds {s['fds']:4} threads {s['threads']:3} "
                  f"errors {s['errors']}" + (f" ({d.first_error})" if d.errors else ""),
                  flush=True)
        return time.perf_counter() - t0


def summary(kind: str, c: int, log: list[dict[str, Any]], wall: float,
            cold: float, load: tuple[tuple[float, ...], tuple[float, ...]]) -> dict[str, Any]:
    end = log[-1]
    base = next((s for s in log if s["calls"] >= BASE_AT), None)
    out: dict[str, Any] = {
        "gateway": kind, "concurrency": c, "calls": end["calls"], "errors": end["errors"],
        "wall_s": round(wall, 1), "calls_per_s": round(end["calls"] / max(wall, 1e-9)),
        "cold_start_s": round(cold, 2), "start": log[0], "end": end,
        "loadavg_start_end": [list(load[0]), list(load[1])], "samples": log}
    if base is not None:
        out["at_100k"] = base
        out["rss_ratio"] = round(end["rss_mb"] / base["rss_mb"], 4)
        out["slope_mb_per_100k"] = slope_mb_per_100k(log)
    return out


def report(s: dict[str, Any]) -> str:
    end = s["end"]
    lines = [f"gateway {s['gateway']}  c={s['concurrency']}  calls {s['calls']:,}  "
             f"errors {s['errors']}  wall {s['wall_s']:.0f} s ({s['calls_per_s']}/s)  "
             f"cold start {s['cold_start_s']} s",
             f"  start : rss {s['start']['rss_mb']:.1f} MB fds {s['start']['fds']} "
             f"threads {s['start']['threads']}"]
    if "at_100k" in s:
        b = s["at_100k"]
        lines.append(f"  100k  : rss {b['rss_mb']:.1f} MB fds {b['fds']} "
                     f"threads {b['threads']}")
    lines.append(f"  end   : rss {end['rss_mb']:.1f} MB fds {end['fds']} "
                 f"threads {end['threads']}")
    if "at_100k" in s:
        slope = s["slope_mb_per_100k"]
        ok = s["rss_ratio"] <= 1.10 and end["fds"] <= s["at_100k"]["fds"] + 2 and \
            end["threads"] <= s["at_100k"]["threads"]
        lines.append(f"  ratio end/100k {s['rss_ratio']:.3f}  slope "
                     + (f"{slope:+.2f} MB/100k" if slope is not None else "n/a")
                     + f"  {'flat' if ok else 'NOT flat'}")
    lines.append(f"  load average {s['loadavg_start_end'][0]} -> {s['loadavg_start_end'][1]}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=1_000_000)
    ap.add_argument("--gateway", choices=["model", "mcp"], required=True)
    ap.add_argument("--concurrency", type=int, default=10)
    ap.add_argument("--seconds", type=float, default=3600.0, help="the run's bound")
    ap.add_argument("--heap-dump", type=Path, help="CORRAL_HEAP_DUMP for the daemon")
    ap.add_argument("--json", type=Path, help="the summary and every sample written here")
    args = ap.parse_args()
    # stopped by a signal, the finally below still ends every process started
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.heap_dump:
        args.heap_dump.mkdir(parents=True, exist_ok=True)
        _HeapEnv.extra = {"CORRAL_HEAP_DUMP": str(args.heap_dump.resolve())}
    work = Path(tempfile.mkdtemp(prefix="corral-bench-gwmem-"))
    mock: subprocess.Popen[bytes] | None = None
    target: Target | None = None
    load0 = os.getloadavg()
    try:
        upstream = ""
        if args.gateway == "model":
            mock = subprocess.Popen([PY, str(HERE / "mock_provider.py"), str(free_port())],
                                    env=ENV, stdout=subprocess.PIPE, start_new_session=True)
            assert mock.stdout is not None
            upstream = mock.stdout.readline().decode().strip()
            if not upstream:
                raise RuntimeError("the mock provider did not start")
        target = (ModelTarget if args.gateway == "model" else McpTarget)(work, upstream)
        target.start()
        proc = psutil.Process(target.procs[0].pid)
        log: list[dict[str, Any]] = []
        try:
            import uvloop

            wall = uvloop.run(drive(target, args.gateway, args.calls, args.concurrency,
                                    args.seconds, proc, log))
        except KeyboardInterrupt:
            wall = log[-1]["seconds"] if log else 0.0
            print("interrupted: the figures at the count reached", file=sys.stderr)
        if log:
            s = summary(args.gateway, args.concurrency, log, wall, target.cold_start_s,
                        (load0, os.getloadavg()))
            print(report(s), flush=True)
            if args.json:
                args.json.write_text(json.dumps(s, indent=1) + "\n")
    finally:
        if target is not None:
            target.stop()
        if mock is not None and mock.poll() is None:
            os.killpg(mock.pid, signal.SIGTERM)
            mock.wait(30)
        import shutil

        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
