"""bench/gateways (issue 77): corral's gateways beside their peers, the shape of GoModel's
published harness, in one command.

    bench/gateways/run.sh [--full] [--only model|mcp] [--skip NAME,...] [--loadgen c|py]

Model gateways: an instant mock OpenAI provider (mock_provider.py) in a process of its
own, the load generator in another (--loadgen c, the default: loadgen.c, one epoll thread,
~11-14 us of CPU a call; py: loadgen.py, aiohttp, 125-150 us, more than the gateway it
measures, on the same two cores), N Chat Completions requests per workload: concurrency
10 and 50, whole and streamed, the targets interleaved within each workload (their order
turned each trial): direct to the mock (the floor), corral's model gateway, Portkey's
gateway, LiteLLM's proxy.
MCP gateways: tools/call of the echo tool of one stdio server (bench/min_mcp_server.py)
over Streamable HTTP, concurrency 10 and 50: corral's gateway, ContextForge's (through
its translate bridge, as it reaches a stdio server), and that bridge alone.

Quick (default): 2,000 requests per workload, one trial; --full: 8,000, two trials. A
run of one workload on one target begins no request after 60 s (--full: 300 s), so a
target far slower than the rest is measured on fewer (the table's `answered`).
Per target: req/s, p50/p99 latency, first chunk (streamed), the peak RSS of its process
tree (sampled every 100 ms over its start and its loads) and its cold start (its first
process started to its first right answer). Peers are installed once from pins.txt
(peers.py); one that does not install or start is said so and the rest run. Writes
bench/results/gateways.json and prints the table (markdown).

How each is set (targets.py): corral from this tree, its caller a replica running no
task (token_agent.py's token: calls of no task, not journaled); Portkey with the mock as
its custom host; LiteLLM one worker, no database; ContextForge one uvicorn worker on
SQLite, its rate limits off (corral has none set either), the bridge registered through
its API; translate `--stateless`. `errors` counts every answer that was not the right
one (a failed status, a stream without the echo, another call's tool result).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from . import cload, hey, loadgen, peers
from .targets import (
    ENV,
    HERE,
    PY,
    ROOT,
    ContextForge,
    CorralMcp,
    CorralModel,
    Direct,
    LiteLLM,
    Portkey,
    Target,
    Translate,
    free_port,
)

LOADGENS = {"c": "loadgen.c (C, one epoll thread)", "py": "loadgen.py (aiohttp, uvloop)",
            "hey": "hey (Go; whole model calls only)"}
MODEL_WORKLOADS = [(10, False), (10, True), (50, False), (50, True)]
MCP_WORKLOADS = [10, 50]
NEEDS = {"portkey": "portkey", "litellm": "litellm", "contextforge": "contextforge",
         "contextforge translate": "contextforge"}


def percentile(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))] if s else float("nan")


def load(spec: dict[str, Any], gen: str = "c") -> dict[str, Any]:
    """The figures of load generator `gen` (c: loadgen.c, py: loadgen.py), written to a
    file (its stdout, a pipe, was seen broken at 64 and 128 KiB under load); hey's
    CSV, read from its stdout."""
    if gen == "hey":
        return load_hey(spec)
    with tempfile.TemporaryDirectory(prefix="corral-loadgen-") as tmp:
        work = Path(tmp)
        try:
            cmd = cload.command(spec, work) if gen == "c" else \
                [PY, str(HERE / "loadgen.py"), json.dumps(spec), str(work / "out.json")]
        except (loadgen.Wrong, aiohttp.ClientError, TimeoutError, OSError) as exc:
            return failed(spec["n"], f"its MCP session did not open: {exc}")
        r = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=1800)
        if r.returncode:
            return failed(spec["n"], f"the load generator failed: {r.stderr[-400:]}")
        out: dict[str, Any] = json.loads((work / "out.json").read_text())
        return out


def load_hey(spec: dict[str, Any]) -> dict[str, Any]:
    try:
        cmd = hey.command(spec)
    except (ValueError, RuntimeError) as exc:
        return failed(spec["n"], str(exc))
    started = time.monotonic()
    r = subprocess.run(cmd, env=ENV, capture_output=True, text=True,
                       timeout=1800)
    wall = time.monotonic() - started
    if r.returncode:
        return failed(spec["n"], f"hey failed: {r.stderr[-400:]}")
    return hey.figures(r.stdout, wall)


def failed(n: int, why: str) -> dict[str, Any]:
    return {"wall_s": 0.0, "latencies": [], "first_chunks": [], "errors": n,
            "first_error": why}


def start_all(kinds: list[type[Target]], work: Path, upstream: str,
              skip: set[str], notes: list[str]) -> list[Target]:
    """Each target started in turn (the others idle meanwhile), its cold start timed;
    one that cannot be installed or started is said and left out."""
    up = []
    for kind in kinds:
        name = kind.name
        if name in skip:
            notes.append(f"{name}: skipped (--skip)")
            continue
        need = NEEDS.get(name)
        if need and peers.install(need) is None:
            notes.append(f"{name}: did not install here (see ~/.cache/corral/bench/*.log)")
            continue
        target = kind(work, upstream)
        try:
            target.start()
        except (RuntimeError, OSError) as exc:
            target.stop()
            notes.append(f"{name}: did not start: {exc}")
            print(f"{name}: did not start: {exc}", file=sys.stderr)
            continue
        print(f"{name} {target.version}: up in {target.cold_start_s:.2f} s", file=sys.stderr)
        up.append(target)
    return up


def measure(targets: list[Target], workloads: list[dict[str, Any]], n: int, warmup: int,
            trials: int, seconds: float, gen: str) -> dict[tuple[str, str], dict[str, Any]]:
    """Each workload run on each target in turn, trial after trial (the targets' order
    turned each trial, so that none is always first after another's load)."""
    got: dict[tuple[str, str], dict[str, Any]] = {}
    for trial in range(trials):
        turn = trial % len(targets)
        order = targets[turn:] + targets[:turn]
        for w in workloads:
            for t in order:
                spec = {**t.spec(), **w["spec"], "n": n, "warmup": warmup,
                        "seconds": seconds}
                with t.measuring() as rss:
                    out = load(spec, gen)
                t.peak_rss = max(t.peak_rss, rss.peak)
                into = got.setdefault((w["name"], t.name), {
                    "wall_s": 0.0, "latencies": [], "first_chunks": [], "errors": 0,
                    "first_error": None})
                into["wall_s"] += out["wall_s"]
                into["latencies"] += out["latencies"]
                into["first_chunks"] += out["first_chunks"]
                into["errors"] += out["errors"]
                into["first_error"] = into["first_error"] or out["first_error"]
                print(f"  trial {trial + 1} {w['name']:<14} {t.name:<24} "
                      f"{len(out['latencies']) / max(out['wall_s'], 1e-9):8.0f} req/s "
                      f"errors {out['errors']} reconnects {out.get('reconnects', '-')}",
                      file=sys.stderr)
    return got


def rows(targets: list[Target], got: dict[tuple[str, str], dict[str, Any]],
         workloads: list[dict[str, Any]], gen: str) -> list[dict[str, Any]]:
    out = []
    for w in workloads:
        for t in targets:
            m = got[(w["name"], t.name)]
            lat, first = m["latencies"], m["first_chunks"]
            out.append({
                "workload": w["name"], "target": t.name, "version": t.version,
                "answered": len(lat),
                "req_per_s": round(len(lat) / m["wall_s"]) if m["wall_s"] else 0,
                "p50_ms": round(percentile(lat, 0.5) * 1e3, 2),
                "p99_ms": round(percentile(lat, 0.99) * 1e3, 2),
                "first_chunk_p50_ms": round(percentile(first, 0.5) * 1e3, 2)
                if first else None,
                "errors": m["errors"], "first_error": m["first_error"],
                "peak_rss_mb": round(t.peak_rss / 2**20, 1) if t.procs else None,
                "cold_start_s": round(t.cold_start_s, 2), "loadgen": gen})
    return out


def table(all_rows: list[dict[str, Any]], gen: str) -> str:
    head = ("| workload | target | version | answered | req/s | p50 ms | p99 ms "
            "| first chunk p50 ms | errors | peak RSS MB | cold start s |")
    lines = [f"load generator: {LOADGENS[gen]}", "", head, "|" + "---|" * 11]
    for r in all_rows:
        first = "" if r["first_chunk_p50_ms"] is None else f"{r['first_chunk_p50_ms']:.2f}"
        rss = "n/a" if r["peak_rss_mb"] is None else f"{r['peak_rss_mb']:.0f}"
        lines.append(f"| {r['workload']} | {r['target']} | {r['version']} | {r['answered']} "
                     f"| {r['req_per_s']} "
                     f"| {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {first} | {r['errors']} "
                     f"| {rss} | {r['cold_start_s']:.2f} |")
    return "\n".join(lines)


def model_phase(work: Path, n: int, warmup: int, trials: int, seconds: float,
                skip: set[str], notes: list[str], gen: str) -> list[dict[str, Any]]:
    port = free_port()
    mock = subprocess.Popen([PY, str(HERE / "mock_provider.py"), str(port)], env=ENV,
                            stdout=subprocess.PIPE, start_new_session=True)
    targets: list[Target] = []
    try:
        assert mock.stdout is not None
        upstream = mock.stdout.readline().decode().strip()
        targets = start_all([Direct, CorralModel, Portkey, LiteLLM], work, upstream, skip,
                            notes)
        workloads = [{"name": f"chat c{c} {'stream' if s else 'whole'}",
                      "spec": {"c": c, "stream": s}} for c, s in MODEL_WORKLOADS]
        got = measure(targets, workloads, n, warmup, trials, seconds, gen)
        return rows(targets, got, workloads, gen)
    finally:
        for t in targets:
            t.stop()
        os.killpg(mock.pid, signal.SIGTERM)
        mock.wait(30)


def mcp_phase(work: Path, n: int, warmup: int, trials: int, seconds: float,
              skip: set[str], notes: list[str], gen: str) -> list[dict[str, Any]]:
    targets: list[Target] = []
    try:
        targets = start_all([CorralMcp, ContextForge, Translate], work, "", skip, notes)
        workloads = [{"name": f"mcp c{c}", "spec": {"c": c}} for c in MCP_WORKLOADS]
        got = measure(targets, workloads, n, warmup, trials, seconds, gen)
        return rows(targets, got, workloads, gen)
    finally:
        for t in targets:
            t.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--full", action="store_true", help="8,000 requests a workload, 2 trials")
    ap.add_argument("--only", choices=["model", "mcp"])
    ap.add_argument("--skip", default="", help="targets left out, by name, comma-separated")
    ap.add_argument("-n", type=int, help="requests a workload (overrides the mode's)")
    ap.add_argument("--loadgen", choices=sorted(LOADGENS), default="c",
                    help="the load generator: loadgen.c (default) or loadgen.py")
    args = ap.parse_args()
    # a run stopped (timeout, ^C) still ends every process it started: its finally blocks
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    n, trials, seconds = (8000, 2, 300.0) if args.full else (2000, 1, 60.0)
    n = args.n or n
    warmup = max(50, n // 10)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    work = Path(tempfile.mkdtemp(prefix="corral-bench-gateways-"))
    notes: list[str] = []
    started, load_start = time.time(), os.getloadavg()
    all_rows: list[dict[str, Any]] = []
    try:
        if args.only in (None, "model"):
            all_rows += model_phase(work, n, warmup, trials, seconds, skip, notes,
                                    args.loadgen)
        if args.only in (None, "mcp"):
            all_rows += mcp_phase(work, n, warmup, trials, seconds, skip, notes,
                                  args.loadgen)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {
        "command": "bench/gateways/run.sh " + " ".join(sys.argv[1:]),
        "loadgen": LOADGENS[args.loadgen],
        "requests_per_workload": n, "warmup": warmup, "trials": trials,
        "seconds_per_run_at_most": seconds,
        "machine": f"{os.cpu_count()} cores, {platform.platform()}",
        "loadavg_at_start_and_end": [load_start, os.getloadavg()],
        "seconds": round(time.time() - started), "notes": notes, "rows": all_rows}
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "gateways.json").write_text(json.dumps(result, indent=1) + "\n")
    print(table(all_rows, args.loadgen))
    for note in notes:
        print(f"- {note}")


if __name__ == "__main__":
    main()
