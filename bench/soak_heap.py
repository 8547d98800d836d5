"""Where a soak's RSS goes, from the daemon's own heap dumps (corral/daemon/heapdump.py):
each account's least-squares slope per hour past the warm-up, and the object types and
pymalloc size classes whose counts grow.

Run the soak with the dumps on (one life: `--restarts 0 --upgrades 0`; each dump's
`seconds` counts from the daemon's start), then read them:

    CORRAL_HEAP_DUMP=DIR CORRAL_HEAP_FRAMES=0 CORRAL_HEAP_DUMP_EVERY=60 \\
        .venv/bin/python -m bench.soak --minutes 40 --warmup 600 --restarts 0 --upgrades 0
    .venv/bin/python -m bench.soak_heap DIR [--warmup 600] [--top 15]

The accounts: the RSS and its split by the kind of mapping that holds it (glibc's brk heap
and thread arenas, threads' stacks, other anonymous mappings: pymalloc's arenas among
them, files); glibc's bytes in use and kept free, and its main arena's free chunks of
8-64 KiB; pymalloc's arenas, its bytes in live blocks and in free ones; the live objects.
An RSS that grows while the bytes in use do not is an allocator's holes; a type whose
count grows is live data, a leak if nothing bounds it.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

MIB = 1 << 20
SMALL_REQUEST = 512  # the largest block pymalloc serves itself: past it, glibc's

Dump = dict[str, Any]


def _part(section: str, key: str) -> Callable[[Dump], float | None]:
    """How a dump gives one key of one of its sections, in MiB (None: not in this dump)."""
    def get(d: Dump) -> float | None:
        part = d.get(section)
        return None if part is None else float(part.get(key, 0)) / MIB
    return get


def _heap(d: Dump, *keys: str) -> float | None:
    """glibc's main arena's figure (the sum of `keys`), in MiB (None: not in this dump)."""
    heaps = (d.get("malloc") or {}).get("heaps")
    return None if not heaps else sum(heaps[0][k] for k in keys) / MIB


def _arenas(d: Dump, free: bool) -> float | None:
    """glibc's thread arenas together (every heap past the main one): their bytes from the
    system, or their free chunks, in MiB (None: not in this dump)."""
    heaps = (d.get("malloc") or {}).get("heaps")
    if not heaps:
        return None
    keys = ("free_fast", "free_rest") if free else ("system",)
    return float(sum(h[k] for h in heaps[1:] for k in keys)) / MIB


def _c_in_use(d: Dump) -> float | None:
    """glibc's bytes in use less SQLite's (SQLite's pages past its slab and its other
    blocks come from malloc): Python's blocks past 512 bytes and every other C
    library's, in MiB (None: not in this dump)."""
    malloc, sqlite = d.get("malloc"), d.get("sqlite")
    if malloc is None or sqlite is None:
        return None
    # (the slab's pages, mapped apart, are in neither figure)
    return float(malloc["in_use"] - sqlite["used"]) / MIB


def _python_large(d: Dump) -> float | None:
    """The traced blocks past 512 bytes (glibc's, not pymalloc's), in MiB (None: the dump
    was untraced)."""
    large = d.get("large_by_line")
    return None if large is None else float(sum(large.values())) / MIB


def _c_alone(d: Dump) -> float | None:
    """glibc's bytes in use less SQLite's, Python's traced blocks and tracemalloc's own
    tables: C code's alone (the extensions', the interpreter's raw blocks), in MiB (None:
    the dump was untraced)."""
    rest, large = _c_in_use(d), _python_large(d)
    if rest is None or large is None:
        return None
    return rest - large - float(d.get("tracemalloc_overhead") or 0) / MIB


def _holes(low: int, high: int, count: bool = False) -> Callable[[Dump], float | None]:
    """How a dump gives the main arena's free chunks of more than `low` bytes up to `high`:
    their MiB, or their number (None: not in this dump)."""
    def get(d: Dump) -> float | None:
        heaps = (d.get("malloc") or {}).get("heaps")
        if not heaps:
            return None
        sizes = [s for s in heaps[0]["sizes"] if low < s[1] <= high]  # [from, to, n, bytes]
        return float(sum(s[2] for s in sizes)) if count else sum(s[3] for s in sizes) / MIB
    return get


