"""A process of its own for tests/test_heapdump.py: the hook on, per the variables given as
JSON in argv[1]; the first dump waited for, then instances of a type of this module's made
(and blocks past pymalloc's),
then the next two dumps; the three dumps' paths printed as a JSON line.

A process of its own, not the test's: each dump walks its process's whole heap, and a
pytest worker that collected the suite holds a heap many times this one's (its third
dump took over 30 s beside a busy loop per core)."""

from __future__ import annotations

import json
import sys
import time
import tracemalloc
from pathlib import Path

from corral.daemon import heapdump

LARGE = 4096  # a kept block's bytes: past pymalloc's largest, so glibc's


class Grows:
    """What the compared dumps are to find: instances of a type of its own."""


def next_dump(where: Path, seen: set[Path]) -> Path:
    """The next snapshot written whole (its json comes after it), waited for."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        new = [p for p in where.glob("heap-*.tracemalloc")
               if p not in seen and p.with_suffix(".json").exists()]
        if new:
            return min(new, key=lambda p: int(p.stem.split("-")[1]))
        time.sleep(0.05)
    raise SystemExit(f"no dump in {where} within 30 s")


def main() -> None:
    env = json.loads(sys.argv[1])
    where = Path(env[heapdump.ENV_DIR])
    kept: list[Grows] = []
    large: list[bytearray] = []  # blocks past pymalloc's, from glibc
    with heapdump.from_env(env) as thread:
        assert thread is not None
        tracing = tracemalloc.is_tracing()
        first = next_dump(where, set())
        kept += [Grows() for _ in range(5000)]
        large += [bytearray(LARGE) for _ in range(100)]
        # the next dump may have begun while they were made: the one after it
        between = next_dump(where, {first})
        second = next_dump(where, {first, between})
    thread.join(5)
    print(json.dumps({"dumps": [str(first), str(between), str(second)],
                      "kept": len(kept), "large": len(large), "tracing": tracing,
                      "thread_alive": thread.is_alive()}))


if __name__ == "__main__":
    main()
