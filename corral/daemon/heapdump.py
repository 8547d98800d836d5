"""A debug hook, off unless its variable is set: where a long-running daemon's memory goes
(the variables: docs/operations.md, "Troubleshooting").

`python -m corral.daemon.heapdump OLD NEW`: what grew between two dumps (RSS rising while
the traced total and glibc's bytes in use stay flat is the allocator settling, no leak);
bench/soak_heap.py reads a series of them.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import os
import re
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

ENV_DIR = "CORRAL_HEAP_DUMP"
ENV_EVERY = "CORRAL_HEAP_DUMP_EVERY"
ENV_FRAMES = "CORRAL_HEAP_FRAMES"
ENV_TRIM = "CORRAL_HEAP_TRIM"
KEEP_TYPES = 150  # the types a dump's json counts, the most numerous first


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


def _mallinfo() -> dict[str, int] | None:
    """glibc's account of its heap (None elsewhere)."""
    import ctypes.util  # (here and in a dump's other readers: a daemon's start pays none)

    name = ctypes.util.find_library("c")
    try:
        call = ctypes.CDLL(name).mallinfo2
    except (OSError, AttributeError, TypeError):
        return None
    call.restype = _MallInfo2
    info = call()
    return {"arena": info.arena, "in_use": info.uordblks, "free": info.fordblks,
            "mmapped": info.hblkhd, "top": info.keepcost, "heaps": _malloc_heaps()}


def _written_by(prefix: str, write: Callable[[int], object]) -> tuple[object, str] | None:
    """What a C function writes to a `FILE *` it is given (malloc_info's XML, the
    interpreter's allocator stats), read back: its return and the text; None when libc
    gives no stream."""
    try:
        libc = ctypes.CDLL(None)
        fopen, fclose = libc.fopen, libc.fclose
    except (OSError, AttributeError):
        return None
    fclose.argtypes = [ctypes.c_void_p]
    fopen.restype = ctypes.c_void_p
    fd, name = tempfile.mkstemp(prefix=prefix)
    os.close(fd)
    try:
        stream = fopen(name.encode(), b"w")
        if not stream:
            return None
        ran = write(stream)
        fclose(stream)
        with open(name) as f:  # (not a Path: see `write`)
            return ran, f.read()
    finally:
        os.unlink(name)


def _malloc_heaps() -> list[dict[str, Any]] | None:
    """Per glibc arena (the main one, on the brk heap, first): its bytes from the system and
    its free chunks by size, `[from, to, count, bytes]` (malloc_info's XML), so that a
    heap's holes are seen by size and by which threads' arena holds them."""
    import xml.etree.ElementTree as ET

    try:
        info = ctypes.CDLL(None).malloc_info
    except (OSError, AttributeError):
        return None
    info.argtypes = [ctypes.c_int, ctypes.c_void_p]
    written = _written_by("corral-malloc-", lambda stream: info(0, stream))
    if written is None:
        return None
    try:
        root = ET.fromstring(written[1])
    except ET.ParseError:
        return None
    heaps = []
    for heap in root.iter("heap"):
        sizes = [[int(s.get("from", 0)), int(s.get("to", 0)), int(s.get("count", 0)),
                  int(s.get("total", 0))] for s in heap.iter("size")]
        system = {s.get("type"): int(s.get("size", 0)) for s in heap.iter("system")}
        free = {t.get("type"): int(t.get("size", 0)) for t in heap.iter("total")}
        heaps.append({"nr": int(heap.get("nr", 0)), "system": system.get("current", 0),
                      "free_fast": free.get("fast", 0), "free_rest": free.get("rest", 0),
                      "sizes": sizes})
    return heaps


def _sqlite() -> dict[str, int] | None:
    """The bytes SQLite holds now and at most (native, never traced)."""
    import ctypes.util
    import sqlite3  # noqa: F401 - loads the library the daemon's connections use

    name = ctypes.util.find_library("sqlite3")
    try:
        lib = ctypes.CDLL(name)
        used, highwater = lib.sqlite3_memory_used, lib.sqlite3_memory_highwater
    except (OSError, AttributeError, TypeError):
        return None
    used.restype = highwater.restype = ctypes.c_int64
    out = {"used": used(), "highwater": highwater(0)}
    # the page cache's slots from its slab (corral/supervisor/memory.py) and the bytes of
    # pages past it, from malloc: (SQLITE_STATUS_PAGECACHE_USED, _OVERFLOW)
    now, top = ctypes.c_int64(), ctypes.c_int64()
    for op, key in ((1, "slab_slots"), (2, "slab_overflow")):
        if lib.sqlite3_status64(op, ctypes.byref(now), ctypes.byref(top), 0) == 0:
            out[key], out[key + "_highwater"] = now.value, top.value
    return out


