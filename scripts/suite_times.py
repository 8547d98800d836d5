"""Where the suite's time goes: each file's time in the last run that ran it and the CPU
its tests spent (their own and their reaped children's), both from pytest's cache
(tests/conftest.py keeps them), and what is left, the time the file waited (on beats,
deadlines, backoffs, a child's start, or a core another process held).

    .venv/bin/python scripts/suite_times.py [--top N] [--cache DIR] [--write FILE]
        [--timeline FILE] [--tests N]

`--tests N` lists the N tests that waited longest (their time less their CPU, each phase
summed): where a daemon's timer (a TTL, a backoff, a beat, a grace) holds a test.

`--timeline FILE` reads what a run made with CORRAL_TEST_TIMELINE=FILE set (each test's
worker, and when its turn was asked, begun and ended): each worker's time in tests, in
waiting for a turn and idle after its last test, and the longest waits for a turn.

`--write tests/durations.json` keeps each file's time as the order a fresh clone's run
hands the files out in, longest first (tests/conftest.py; a checkout's own cache of its
last run goes before it). With `--merge` the cache is a loaded run's, whose times are not a
quiet run's (a file that waits on timers is stretched less than one that wants a core):
FILE's own figures are kept, a file whose figure is below its CPU in the cache gets that
CPU (a file takes at least its CPU), and a file it lacks gets the larger of its CPU and
its time there scaled by the two runs' ratio over the files both hold. A file ranked
short that is not is handed out last and ends the run (the test marked `alone` waits for
it); ranked long, it only starts sooner.

`--simulate N [N ...]` plays the run again on `--cores` cores with N workers, from each
test's time and CPU in the cache: its files handed out longest first, a worker taking its
next file when two of its tests are left (pytest-xdist's loadfile), each worker's
collection first (`--collection`, CPU alone), and the running tests' CPU slowed alike
whenever they want more than the cores, to the pace that keeps the cores just busy, their
waiting (a test's time less its CPU) not. It says
the run's time and the cores' idle share a worker count would give, before a whole run is
spent on it; a test marked `alone` is not held apart.

A file that mostly waits can share the machine with others: the suite's floor on C cores
is its CPU over C, not its time."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def load(cache: Path, key: str) -> dict[str, float]:
    path = cache / "v" / "corral" / key
    if not path.exists():
        raise SystemExit(f"no {key} in {cache}: run the suite (./test.sh) first")
    return {str(k): float(v) for k, v in json.loads(path.read_text()).items()}


def timeline(path: Path, top: int) -> int:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not rows:
        raise SystemExit(f"no test in {path}")
    start = min(r[2] for r in rows)
    end = max(r[4] for r in rows)
    print(f"tests: {len(rows)}; from the first turn asked to the last test's end "
          f"{end - start:.0f} s")
    print(f"{'worker':>8} {'tests s':>8} {'turns s':>8} {'idle after s':>13}")
    for worker in sorted({r[0] for r in rows}):
        mine = [r for r in rows if r[0] == worker]
        print(f"{worker:>8} {sum(r[4] - r[3] for r in mine):8.0f} "
              f"{sum(r[3] - r[2] for r in mine):8.0f} {end - max(r[4] for r in mine):13.0f}")
    print("the longest waits for a turn (s, from the run's start):")
    for r in sorted(rows, key=lambda r: r[2] - r[3])[:top]:
        print(f"{r[3] - r[2]:8.1f} at {r[2] - start:6.0f}  {r[0]} {r[1]}")
    # the run's tail: a file begun late and long ends the run with the other workers idle,
    # and then wants a higher rank in tests/durations.json
    print("each worker's last file (s from the run's start: begun, ended):")
    for worker in sorted({r[0] for r in rows}):
        mine = sorted((r for r in rows if r[0] == worker), key=lambda r: r[3])
        last = mine[-1][1].split("::", 1)[0]
        began = min(r[3] for r in mine if r[1].split("::", 1)[0] == last)
        print(f"{worker:>8} {began - start:6.0f} {mine[-1][4] - start:6.0f}  {last}")
    return 0


def waits(cache: Path, top: int) -> int:
    path = cache / "v" / "corral" / "tests"
    if not path.exists():
        raise SystemExit(f"no tests in {cache}: run the suite (./test.sh) first")
    spent = {str(k): (float(v[0]), float(v[1])) for k, v in json.loads(path.read_text()).items()}
    waited = sum(w - c for w, c in spent.values())
    print(f"tests: {len(spent)}; waiting {waited:.0f} s")
    print(f"{'wait s':>8} {'time s':>7} {'CPU s':>6}  test")
    for t in sorted(spent, key=lambda t: spent[t][1] - spent[t][0])[:top]:
        w, c = spent[t]
        print(f"{w - c:8.1f} {w:7.1f} {c:6.1f}  {t}")
    return 0


STEP = 0.05  # the simulation's clock, seconds


def busy(running: list[list[float]], speed: float) -> float:
    """The cores the running tests keep busy when each one's CPU goes at `speed`: a test
    goes through its length (its waiting, then its CPU stretched) at one pace, so its
    CPU is that share of it."""
    return sum(c / (w + c / speed) for w, c in running if c > 0)


def core_speed(running: list[list[float]], cores: int) -> float:
    """The pace of the running tests' CPU (1: each its own core): where they want more
    than the cores, the pace that keeps the cores just busy. Their CPU's share of each
    one's length alone (want = c / (w + c)) scaled down would leave a test that mostly
    waits its waiting unstretched and so its CPU faster than its share: the cores then
    did more than they have, the more so with more workers (ten read faster than eight,
    and measured slower)."""
    if busy(running, 1.0) <= cores:
        return 1.0
    low, high = 0.0, 1.0
    for _ in range(40):
        mid = (low + high) / 2
        if busy(running, mid) > cores:
            high = mid
        else:
            low = mid
    return max(low, 1e-9)


def simulate(cache: Path, workers: int, cores: int, collection: float) -> tuple[float, float]:
    """(the run's time, the cores' idle share) of the cache's tests on `workers` workers."""
    path = cache / "v" / "corral" / "tests"
    if not path.exists():
        raise SystemExit(f"no tests in {cache}: run the suite (./test.sh) first")
    files: dict[str, list[list[float]]] = {}
    for nodeid, (time, cpu) in json.loads(path.read_text()).items():
        # [waiting left, CPU left]
        files.setdefault(nodeid.split("::", 1)[0], []).append(
            [max(0.0, float(time) - float(cpu)), float(cpu)])
    queue = sorted(files.values(), key=lambda tests: -sum(w + c for w, c in tests))
    pending: list[list[list[float]]] = [[[0.0, collection]] for _ in range(workers)]

    def hand_out(worker: int) -> None:
        if queue and len(pending[worker]) <= 2:
            pending[worker].extend(queue.pop(0))

    for worker in range(workers):
        hand_out(worker)
    now = idle = 0.0
    while any(pending):
        running = [tests[0] for tests in pending if tests]
        speed = core_speed(running, cores)
        idle += max(0.0, cores - busy(running, speed)) * STEP
        for test in running:
            length = test[0] + test[1] / speed
            done = min(1.0, STEP / length) if length > 0 else 1.0
            left = 1.0 - done
            test[0] *= left
            test[1] *= left
        for worker, tests in enumerate(pending):
            if tests and tests[0][0] + tests[0][1] < 1e-6:
                tests.pop(0)
                hand_out(worker)
        now += STEP
    return now, idle / max(cores * now, 1e-9)


