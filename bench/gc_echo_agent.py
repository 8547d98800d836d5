"""An echo agent that times every pass of its cyclic garbage collector and, every
GC_REPORT_EVERY tasks, writes `gc: TASKS GEN2_PASSES GEN2_MAX_MS GEN2_TOTAL_MS` to stderr
(bench/bench_gc_tail.py reads it)."""

import gc
import os
import sys
import time

from corral.worker import run

EVERY = int(os.environ.get("GC_REPORT_EVERY", "500"))
full: list[float] = []
started = [0.0]
done = [0]


def timed(phase: str, info: dict[str, int]) -> None:
    if info["generation"] != 2:
        return
    if phase == "start":
        started[0] = time.perf_counter()
    else:
        full.append((time.perf_counter() - started[0]) * 1e3)


def echo(task: object, ctx: object) -> object:
    done[0] += 1
    if done[0] % EVERY == 0:
        print(f"gc: {done[0]} {len(full)} {max(full, default=0):.2f} {sum(full):.1f}",
              file=sys.stderr, flush=True)
    return task


gc.callbacks.append(timed)
run(echo)
