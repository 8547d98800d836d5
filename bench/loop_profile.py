"""The daemon with its event loop profiled, for bench_scale.py's `--profile DIR`.

    python -m bench.loop_profile --out DIR [--slow-ms 20] -- --config corral.toml

Runs `corral daemon` as run_daemon does, with two instruments on the loop's thread:
- cProfile of the main thread (the loop; the journal and spawn threads are not in it);
- every callback of the loop that runs longer than --slow-ms, with its duration and
  what it was (asyncio's `slow_callback_duration` without the rest of debug mode). This
  needs the standard asyncio loop (uvloop's callbacks are C); the Python code they run is
  the same, so what is slow under one is slow under the other.
SIGUSR1 ends a phase: the profile and the slow callbacks so far are written as
DIR/PHASE.prof and DIR/PHASE.slow.txt and the counts start again; phases are named by
the lines of DIR/phases (one per SIGUSR1, the last one at exit).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import signal
import time
from pathlib import Path
from typing import Any


def label(handle: asyncio.events.Handle) -> str:
    """What a callback is: the coroutine of a task's step, else the function's name."""
    cb = handle._callback
    owner = getattr(cb, "__self__", None)
    if isinstance(owner, asyncio.Task):
        coro = owner.get_coro()
        return f"task {getattr(coro, '__qualname__', coro)}"
    if isinstance(owner, asyncio.Future):
        return "future callbacks"
    name = getattr(cb, "__qualname__", None) or getattr(getattr(cb, "func", None),
                                                        "__qualname__", None)
    return name or repr(cb)[:80]


def stall_sampler(args: argparse.Namespace) -> None:
    """Under uvloop (whose callbacks cannot be wrapped): a timer on the loop marks every
    5 ms that the loop turns; a thread looks every 1 ms, and while the mark is older than
    --slow-ms takes the main thread's stack. Each stall is written with how long it was
    and the stacks seen during it, most frequent first: where the loop spent it."""
    import collections
    import sys
    import threading
    import traceback

    import uvloop

    from corral.daemon.daemon import Daemon
    from corral.supervisor.caps import disable_own_core_dumps, raise_own_open_files

    limit = args.slow_ms / 1000
    phases = args.phases.split(",")
    main_id = threading.get_ident()
    mark = [time.perf_counter()]
    stalls: list[tuple[float, float, collections.Counter[str]]] = []
    current: list[Any] = [None]  # [start, Counter] of the stall in progress
    lock = threading.Lock()

    def sampler() -> None:
        while True:
            time.sleep(0.001)
            now = time.perf_counter()
            late = now - mark[0]
            with lock:
                if late > limit:
                    frame = sys._current_frames().get(main_id)
                    stack = traceback.extract_stack(frame, limit=12) if frame else []
                    key = " < ".join(f"{Path(f.filename).name}:{f.lineno} {f.name}"
                                     for f in reversed(stack))
                    if current[0] is None:
                        current[0] = [mark[0], collections.Counter()]
                    current[0][1][key] += 1
                elif current[0] is not None:
                    start, seen = current[0]
                    stalls.append((time.time(), now - start, seen))
                    current[0] = None

    import gc

    gc_started = [0.0]
    collections_seen: list[tuple[float, int, float, int]] = []

    def on_gc(phase: str, info: dict[str, int]) -> None:
        # the cyclic collector's passes: a full one over a large heap is a stall of its own
        if phase == "start":
            gc_started[0] = time.perf_counter()
        else:
            took = time.perf_counter() - gc_started[0]
            if took > limit / 4:
                collections_seen.append((time.time(), info["generation"], took,
                                         info["collected"]))

    gc.callbacks.append(on_gc)

    def tick(loop: asyncio.AbstractEventLoop) -> None:
        mark[0] = time.perf_counter()
        loop.call_later(0.005, tick, loop)

    def dump(*_: Any) -> None:
        name = phases.pop(0) if phases else f"phase{os.getpid()}"
        with lock:
            done = sorted(stalls, key=lambda s: -s[1])
            stalls.clear()
        with open(args.out / f"{name}.stalls.txt", "w") as f:
            f.write(f"{len(done)} stalls of the loop over {args.slow_ms:g} ms\n")
            for when, length, seen in done:
                f.write(f"{length * 1000:8.1f} ms at {when:.3f}, {sum(seen.values())} "
                        "samples:\n")
                for key, n in seen.most_common(6):
                    f.write(f"    {n:4d} x {key[:900]}\n")
            f.write(f"garbage collections over {args.slow_ms / 4:g} ms: "
                    f"{len(collections_seen)}\n")
            for when, gen, took, collected in collections_seen:
                f.write(f"{took * 1000:8.1f} ms at {when:.3f}: generation {gen}, "
                        f"{collected} collected\n")
            collections_seen.clear()
        census(name)

    def census(name: str) -> None:
        # what the collector walks over in a full pass, by type, and how long one takes
        # now (the pass itself stalls the loop: a profile's figure, not a bench's)
        objs = gc.get_objects()
        kinds = collections.Counter(type(o).__qualname__ for o in objs)
        total = len(objs)
        del objs
        t0 = time.perf_counter()
        gc.collect()
        took = time.perf_counter() - t0
        with open(args.out / f"{name}.census.txt", "w") as f:
            f.write(f"{total} tracked objects; a full collection took "
                    f"{took * 1000:.1f} ms; counts {gc.get_count()}, "
                    f"frozen {gc.get_freeze_count()}\n")
            for kind, n in kinds.most_common(60):
                f.write(f"{n:8d} {kind}\n")

    async def run() -> int:
        loop = asyncio.get_running_loop()
        tick(loop)
        loop.add_signal_handler(signal.SIGUSR1, dump)  # uvloop: not signal.signal
        return await Daemon(args.config, freeze_heap=True).run()

    disable_own_core_dumps()
    raise_own_open_files()
    threading.Thread(target=sampler, daemon=True).start()
    try:
        uvloop.run(run())
    finally:
        dump()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--slow-ms", type=float, default=20.0)
    ap.add_argument("--phases", default="start,idle,stop")
    ap.add_argument("--uvloop", action="store_true",
                    help="uvloop, and a sampler of the loop's stalls instead of cProfile")
    ap.add_argument("--config", required=True, type=Path)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.uvloop:
        return stall_sampler(args)
    phases = args.phases.split(",")
    # turns of the loop whose callbacks took longer than --slow-ms in all: (when, busy
    # seconds, callbacks run, the labels that took most of it)
    slow: list[tuple[float, float, int, list[tuple[str, int, float]]]] = []
    limit = args.slow_ms / 1000
    turn: dict[str, list[float]] = {}  # label -> [count, seconds] in the current turn
    handle_run = asyncio.events.Handle._run

    def timed_run(self: asyncio.events.Handle) -> None:
        t0 = time.perf_counter()
        handle_run(self)
        entry = turn.setdefault(label(self), [0, 0.0])
        entry[0] += 1
        entry[1] += time.perf_counter() - t0

    run_once = asyncio.base_events.BaseEventLoop._run_once

    def timed_run_once(self: asyncio.base_events.BaseEventLoop) -> None:
        turn.clear()
        run_once(self)
        busy = sum(t for _, t in turn.values())
        if busy > limit:
            top = sorted(((k, int(n), t) for k, (n, t) in turn.items()), key=lambda x: -x[2])
            slow.append((time.time(), busy, sum(int(n) for n, _ in turn.values()), top[:8]))

    asyncio.events.Handle._run = timed_run  # type: ignore[method-assign]
    asyncio.base_events.BaseEventLoop._run_once = timed_run_once  # type: ignore[method-assign]
    prof = cProfile.Profile()

    def dump(*_: Any) -> None:
        prof.disable()
        name = phases.pop(0) if phases else f"phase{os.getpid()}"
        prof.dump_stats(args.out / f"{name}.prof")
        with open(args.out / f"{name}.slow.txt", "w") as f:
            f.write(f"{len(slow)} turns of the loop over {args.slow_ms:g} ms\n")
            for when, busy, count, top in sorted(slow, key=lambda s: -s[1]):
                f.write(f"{busy * 1000:8.1f} ms  {when:.3f}  {count} callbacks:\n")
                for what, n, t in top:
                    f.write(f"      {t * 1000:7.1f} ms  {n:5d} x {what}\n")
        with open(args.out / f"{name}.top.txt", "w") as f:
            pstats.Stats(str(args.out / f"{name}.prof"), stream=f).sort_stats(
                "cumulative").print_stats(60)
            pstats.Stats(str(args.out / f"{name}.prof"), stream=f).sort_stats(
                "tottime").print_stats(40)
        slow.clear()
        prof.clear()
        prof.enable()

    signal.signal(signal.SIGUSR1, dump)
    from corral.daemon.daemon import Daemon
    from corral.supervisor.caps import disable_own_core_dumps, raise_own_open_files

    disable_own_core_dumps()
    raise_own_open_files()  # as run_daemon: a thousand agents need their fds
    prof.enable()
    try:
        asyncio.run(Daemon(args.config, freeze_heap=True).run())
    finally:
        dump()


if __name__ == "__main__":
    main()