_STAT = re.compile(r"^#\s*(.+?)\s*=\s*([\d,]+)$")
_HELD = re.compile(r"^[\d,]+ (unused pools|arenas) \*.*=\s*([\d,]+)$")
_CLASS = re.compile(r"^\s*(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)$")
HEAP_ALIGN = 64 << 20  # a glibc thread arena's heap: this size, aligned to it


def _pymalloc() -> dict[str, Any] | None:
    """pymalloc's own account (its arenas are mapped apart from glibc's heap, so neither
    mallinfo nor the traced total shows them): its arenas, the bytes in live blocks and in
    free ones, and per size class the pools and blocks in use (None: not this build)."""
    try:
        stats = ctypes.pythonapi._PyObject_DebugMallocStats
    except AttributeError:
        return None
    stats.argtypes = [ctypes.c_void_p]
    # the interpreter's lock held through it: ctypes.pythonapi keeps it
    written = _written_by("corral-pymalloc-", stats)
    if written is None or not written[0]:
        return None
    text = written[1]
    out: dict[str, Any] = {"classes": {}}
    for line in text.splitlines():
        if m := _STAT.match(line):
            out[m[1]] = int(m[2].replace(",", ""))
        elif m := _HELD.match(line):
            out[f"bytes in {m[1]}"] = int(m[2].replace(",", ""))
        elif m := _CLASS.match(line):
            out["classes"][m[2]] = [int(m[3]), int(m[4]), int(m[5])]
    return out


def _maps() -> dict[str, int]:
    """The resident bytes by the kind of mapping that holds them: glibc's main heap
    (brk), its thread arenas, threads' stacks, the main stack, the other anonymous
    mappings (pymalloc's arenas, glibc's mmapped blocks) and files."""
    import psutil

    kinds: dict[str, int] = Counter()
    regions: list[tuple[int, int, str, str, int]] = []
    for m in psutil.Process().memory_maps(grouped=False):
        a, _, b = m.addr.partition("-")
        path = "" if m.path == "[anon]" else m.path  # (psutil's name for no name)
        regions.append((int(a, 16), int(b, 16), m.perms, path, m.rss))
    for i, (start, end, _perms, path, rss) in enumerate(regions):
        after = regions[i + 1] if i + 1 < len(regions) else None
        before = regions[i - 1] if i else None
        if path == "[heap]":
            kind = "brk_heap"
        elif path == "[stack]":
            kind = "main_stack"
        elif path:
            kind = "file" if path.startswith("/") else "other_named"
        elif (start % HEAP_ALIGN == 0 and after is not None and after[0] == end
              and after[2].startswith("---") and after[1] - start == HEAP_ALIGN):
            kind = "malloc_arenas"
        elif (before is not None and before[1] == start and before[2].startswith("---")
              and before[1] - before[0] <= 64 << 10 and end - start >= 1 << 20):
            kind = "thread_stacks"  # a guard page below it
        else:
            kind = "other_anon"
        kinds[kind] += rss
    return dict(kinds)


def _rss() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)


