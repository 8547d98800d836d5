"""What egress = "gateways" costs an agent's start (issue 75: at most 1.5x the same agent's
without it, warm).

    .venv/bin/python -m bench.bench_egress [-n 20]  -> bench/results/bench_egress.json

The real daemon in this process, three agents running bench/echo_agent.py: `plain` (no
sandbox), `sandboxed` (sandbox = "bwrap", network = "none") and `gateways` (egress =
"gateways", its TCP gateways relayed in by corral/supervisor/egressrelay.py). Each start is
a stop, then a start timed until the replica is Ready (its worker answered initialize);
the variants alternate start by start, so a change of load falls on all three. Warm: the
first round is thrown away (the page cache, bwrap's and the interpreter's files)."""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

from .harness import free_port, report, supervisor_section

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
VARIANTS = {"plain": "", "sandboxed": 'sandbox = "bwrap"\nnetwork = "none"',
            "gateways": 'egress = "gateways"'}


def config(scratch: Path) -> str:
    out = supervisor_section(scratch)
    for name, extra in VARIANTS.items():
        home = scratch / name
        home.mkdir()
        out += textwrap.dedent(f"""
            [agents.{name}]
            command = ["{PY}", "{ROOT}/bench/echo_agent.py"]
            env = {{ PYTHONPATH = "{ROOT}" }}
            cwd = "{home}"
            stop_timeout = 5.0
        """) + extra + "\n"
    return out + f'\n[gateway]\nlisten = "127.0.0.1:{free_port()}"\n'


async def measure(rounds: int) -> dict[str, Any]:
    from corral.daemon.daemon import Daemon
    from corral.supervisor import State

    serving = {State.READY, State.BUSY, State.IDLE}
    with tempfile.TemporaryDirectory(prefix="corral-bench-egress-") as tmp:
        scratch = Path(tmp)
        path = scratch / "corral.toml"
        path.write_text(config(scratch))
        d = Daemon(path)
        run = asyncio.ensure_future(d.run())
        try:
            await d.set_up.wait()
            took: dict[str, list[float]] = {n: [] for n in VARIANTS}
            for i in range(rounds + 1):
                for name in VARIANTS:
                    await d.sup.wait_state(name, serving, replica=0, timeout=30)
                    await d.sup.stop(name)
                    t0 = time.perf_counter()
                    d.sup.start(name)
                    await d.sup.wait_state(name, serving, replica=0, timeout=30)
                    if i:  # the first round warms up
                        took[name].append((time.perf_counter() - t0) * 1e3)
        finally:
            d.request_stop()
            await asyncio.wait_for(run, 30)
    medians = {n: statistics.median(v) for n, v in took.items()}
    return {"rounds": rounds, "start_ms_median": medians,
            "start_ms_p90": {n: sorted(v)[int(len(v) * 0.9) - 1] for n, v in took.items()},
            "gateways_over_plain": medians["gateways"] / medians["plain"],
            "gateways_over_sandboxed": medians["gateways"] / medians["sandboxed"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=20, help="timed starts per variant")
    args = ap.parse_args()
    report("bench_egress", asyncio.run(measure(args.n)))


if __name__ == "__main__":
    main()