def merged(path: Path, wall: dict[str, float], cpu: dict[str, float]) -> dict[str, float]:
    """`path`'s figures, each file it ranks below its CPU in `cpu` given that CPU, and each
    it lacks the larger of its CPU and its time in `wall` scaled to `path`'s runs (the
    ratio over the files both hold)."""
    kept = {str(k): float(v) for k, v in json.loads(path.read_text()).items()} \
        if path.exists() else {}
    both = [f for f in kept if f in wall]
    scale = sum(kept[f] for f in both) / max(sum(wall[f] for f in both), 1e-9) if both \
        else 1.0
    for f, seconds in wall.items():
        if f not in kept:
            kept[f] = max(cpu.get(f, 0.0), seconds * scale)
        else:
            kept[f] = max(kept[f], cpu.get(f, 0.0))
    return kept


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--top", type=int, default=25, help="the files to list, longest first")
    ap.add_argument("--cache", type=Path, default=ROOT / ".pytest_cache",
                    help="a pytest cache directory (default: this checkout's)")
    ap.add_argument("--cores", type=int, default=2, help="the floor's cores")
    ap.add_argument("--write", type=Path, metavar="FILE",
                    help="keep each file's time there (tests/durations.json), the files "
                         "that are still in the checkout")
    ap.add_argument("--merge", action="store_true",
                    help="with --write: keep FILE's figures, mending only the files it "
                         "lacks or ranks below their CPU (the cache a loaded run's)")
    ap.add_argument("--timeline", type=Path, metavar="FILE",
                    help="what a run with CORRAL_TEST_TIMELINE=FILE wrote")
    ap.add_argument("--tests", type=int, metavar="N",
                    help="the N tests that waited longest, not the files")
    ap.add_argument("--simulate", type=int, nargs="+", metavar="N",
                    help="the run's time with N workers, played again from the cache")
    ap.add_argument("--collection", type=float, default=6.0, metavar="S",
                    help="a worker's collection's CPU, seconds (--simulate)")
    args = ap.parse_args(argv)
    if args.simulate:
        for workers in args.simulate:
            took, idle = simulate(args.cache, workers, args.cores, args.collection)
            print(f"{workers} workers on {args.cores} cores: {took:.0f} s, the cores idle "
                  f"{100 * idle:.0f}%")
        return 0
    if args.timeline is not None:
        return timeline(args.timeline, args.top)
    if args.tests is not None:
        return waits(args.cache, args.tests)
    wall, cpu = load(args.cache, "durations"), load(args.cache, "cpu")
    if args.write is not None:
        kept = merged(args.write, wall, cpu) if args.merge else wall
        kept = {f: round(s, 1) for f, s in sorted(kept.items()) if (ROOT / f).is_file()}
        args.write.write_text(json.dumps(kept, indent=0) + "\n")
    known = [f for f in wall if f in cpu]
    total_wall = sum(wall[f] for f in known)
    total_cpu = sum(cpu[f] for f in known)
    share = 100 * total_cpu / max(total_wall, 1e-9)
    print(f"files: {len(known)}; time {total_wall:.0f} s, CPU {total_cpu:.0f} s ({share:.0f}%),"
          f" waiting {total_wall - total_cpu:.0f} s; the CPU's floor on {args.cores} cores "
          f"{total_cpu / args.cores:.0f} s, the longest file {max(wall[f] for f in known):.0f} s")
    turns = load(args.cache, "turns") if (args.cache / "v" / "corral" / "turns").exists() \
        else {}
    if turns:
        # a test waits for its turn while one marked `alone` runs, or, itself `alone`,
        # for the tests beside it to end: a worker's idle time, not in the files' times
        held = sorted(turns, key=lambda f: -turns[f])[:5]
        print(f"waiting for a turn (tests/conftest.py Turns): {sum(turns.values()):.0f} s "
              "of the workers', most in " + ", ".join(f"{f} {turns[f]:.0f} s" for f in held))
    print(f"{'time s':>8} {'CPU s':>7} {'CPU %':>6}  file")
    for f in sorted(known, key=lambda f: -wall[f])[: args.top]:
        print(f"{wall[f]:8.1f} {cpu[f]:7.1f} {100 * cpu[f] / max(wall[f], 1e-9):6.0f}  {f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
