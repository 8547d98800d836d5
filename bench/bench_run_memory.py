"""What a workflow run's map items' outputs cost the daemon's memory (issue 52, item 2;
decision 444): a run of one map of ITEMS items, each answering SIZE bytes, then a small
step, against the daemon's resident memory before it, at its peak while the run runs,
and once it has ended; and `runs.get` of the ended run (its bytes and time, its default
page). The daemon is a real `corral daemon` process; its memory is its VmRSS.

    .venv/bin/python -m bench.bench_run_memory [--items 160] [--size 1048576]

Before decision 444 a run held every item's output in memory while it ran and
`runs.get` answered them all; since, each output is in the state database alone, read
back a page at a time. The tasks' own outputs are held as any task's are (the engine's
`keep_tasks_mb`, 32 MiB by default): the floor under both figures."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
MIB = 1024 * 1024

AGENT = """
from corral.worker import run

def handle(inp, ctx):
    return "x" * int(inp["bytes"]) + str(inp.get("i"))

run(handle)
"""


def config(d: Path) -> str:
    return textwrap.dedent(f"""
        [supervisor]
        socket = "{d}/corral.sock"
        state_dir = "{d}/state"
        log_dir = "{d}/logs"
        drain_timeout = 0

        [agents.big]
        command = ["{PY}", "{d}/big.py"]
        env = {{ PYTHONPATH = "{ROOT}" }}
        replicas = 4

        [workflows.big]
        [[workflows.big.steps]]
        name = "each"
        agent = "big"
        map = "$input.items"
        concurrency = 8
        input = {{ bytes = "$input.bytes", i = "$index" }}
        [[workflows.big.steps]]
        name = "done"
        agent = "big"
        input = {{ bytes = 10 }}
    """)


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def cli(d: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PY, "-m", "corral", "--socket", str(d / "corral.sock"), *args],
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=160)
    ap.add_argument("--size", type=int, default=MIB)
    args = ap.parse_args()
    d = Path(tempfile.mkdtemp(prefix="corral-bench-mem-"))
    (d / "big.py").write_text(AGENT)
    (d / "corral.toml").write_text(config(d))
    daemon = subprocess.Popen([PY, "-m", "corral", "daemon", "--config", str(d / "corral.toml")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        deadline = time.monotonic() + 60
        while cli(d, "status").returncode not in (0,):
            if time.monotonic() > deadline:
                raise SystemExit("the daemon never came up")
            time.sleep(0.2)
        # warm: one small run, so what the first run imports and builds is in the base
        warm = cli(d, "workflows", "run", "big", "--input",
                   json.dumps({"items": [1], "bytes": 10}), "--wait", "60", "--json")
        assert warm.returncode == 0, warm.stderr
        base = rss(daemon.pid)
        peak = [base]
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                peak[0] = max(peak[0], rss(daemon.pid))
                time.sleep(0.05)

        sampler = threading.Thread(target=sample)
        sampler.start()
        began = time.monotonic()
        ran = cli(d, "workflows", "run", "big", "--input",
                  json.dumps({"items": list(range(args.items)), "bytes": args.size}),
                  "--wait", "600", "--json")
        took = time.monotonic() - began
        done.set()
        sampler.join()
        assert ran.returncode == 0, ran.stderr
        run_id = json.loads(ran.stdout)["run_id"]
        after = rss(daemon.pid)
        began = time.monotonic()
        got = cli(d, "run-status", run_id, "--json")
        get_took = time.monotonic() - began
        assert got.returncode == 0, got.stderr
        view = json.loads(got.stdout)
        after_get = rss(daemon.pid)
        print(f"{args.items} items of {args.size} bytes, the run {took:.1f}s")
        print(f"daemon RSS: before {base / MIB:.0f} MiB, peak while it ran "
              f"+{(peak[0] - base) / MIB:.0f} MiB, once it ended +{(after - base) / MIB:.0f} "
              f"MiB, after runs.get +{(after_get - base) / MIB:.0f} MiB")
        print(f"runs.get (its default page): {len(got.stdout) / MIB:.1f} MiB in "
              f"{get_took:.2f}s, {len(view['steps'])} rows"
              + (f", next page at {view['steps_next']}" if "steps_next" in view else ""))
    finally:
        daemon.terminate()
        daemon.wait(30)
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
