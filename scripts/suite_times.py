"""Where the suite's time goes: each file's time in the last run that ran it and the CPU
its tests spent (their own and their reaped children's), both from pytest's cache
(tests/conftest.py keeps them), and what is left, the time the file waited (on beats,
deadlines, backoffs, a child's start, or a core another process held).

    .venv/bin/python scripts/suite_times.py [--top N] [--cache DIR] [--write FILE]

`--write tests/durations.json` keeps each file's time as the order a fresh clone's run
hands the files out in, longest first (tests/conftest.py; a checkout's own cache of its
last run goes before it).

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


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--top", type=int, default=25, help="the files to list, longest first")
    ap.add_argument("--cache", type=Path, default=ROOT / ".pytest_cache",
                    help="a pytest cache directory (default: this checkout's)")
    ap.add_argument("--cores", type=int, default=2, help="the floor's cores")
    ap.add_argument("--write", type=Path, metavar="FILE",
                    help="keep each file's time there (tests/durations.json), the files "
                         "that are still in the checkout")
    args = ap.parse_args(argv)
    wall, cpu = load(args.cache, "durations"), load(args.cache, "cpu")
    if args.write is not None:
        kept = {f: round(s, 1) for f, s in sorted(wall.items()) if (ROOT / f).is_file()}
        args.write.write_text(json.dumps(kept, indent=0) + "\n")
    known = [f for f in wall if f in cpu]
    total_wall = sum(wall[f] for f in known)
    total_cpu = sum(cpu[f] for f in known)
    share = 100 * total_cpu / max(total_wall, 1e-9)
    print(f"files: {len(known)}; time {total_wall:.0f} s, CPU {total_cpu:.0f} s ({share:.0f}%),"
          f" waiting {total_wall - total_cpu:.0f} s; the CPU's floor on {args.cores} cores "
          f"{total_cpu / args.cores:.0f} s, the longest file {max(wall[f] for f in known):.0f} s")
    print(f"{'time s':>8} {'CPU s':>7} {'CPU %':>6}  file")
    for f in sorted(known, key=lambda f: -wall[f])[: args.top]:
        print(f"{wall[f]:8.1f} {cpu[f]:7.1f} {100 * cpu[f] / max(wall[f], 1e-9):6.0f}  {f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