# each account: its label and how a dump gives it (None: this dump has it not)
ACCOUNTS: list[tuple[str, Callable[[Dump], float | None]]] = [
    ("rss", lambda d: d["rss"] / MIB),
    *[(f"maps {k}", _part("maps", k)) for k in (
        "brk_heap", "malloc_arenas", "thread_stacks", "other_anon", "file", "main_stack")],
    ("glibc main arena (brk)", lambda d: _heap(d, "system")),
    ("glibc main arena's free chunks", lambda d: _heap(d, "free_fast", "free_rest")),
    # the holes the loop's churn leaves (issue 90): their bytes, and how many
    ("  of them 8-64 KiB", _holes(8 << 10, 64 << 10)),
    ("  of them 8-64 KiB (count)", _holes(8 << 10, 64 << 10, count=True)),
    ("glibc thread arenas", lambda d: _arenas(d, free=False)),
    ("glibc thread arenas' free chunks", lambda d: _arenas(d, free=True)),
    ("glibc in use", _part("malloc", "in_use")),
    ("  of it not SQLite's", _c_in_use),
    ("    Python's past 512 B (traced)", _python_large),
    ("    C code's alone", _c_alone),
    ("glibc free", _part("malloc", "free")),
    ("glibc mmapped", _part("malloc", "mmapped")),
    *[(f"pymalloc {k}", _part("pymalloc", k))
      for k in ("bytes in arenas", "bytes in allocated blocks", "bytes in available blocks",
                "bytes in unused pools")],
    ("sqlite used", _part("sqlite", "used")),
    ("sqlite slab slots (thousands)",
     lambda d: None if "slab_slots" not in (d.get("sqlite") or {})
     else d["sqlite"]["slab_slots"] / 1000),
    ("traced", lambda d: d["traced"] / MIB if d.get("traced") is not None else None),
    ("objects (thousands)", lambda d: d["objects"] / 1000),
    ("threads", lambda d: d.get("threads")),
]


def load(where: Path) -> list[Dump]:
    """Every whole dump in `where`, oldest first."""
    dumps = [json.loads(p.read_text()) for p in where.glob("heap-*.json")]
    return sorted(dumps, key=lambda d: d["seconds"])


def slope(points: list[tuple[float, float]]) -> float | None:
    """The least-squares slope per hour of (seconds, value) points (None: fewer than 3)."""
    if len(points) < 3:
        return None
    mt = sum(t for t, _ in points) / len(points)
    my = sum(v for _, v in points) / len(points)
    sxx = sum((t - mt) ** 2 for t, _ in points)
    if sxx == 0:
        return None
    return sum((t - mt) * (v - my) for t, v in points) / sxx * 3600


def series(dumps: list[Dump], get: Callable[[Dump], float | None]) -> list[tuple[float, float]]:
    out = []
    for d in dumps:
        v = get(d)
        if v is not None:
            out.append((float(d["seconds"]), float(v)))
    return out


def accounts(dumps: list[Dump]) -> list[dict[str, Any]]:
    """Each account at the first and last dump given, and its slope per hour."""
    rows = []
    for label, get in ACCOUNTS:
        points = series(dumps, get)
        if points:
            rows.append({"account": label, "first": round(points[0][1], 2),
                         "last": round(points[-1][1], 2),
                         "per_hour": None if (s := slope(points)) is None else round(s, 2)})
    return rows


def grew(dumps: list[Dump], counts: Callable[[Dump], dict[str, Any]], top: int
         ) -> list[tuple[str, int, int, float]]:
    """What grew most by count between the first dump and the last: (name, first, last,
    slope per hour), the largest slope first (a name in only some dumps counts 0 where
    absent: the dumps keep only the most numerous types)."""
    names = {n for d in dumps for n in counts(d)}
    rows = []
    for n in names:
        points = [(float(d["seconds"]), float(_count(counts(d).get(n)))) for d in dumps]
        s = slope(points)
        if s is not None and s > 0:
            rows.append((n, int(points[0][1]), int(points[-1][1]), s))
    return sorted(rows, key=lambda r: -r[3])[:top]


