"""Which of the daemon's own structures grow under a soak's churn (issue 90), named by
their owner: every container held in an attribute of an object of corral's (a dict, list,
set, deque or anything with a length: `Class.attr`), every container at a module's top
level of corral's (`module.NAME`), every `functools` cache there (its size), and the
number of live objects of each class of corral's. A map keyed by something that churns
(agent names, replica, session, stream or token ids) and never forgotten reads as a
line that rises with the rounds; a bounded store rises to its bound and stays.

The census runs inside the soak's daemon, in a thread of its own (as the heap dumps do),
loaded by a `sitecustomize` this module writes:

    .venv/bin/python -m bench.soak_census --site DIR --out FILE [--every 60]
    .venv/bin/python -m bench.soak --wrap 'env PYTHONPATH=DIR' ...
    .venv/bin/python -m bench.soak_census FILE [--warmup 600] [--top 25]

The last reads FILE (one JSON line a census) and prints what grew past the warm-up: each
name's first and last size past it, and its least-squares slope per hour. Only the
daemon's process takes the census (the variable `CORRAL_CENSUS` names its file; the
agents the daemon starts are told no such thing by the soak, which strips it).
"""

from __future__ import annotations

import argparse
import collections
import functools
import gc
import json
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

ENV_OUT = "CORRAL_CENSUS"
ENV_EVERY = "CORRAL_CENSUS_EVERY"
SMALL = 8  # containers shorter than this at every census are left out of the file


def _sized(v: object) -> int | None:
    """Its length, when it is a container (None otherwise: a str or bytes is data)."""
    if isinstance(v, (str, bytes, bytearray, memoryview, type)):
        return None
    if isinstance(v, (dict, list, set, frozenset, tuple, collections.deque)):
        return len(v)
    if isinstance(v, functools._lru_cache_wrapper):
        return int(v.cache_info().currsize)
    try:
        n = len(v)  # type: ignore[arg-type]
    except Exception:  # (anything that is no container)
        return None
    return n if isinstance(n, int) else None


def _fields(o: object) -> Iterable[tuple[str, object]]:
    d = getattr(o, "__dict__", None)
    if isinstance(d, dict):
        yield from list(d.items())
    for cls in type(o).__mro__:
        for slot in cls.__dict__.get("__slots__", ()) if isinstance(
                cls.__dict__.get("__slots__", ()), (tuple, list)) else ():
            try:
                yield slot, getattr(o, slot)
            except AttributeError:
                continue


def _every_object() -> Iterable[object]:
    """Every object this process holds that the collector can see into, the frozen ones
    too: the daemon freezes its heap once set up (`gc.freeze`), and `gc.get_objects()`
    leaves the frozen out, which are its long-lived ones (the engine, its queues and its
    maps) whose containers are what a churn's keys fill. So the walk goes from every
    object the collector lists, every module and every thread's frame, through what each
    refers to."""
    seen: set[int] = set()
    todo: list[object] = [*gc.get_objects(), *list(sys.modules.values()),
                          *sys._current_frames().values()]
    while todo:
        o = todo.pop()
        if id(o) in seen:
            continue
        seen.add(id(o))
        yield o
        todo.extend(r for r in gc.get_referents(o)
                    if gc.is_tracked(r) and id(r) not in seen)


def take() -> dict[str, Any]:
    """One census of this process: {"classes": {qualname: live objects}, "sizes":
    {owner.attr: summed length}, "largest": {owner.attr: the longest one}}."""
    classes: collections.Counter[str] = collections.Counter()
    sizes: collections.Counter[str] = collections.Counter()
    largest: dict[str, int] = {}

    def note(key: str, n: int) -> None:
        sizes[key] += n
        if n > largest.get(key, -1):
            largest[key] = n

    for o in _every_object():
        cls = type(o)
        # a class's own, from its dict: a C type has none there, and `cls.__module__` makes
        # its name anew and interns it at each read, which in the daemon it measures churns
        # the interpreter's table of interned strings until it doubles
        module = cls.__dict__.get("__module__")
        if not isinstance(module, str) or not module.startswith("corral"):
            continue
        name = f"{module}.{cls.__qualname__}"
        classes[name] += 1
        try:
            for attr, v in _fields(o):
                n = _sized(v)
                if n is not None:
                    note(f"{name}.{attr}", n)
        except Exception:  # (an object changing under the walk: the next census takes it)
            continue
    for mname, module in list(sys.modules.items()):
        if not mname.startswith("corral") or module is None:
            continue
        for attr, v in list(vars(module).items()):
            if attr.startswith("__"):
                continue
            n = _sized(v)
            if n is not None:
                note(f"{mname}:{attr}", n)
            elif callable(v) and hasattr(v, "cache_info"):
                note(f"{mname}:{attr}()", int(v.cache_info().currsize))
    return {"classes": dict(classes), "sizes": dict(sizes), "largest": largest}


