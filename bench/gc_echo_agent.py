"""An echo agent that times every pass of its cyclic garbage collector and, every
GC_REPORT_EVERY tasks, writes `gc: TASKS GEN2_PASSES GEN2_MAX_MS GEN2_TOTAL_MS` to stderr
(bench/bench_gc_tail.py reads it, and times its own process's passes with `Gen2Passes`)."""

import gc
import os
import sys
import time


class Gen2Passes:
    """A gc callback that keeps how long each full pass (generation 2) took, in ms."""

    def __init__(self) -> None:
        self.ms: list[float] = []
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if info["generation"] != 2:
            return
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.ms.append((time.perf_counter() - self._started) * 1e3)


if __name__ == "__main__":
    from corral.worker import run

    EVERY = int(os.environ.get("GC_REPORT_EVERY", "500"))
    full = Gen2Passes()
    done = [0]

    def echo(task: object, ctx: object) -> object:
        done[0] += 1
        if done[0] % EVERY == 0:
            ms = full.ms
            print(f"gc: {done[0]} {len(ms)} {max(ms, default=0):.2f} {sum(ms):.1f}",
                  file=sys.stderr, flush=True)
        return task

    gc.callbacks.append(full)
    run(echo)