def _count(v: Any) -> float:
    return float(v[0] if isinstance(v, list) else v or 0)


def large_by_line(snapshot: Path) -> dict[str, int]:
    """A traced dump's blocks past 512 bytes (glibc's), their bytes by the line that made
    them (its innermost traced frame)."""
    import tracemalloc

    out: dict[str, int] = {}
    for trace in tracemalloc.Snapshot.load(str(snapshot)).traces:
        if trace.size > SMALL_REQUEST:
            frame = trace.traceback[-1]  # (the innermost: tracemalloc lists oldest first)
            at = f"{frame.filename}:{frame.lineno}"
            out[at] = out.get(at, 0) + trace.size
    return out


def traced(where: Path, dumps: list[Dump]) -> None:
    """Each dump whose snapshot is beside it (a traced run's) given its blocks past 512
    bytes by line, `large_by_line` (read here, not in the daemon: the walk is long)."""
    for d in dumps:
        snapshot = where / f"heap-{d['seconds']}.tracemalloc"
        if snapshot.exists():
            d["large_by_line"] = large_by_line(snapshot)


def large_grew(first: Dump, last: Dump, top: int) -> list[tuple[str, int, int]]:
    """Between two traced dumps, the lines whose blocks past 512 bytes grew most: (line,
    bytes first, bytes last)."""
    a, b = first["large_by_line"], last["large_by_line"]
    rows = [(at, a.get(at, 0), b.get(at, 0)) for at in {*a, *b}]
    return sorted((r for r in rows if r[2] > r[1]), key=lambda r: r[1] - r[2])[:top]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dir", type=Path)
    ap.add_argument("--warmup", type=float, default=600.0,
                    help="seconds of the daemon's life not fitted")
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--json", action="store_true", help="the report as json")
    a = ap.parse_args(argv)
    dumps = [d for d in load(a.dir) if d["seconds"] >= a.warmup]
    if len(dumps) < 3:
        print(f"soak_heap: {len(dumps)} dumps past {a.warmup:g} s in {a.dir}", file=sys.stderr)
        return 2
    traced(a.dir, dumps)
    rep = {"dumps": len(dumps), "from_s": dumps[0]["seconds"], "to_s": dumps[-1]["seconds"],
           "accounts": accounts(dumps),
           "types": grew(dumps, lambda d: d["types"], a.top),
           # pymalloc's size classes by the pools they hold (each 16 KiB)
           "pool_classes": grew(dumps, lambda d: (d.get("pymalloc") or {}).get("classes", {}),
                                a.top)}
    if "large_by_line" in dumps[0] and "large_by_line" in dumps[-1]:
        rep["large_lines"] = large_grew(dumps[0], dumps[-1], a.top)
    if a.json:
        print(json.dumps(rep))
        return 0
    print(f"{rep['dumps']} dumps, {rep['from_s']} s to {rep['to_s']} s of the daemon's life")
    print(f"{'account (MiB)':34} {'first':>9} {'last':>9} {'per hour':>9}")
    for r in rep["accounts"]:
        per = "-" if r["per_hour"] is None else f"{r['per_hour']:+.2f}"
        print(f"{r['account']:34} {r['first']:>9} {r['last']:>9} {per:>9}")
    for at, b0, b1 in rep.get("large_lines", []):
        print(f"  blocks past 512 B grew at {at}: {b0 / 1024:.1f} -> {b1 / 1024:.1f} KiB")
    for title, rows in (("types by count", rep["types"]),
                        ("pymalloc size classes by pools", rep["pool_classes"])):
        print(f"{title}, growing fastest (first -> last, per hour): " + ", ".join(
            f"{n} {a0}->{a1} ({s:+.0f})" for n, a0, a1, s in rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