def _trimmed() -> tuple[int, int] | None:
    """The RSS just before a malloc_trim and just after it (read together: the dump's other
    readers allocate, and their blocks are no trim's)."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    before = _rss()
    trim(0)
    return before, _rss()


def write(where: str, seconds: int, trim: bool = False) -> str:
    """One dump: the snapshot and its json; the json's path. Its names are joined as str:
    a Path would intern each dump's new name in the daemon it measures."""
    import tracemalloc

    tracing = tracemalloc.is_tracing()
    if tracing:
        tracemalloc.take_snapshot().dump(os.path.join(where, f"heap-{seconds}.tracemalloc"))
    types = Counter(type(o).__qualname__ for o in gc.get_objects())
    traced, peak = tracemalloc.get_traced_memory() if tracing else (None, None)
    out = os.path.join(where, f"heap-{seconds}.json")
    part = out + ".part"  # renamed when whole: a reader never sees half
    account = {
        "seconds": seconds, "rss": _rss(), "traced": traced, "traced_peak": peak,
        "tracemalloc_overhead": tracemalloc.get_tracemalloc_memory() if tracing else None,
        "malloc": _mallinfo(), "sqlite": _sqlite(), "gc_counts": gc.get_count(),
        "pymalloc": _pymalloc(), "maps": _maps(), "threads": threading.active_count(),
        "objects": sum(types.values()), "types": dict(types.most_common(KEEP_TYPES))}
    trimmed = _trimmed() if trim else None  # last: the accounts above are the heap's as it was
    account["rss_before_trim"], account["rss_trimmed"] = trimmed or (None, None)
    text = json.dumps(account)
    with open(part, "w") as f:
        f.write(text)
    os.rename(part, out)
    return out


@contextlib.contextmanager
def from_env(env: Mapping[str, str] = os.environ) -> Iterator[threading.Thread | None]:
    where = env.get(ENV_DIR)
    if not where:
        yield None
        return
    every = float(env.get(ENV_EVERY) or 300)
    trim = env.get(ENV_TRIM) == "1"
    os.makedirs(where, exist_ok=True)
    frames = int(env.get(ENV_FRAMES) or 12)
    import tracemalloc  # (and pickle under it: imported by no daemon that does not dump)

    if frames > 0 and not tracemalloc.is_tracing():
        tracemalloc.start(frames)
    began = time.monotonic()
    halt = threading.Event()

    def dumps() -> None:
        while not halt.wait(every):
            with contextlib.suppress(OSError):
                write(where, round(time.monotonic() - began), trim)

    # a thread, not a task of the loop: a dump blocks for as long as it walks the heap,
    # which the loop's latency gauges would otherwise count against the daemon
    thread = threading.Thread(target=dumps, name="corral-heapdump", daemon=True)
    thread.start()
    try:
        yield thread
    finally:
        halt.set()


def compare(old: Path, new: Path, top: int = 25) -> list[str]:
    """What grew from one dump to the next, by traceback and by type."""
    import tracemalloc

    before = tracemalloc.Snapshot.load(str(old))
    after = tracemalloc.Snapshot.load(str(new))
    lines = [f"{old.name} -> {new.name}: top {top} by traceback"]
    for stat in after.compare_to(before, "traceback")[:top]:
        lines.append(f"{stat.size_diff / 1024:+10.1f} KiB {stat.count_diff:+8d} blocks "
                     f"(now {stat.size / 1024:.1f} KiB in {stat.count})")
        lines += [f"      {frame}" for frame in stat.traceback.format()[-8:]]
    sides = [snap.with_suffix(".json") for snap in (old, new)]
    counts: list[dict[str, Any]] = [json.loads(s.read_text()) if s.exists() else {}
                                    for s in sides]
    if all(counts):
        a, b = counts
        malloc = [{k: v for k, v in (c["malloc"] or {}).items() if k != "heaps"}
                  for c in counts]  # (each arena's free chunks: bench/soak_heap.py's)
        lines.append(f"rss {a['rss'] / 2**20:.1f} -> {b['rss'] / 2**20:.1f} MiB, traced "
                     f"{a['traced'] / 2**20:.1f} -> {b['traced'] / 2**20:.1f} MiB, malloc "
                     f"{malloc[0]} -> {malloc[1]}, sqlite {a.get('sqlite')} -> "
                     f"{b.get('sqlite')}, objects {a['objects']} -> {b['objects']}")
        grew = sorted(((b["types"].get(t, 0) - a["types"].get(t, 0), t)
                       for t in {*a["types"], *b["types"]}), reverse=True)
        lines.append("types that grew: " + ", ".join(
            f"{t} {n:+d}" for n, t in grew[:top] if n > 0))
    return lines


if __name__ == "__main__":
    print("\n".join(compare(Path(sys.argv[1]), Path(sys.argv[2]),
                            int(sys.argv[3]) if len(sys.argv) > 3 else 25)))
