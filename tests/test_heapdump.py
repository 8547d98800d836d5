"""The heap-dump debug hook (corral/daemon/heapdump.py): nothing without its variable;
with it, a snapshot and its account every period, and two of them compared name what
grew (the soak's hunt for what grows, bench/RESULTS.md)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import tracemalloc
from pathlib import Path

import pytest

from bench import soak_heap
from corral.daemon import heapdump

from . import heap_grower
from .conftest import ROOT


def _line_of(text: str) -> int:
    """The line of tests/heap_grower.py that `text` begins (after its indent)."""
    lines = Path(heap_grower.__file__).read_text().splitlines()
    return next(i for i, line in enumerate(lines, 1) if line.strip().startswith(text))


def test_without_the_variable_nothing_traces_or_runs() -> None:
    before = threading.active_count()
    with heapdump.from_env({}) as thread:
        assert thread is None
        assert not tracemalloc.is_tracing()
        assert threading.active_count() == before


@pytest.mark.deadline(60)
def test_dumps_come_every_period_and_their_comparison_names_what_grew(
        tmp_path: Path) -> None:
    # dumps are named by the second: a period of more than one. One frame a block: what
    # grew is named by its innermost line all the same, where a snapshot of the default's
    # frames took several times the CPU, beside a busy loop per core past the grower's wait
    env = {heapdump.ENV_DIR: str(tmp_path / "heap"), heapdump.ENV_EVERY: "1.1",
           heapdump.ENV_FRAMES: "1"}
    # in a process of its own (tests/heap_grower.py says why)
    run = subprocess.run([sys.executable, "-m", "tests.heap_grower", json.dumps(env)],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    said = json.loads(run.stdout)
    assert said["tracing"] and said["kept"] == 5000
    assert not said["thread_alive"]  # the hook's thread ends with it
    first, _, second = (Path(p) for p in said["dumps"])
    account = json.loads(second.with_suffix(".json").read_text())
    assert account["rss"] > 0 and account["traced"] > 0
    assert account["malloc"] is None or account["malloc"]["in_use"] > 0
    assert account["types"]["Grows"] == 5000
    lines = heapdump.compare(first, second)
    assert lines[0] == f"{first.name} -> {second.name}: top 25 by traceback"
    # the list's 5,000 instances are the largest growth, traced to the grower's line
    assert any("heap_grower.py" in line for line in lines[1:12]), lines[:12]
    grew = next(line for line in lines if line.startswith("types that grew: "))
    assert "Grows +5000" in grew, grew
    # the blocks glibc holds for Python, apart from pymalloc's: the 100 blocks of 4 KiB
    # kept between the two, counted and traced to their line (bench/soak_heap.py's split of
    # glibc's bytes in use into Python's and C code's)
    dumps = [json.loads(p.with_suffix(".json").read_text()) for p in (first, second)]
    soak_heap.traced(first.parent, dumps)
    assert said["large"] == 100
    at, before, after = soak_heap.large_grew(dumps[0], dumps[1], top=1)[0]
    assert at.endswith(f"heap_grower.py:{_line_of('large += ')}"), at
    assert after - before >= 100 * heap_grower.LARGE  # (and the list that holds them)
    # and the account of them, Python's share of glibc's bytes in use
    python = [soak_heap._python_large(d) or 0 for d in dumps]
    assert python[1] - python[0] >= 100 * heap_grower.LARGE / soak_heap.MIB


@pytest.mark.deadline(60)
def test_no_frames_writes_the_accounts_alone_and_traces_nothing(tmp_path: Path) -> None:
    """CORRAL_HEAP_FRAMES=0: a run measured as it runs, untraced (tracing costs memory and
    time), its accounts still written: RSS, glibc's, SQLite's and the objects by type;
    with CORRAL_HEAP_TRIM=1 the RSS after a malloc_trim too."""
    import sqlite3

    db = sqlite3.connect(":memory:")  # SQLite's account counts every connection's bytes
    db.execute("CREATE TABLE t (x)")
    env = {heapdump.ENV_DIR: str(tmp_path), heapdump.ENV_EVERY: "0.2",
           heapdump.ENV_FRAMES: "0", heapdump.ENV_TRIM: "1"}
    with heapdump.from_env(env) as thread:
        assert thread is not None and not tracemalloc.is_tracing()
        deadline = time.monotonic() + 30
        while not list(tmp_path.glob("heap-*.json")) and time.monotonic() < deadline:
            time.sleep(0.05)
    db.close()
    dumps = list(tmp_path.glob("heap-*.json"))
    assert dumps and not list(tmp_path.glob("*.tracemalloc"))
    account = json.loads(dumps[0].read_text())
    assert account["traced"] is None and account["rss"] > 0
    assert account["sqlite"] is None or account["sqlite"]["used"] > 0
    # glibc's arenas one by one, the main one (the brk heap) first, with its free chunks
    # by size: [from, to, count, bytes]
    heaps = (account["malloc"] or {}).get("heaps")
    if heaps is not None:
        assert heaps[0]["nr"] == 0 and heaps[0]["system"] > 0
        assert all(lo <= hi and n >= 0 and size >= 0 for h in heaps
                   for lo, hi, n, size in h["sizes"])
    # malloc_trim gave back what glibc kept free: the RSS after it is no more than just
    # before it (the dump's own readers, between its first RSS and the trim, allocate)
    trimmed = account["rss_trimmed"]
    assert trimmed is None or 0 < trimmed <= account["rss_before_trim"]


def test_the_account_splits_the_rss_by_mapping_and_counts_pymallocs_arenas() -> None:
    """What the RSS is made of (glibc's heaps, threads' stacks, pymalloc's arenas among the
    other anonymous mappings, files) and pymalloc's own account, which neither glibc's
    nor the traced total shows: small objects kept alive show in its live blocks."""
    before = heapdump._pymalloc()
    kept = [object() for _ in range(200_000)]  # 16 bytes each, in pymalloc's pools
    after = heapdump._pymalloc()
    maps = heapdump._maps()
    assert len(kept) == 200_000
    assert maps["file"] > 0 and maps["main_stack"] > 0
    # the split is of the same RSS: within what the process mapped between the reads
    assert abs(sum(maps.values()) - heapdump._rss()) < 0.1 * heapdump._rss()
    if before is None or after is None:  # a build without pymalloc (PYTHONMALLOC=malloc)
        return
    live = after["bytes in allocated blocks"] - before["bytes in allocated blocks"]
    assert live >= 200_000 * 16, (before, after)
    assert after["bytes in arenas"] >= after["bytes in allocated blocks"]
    assert after["classes"]["16"][1] >= 200_000  # blocks in use of the 16-byte class


def test_a_threads_stack_is_counted_as_one() -> None:
    """A thread's stack (a guard page below it) is told from the other mappings."""
    ready, done = threading.Event(), threading.Event()

    def waits() -> None:
        ready.set()
        done.wait(30)

    thread = threading.Thread(target=waits)
    thread.start()
    try:
        assert ready.wait(30)
        maps = heapdump._maps()
        assert maps.get("thread_stacks", 0) > 0, maps
    finally:
        done.set()
        thread.join(30)