def start(out: str, every: float) -> threading.Thread:
    """The census every `every` s, one JSON line appended to `out` each time."""
    began = time.monotonic()

    def run() -> None:
        while True:
            time.sleep(every)
            seconds = round(time.monotonic() - began)
            try:
                c = take()
            except Exception as exc:  # (said in the file, and the next census tries again)
                c = {"error": f"{type(exc).__name__}: {exc}"}
            c["seconds"] = seconds
            c["gc_objects"] = len(gc.get_objects())  # (the frozen left out)
            with open(out, "a") as f:
                f.write(json.dumps(c) + "\n")

    t = threading.Thread(target=run, name="soak-census", daemon=True)
    t.start()
    return t


SITE = '''\
import os, sys
_out = os.environ.pop({env_out!r}, "")
_every = float(os.environ.pop({env_every!r}, "60") or 60)
if _out and "daemon" in sys.argv[1:3]:
    sys.path.insert(0, {root!r})
    from bench.soak_census import start
    start(_out, _every)
'''


def write_site(where: Path, out: Path, every: float) -> Path:
    """A sitecustomize that starts the census in a `corral daemon` (and in nothing else
    that reads it: the variables are popped, so the daemon's children never see them)."""
    where.mkdir(parents=True, exist_ok=True)
    root = str(Path(__file__).resolve().parent.parent)
    site = where / "sitecustomize.py"
    site.write_text(SITE.format(env_out=ENV_OUT, env_every=ENV_EVERY, root=root))
    (where / "census.env").write_text(f"{ENV_OUT}={out}\n{ENV_EVERY}={every:g}\n")
    return site


# -- reading a census file -------------------------------------------------------------------
def grew(rows: list[dict[str, Any]], part: Callable[[dict[str, Any]], dict[str, int]],
         top: int) -> list[tuple[str, int, int, float]]:
    """(name, first, last, per hour) of the fastest-growing names of `part`."""
    from bench.soak_heap import slope  # (the reader's alone: the daemon's census needs it not)
    names = {n for r in rows for n in part(r)}
    out = []
    for n in names:
        points = [(float(r["seconds"]), float(part(r).get(n, 0))) for r in rows]
        s = slope(points)
        if s is not None and s > 0 and points[-1][1] > points[0][1]:
            out.append((n, int(points[0][1]), int(points[-1][1]), s))
    return sorted(out, key=lambda r: -r[3])[:top]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("file", type=Path, nargs="?")
    ap.add_argument("--site", type=Path, help="write the sitecustomize into this directory")
    ap.add_argument("--out", type=Path, help="the census file the daemon appends to")
    ap.add_argument("--every", type=float, default=60.0)
    ap.add_argument("--warmup", type=float, default=600.0)
    ap.add_argument("--top", type=int, default=25)
    a = ap.parse_args(argv)
    if a.site is not None:
        if a.out is None:
            ap.error("--site needs --out")
        write_site(a.site, a.out.resolve(), a.every)
        print(f"--wrap 'env PYTHONPATH={a.site} {ENV_OUT}={a.out.resolve()} "
              f"{ENV_EVERY}={a.every:g}'")
        return 0
    if a.file is None:
        ap.error("a census file, or --site")
    rows = [json.loads(line) for line in a.file.read_text().splitlines() if line.strip()]
    for r in rows:
        if "error" in r:
            print(f"the census at {r['seconds']} s failed: {r['error']}")
    rows = [r for r in rows if r["seconds"] >= a.warmup and "error" not in r]
    if len(rows) < 3:
        print(f"soak_census: {len(rows)} censuses past {a.warmup:g} s", file=sys.stderr)
        return 2
    print(f"{len(rows)} censuses, {rows[0]['seconds']} s to {rows[-1]['seconds']} s")
    for title, part in (("containers (summed length)", lambda r: r["sizes"]),
                        ("the longest of each", lambda r: r["largest"]),
                        ("live objects by class", lambda r: r["classes"])):
        print(f"{title}, growing fastest (first -> last, per hour):")
        for n, first, last, s in grew(rows, part, a.top):
            print(f"  {n:70} {first:>8} -> {last:<8} {s:+10.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
