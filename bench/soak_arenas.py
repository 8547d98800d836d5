"""What lives in each of a running daemon's pymalloc arenas, read from outside it (issue
90): the soak's RSS steps by pymalloc's 1 MiB arenas while its live blocks stay flat, and an
arena goes back to the system only once its last block is freed, so what the steps are is
which blocks keep the young arenas (those made past the warm-up) from emptying.

    .venv/bin/python -m bench.soak_arenas PID [--young N] [--every S --out FILE] [--top 20]

Nothing runs in the daemon and nothing of it is written: its memory is read through
/proc/PID/mem (a read of a page it never touched maps the zero page, no RSS of its). Each
16 KiB pool of pymalloc's begins with a header (CPython 3.11's Objects/obmalloc.c
`pool_header`): its live blocks' count, its free list, the index of its arena and its size
class. Arenas are numbered in the order they were made while none has been given back
(`arenas reclaimed` in a heap dump's pymalloc account), so `--young N` (the arenas
allocated at the warm-up's end, from the dumps) names those made since. Each live block
is a Python object when a type is found at its head (as is, behind a GC header, or behind
the managed dict's two pointers too), its type's name then read from the type; anything
else is raw (a dict's keys, a list's items, a buffer).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import struct
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from .soak_interned import ascii_text

POOL = 16 << 10  # POOL_BITS 14 (3.10 onwards)
HEADER = 48  # POOL_OVERHEAD: the header's 48 bytes, 16-aligned
CLASSES = 32  # 512 bytes / 16: the largest request pymalloc serves
_HEAD = struct.Struct("<QQQQIIII")
_WORDS = struct.Struct("<QQ")


class Memory:
    """One process's memory, read through /proc (None for an unreadable address)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY)
        self.regions = self._regions()
        self._names: dict[int, str | None] = {}
        self.type_type = self._type_type()

    def close(self) -> None:
        os.close(self.fd)

    def _regions(self) -> list[tuple[int, int, str, int, str]]:
        """The mappings (start, end, perms, offset, name), and each one's resident bytes
        in `self.resident` (by start)."""
        out: list[tuple[int, int, str, int, str]] = []
        self.resident: dict[int, int] = {}
        with open(f"/proc/{self.pid}/smaps") as f:
            for line in f:
                if line.startswith("Rss:"):
                    self.resident[out[-1][0]] = int(line.split()[1]) << 10
                    continue
                parts = line.split(maxsplit=5)
                a, dash, b = parts[0].partition("-")
                if not dash or ":" in parts[0]:
                    continue  # (a field of the mapping above)
                out.append((int(a, 16), int(b, 16), parts[1], int(parts[2], 16),
                            parts[5].strip() if len(parts) > 5 else ""))
        return out

    def read(self, addr: int, n: int) -> bytes | None:
        if not 0 < addr < 1 << 63:
            return None
        try:
            data = os.pread(self.fd, n, addr)
        except OSError:
            return None
        return data if len(data) == n else None

    def _type_type(self) -> int:
        """The address of `type` in the process: where it is in this one's libpython (the
        same file, mapped elsewhere)."""
        here = id(type)
        with open("/proc/self/maps") as f:
            for line in f:
                parts = line.split(maxsplit=5)
                a, _, b = parts[0].partition("-")
                start, end = int(a, 16), int(b, 16)
                if start <= here < end and len(parts) > 5:
                    path, at = parts[5].strip(), here - start + int(parts[2], 16)
                    break
            else:
                raise RuntimeError("`type` is in no file mapping of this process")
        for start, end, _perms, offset, name in self.regions:
            if name == path and offset <= at < offset + end - start:
                return start + at - offset
        raise RuntimeError(f"process {self.pid} has no mapping of {path}")

    def type_name(self, addr: int) -> str | None:
        """The name of the type at `addr`, or None when no type is there (a type's own
        type is `type` or a metaclass whose type is `type`)."""
        if addr in self._names:
            return self._names[addr]
        name = None
        head = self.read(addr + 8, 24)  # ob_type, ob_size, tp_name
        if head is not None:
            meta, _size, tp_name = struct.unpack("<QQQ", head)
            metameta = self.read(meta + 8, 8) if meta and meta != self.type_type else None
            if meta == self.type_type or (metameta is not None and struct.unpack(
                    "<Q", metameta)[0] == self.type_type):
                raw = self.read(tp_name, 80) if tp_name else None
                if raw is not None and b"\0" in raw:
                    text = raw.split(b"\0", 1)[0]
                    if text and all(32 < c < 127 for c in text):
                        name = text.decode()
        self._names[addr] = name
        return name


def pools(mem: Memory) -> list[tuple[int, tuple[int, ...]]]:
    """Every pool pymalloc has handed blocks out of: (address, its header's fields)."""
    out = []
    for start, end, perms, _offset, name in mem.regions:
        if name or not perms.startswith("rw"):
            continue  # pymalloc's arenas are anonymous mappings of their own
        at = (start + POOL - 1) & ~(POOL - 1)
        while at + POOL <= end:
            raw = mem.read(at, HEADER)
            if raw is not None:
                head = _HEAD.unpack(raw)
                count, szidx, nextoffset, maxnext = head[0] & 0xFFFFFFFF, head[5], head[6], head[7]
                size = (szidx + 1) << 4
                if (szidx < CLASSES and maxnext == POOL - size
                        and HEADER <= nextoffset <= maxnext + size
                        and count <= (POOL - HEADER) // size and head[4] < 1 << 20):
                    out.append((at, head))
            at += POOL
    return out


def live_blocks(mem: Memory, at: int, head: tuple[int, ...]) -> list[int] | None:
    """The offsets of a pool's live blocks: every block handed out (below its next
    offset) but those on its free list; None when they do not add up to its count."""
    count, freeblock, szidx, nextoffset = head[0] & 0xFFFFFFFF, head[1], head[5], head[6]
    data = mem.read(at, POOL)
    if data is None:
        return None
    size = (szidx + 1) << 4
    free: set[int] = set()
    b = freeblock
    while b and at <= b < at + POOL and len(free) <= POOL // size:
        free.add(b - at)
        b = struct.unpack_from("<Q", data, b - at)[0]
    live = [o for o in range(HEADER, nextoffset, size) if o not in free]
    # (the block at the next offset, when handed out by extending, is not yet on the list)
    if len(live) != count:
        live = [o for o in live if o < nextoffset - size] if len(live) == count + 1 else live
    return live if len(live) == count else None


def what(mem: Memory, data: bytes, offset: int) -> str:
    """The type of the object at the head of the block at `offset` of a pool's bytes (as
    is, behind a GC header, or behind the managed dict's pointers too), or `raw:SIZE`."""
    for skip in (0, 16, 32):
        if offset + skip + 16 > len(data):
            break
        refs, kind = _WORDS.unpack_from(data, offset + skip)
        if 0 < refs < 1 << 32 and kind > 1 << 12:
            name = mem.type_name(kind)
            if name is not None:
                return name
    return "raw"


def census(pid: int, young: int | None, top: int) -> dict[str, Any]:
    """One reading: per arena its pools and live bytes; for the young arenas (index >=
    `young`) and for all together, the live bytes by what holds them."""
    mem = Memory(pid)
    try:
        arenas: dict[int, list[int]] = {}
        kinds: dict[str, Counter[str]] = {"young": Counter(), "all": Counter()}
        counts: dict[str, Counter[str]] = {"young": Counter(), "all": Counter()}
        samples: dict[str, list[str]] = {}
        by_arena: dict[int, Counter[str]] = {}
        unreadable = 0
        for at, head in pools(mem):
            index, szidx = head[4], head[5]
            size = (szidx + 1) << 4
            live = live_blocks(mem, at, head)
            a = arenas.setdefault(index, [0, 0, 0])
            a[0] += 1
            a[1] += (head[0] & 0xFFFFFFFF) * size
            if live is None:
                unreadable += 1
                continue
            data = mem.read(at, POOL) or b""
            parts = ("all", "young") if young is not None and index >= young else ("all",)
            for o in live:
                name = what(mem, data, o)
                key = f"{name}:{size}" if name == "raw" else name
                for part in parts:
                    kinds[part][key] += size
                    counts[part][key] += 1
                by_arena.setdefault(index, Counter())[key] += size
                if "young" in parts and name == "str" and len(samples.setdefault(
                        "str", [])) < 40:
                    samples["str"].append(_text(mem, at + o))
        return {"pid": pid, "time": time.time(), "young_from": young, "unreadable": unreadable,
                "arenas": {str(k): v[:2] for k, v in sorted(arenas.items())},
                "young": [[k, counts["young"][k], n] for k, n in kinds["young"].most_common(top)],
                "all": [[k, counts["all"][k], n] for k, n in kinds["all"].most_common(top)],
                "samples": samples, "by_arena": {
                    str(k): v.most_common(8) for k, v in sorted(by_arena.items())}}
    finally:
        mem.close()


def _text(mem: Memory, obj: int) -> str:
    """A str's first characters, or what it is when not ASCII and short."""
    text = ascii_text(mem.read, obj, 60)
    return text if text is not None else "<not ASCII, or long>"


class Heap:
    """A snapshot of the process's heap, for who points at what: every live pymalloc
    block and every brk-heap chunk glibc has in use, each named by the object at its head
    (`raw` for none: a dict's keys, a list's items, an instance's values)."""

    def __init__(self, mem: Memory) -> None:
        self.mem = mem
        self.blocks: list[tuple[int, int]] = []  # (start, size), sorted
        self.data: dict[int, bytes] = {}  # a pool's or the brk heap's bytes, by its start
        self.arena: dict[int, int] = {}  # a pool's arena
        for at, head in pools(mem):
            live = live_blocks(mem, at, head)
            data = mem.read(at, POOL)
            if live is None or data is None:
                continue
            size = (head[5] + 1) << 4
            self.data[at], self.arena[at] = data, head[4]
            self.blocks += [(at + o, size) for o in live]
        # where else a pointer may be, its holder named by the region alone: glibc's
        # thread arenas and mapped chunks, threads' stacks, libraries' static data
        self.regions: list[tuple[int, int, str]] = []
        pooled = {at for at in self.data}
        for start, end, perms, _offset, name in mem.regions:
            if name == "[heap]":
                self._chunks(start, end)
            elif perms.startswith("rw") and mem.resident.get(start) and not any(
                    start <= p < end for p in pooled) and name not in ("[vvar]", "[vsyscall]"):
                if mem.resident[start] < (end - start) // 4:
                    start = max(start, end - (1 << 20))  # (a stack's: its top MiB)
                data = mem.read(start, end - start)
                if data is not None:
                    self.data[start] = data
                    self.regions.append((start, end, name.rsplit("/", 1)[-1] or "anon"))
        self.blocks.sort()
        self.starts = [b for b, _ in self.blocks]

    def _chunks(self, start: int, end: int) -> None:
        """glibc's chunks in use in its brk heap: each one's size word, its flags in the
        low bits, walked from the heap's start; one is in use when the next says so."""
        data = self.mem.read(start, end - start)
        if data is None:
            return
        self.data[start] = data
        at, chunks = 0, []
        while at + 16 <= len(data):
            size = struct.unpack_from("<Q", data, at + 8)[0] & ~7
            if size < 32 or at + size > len(data):
                break
            chunks.append((at, size))
            at += size
        for (at, size), (nxt, _) in itertools.pairwise(chunks):
            if struct.unpack_from("<Q", data, nxt + 8)[0] & 1:
                self.blocks.append((start + at + 16, size - 16))

    def holder(self, address: int) -> tuple[int, int] | None:
        """The live block or chunk holding `address`: (its start, its size)."""
        import bisect

        i = bisect.bisect_right(self.starts, address) - 1
        if i >= 0 and address < self.starts[i] + self.blocks[i][1]:
            return self.blocks[i]
        for start, end, _name in self.regions:
            if start <= address < end:
                return address, 0  # (a region's: no block)
        return None

    def region(self, address: int) -> str:
        return next((f"in {name}" for start, end, name in self.regions
                     if start <= address < end), "in ?")

    def kind(self, start: int, size: int) -> str:
        if size == 0:
            return self.region(start)
        pool = start & ~(POOL - 1)
        if pool in self.data and size <= 512:
            return what(self.mem, self.data[pool], start - pool)
        raw = self.mem.read(start, 48)
        name = what(self.mem, raw, 0) if raw is not None else "raw"
        return f"{name}:{size}" if name == "raw" else name

    def pointing_at(self, targets: list[int]) -> dict[int, list[tuple[int, int]]]:
        """Each target's holders: the live blocks (start, size) with a word equal to it."""
        out: dict[int, list[tuple[int, int]]] = {t: [] for t in targets}
        for base, data in self.data.items():
            for t in targets:
                word = struct.pack("<Q", t)
                i = data.find(word)
                while i >= 0:
                    if i % 8 == 0:
                        held = self.holder(base + i)
                        if held is not None and held[0] != t:
                            out[t].append(held)
                    i = data.find(word, i + 1)
        return out


def owners(pid: int, young: int, kinds: set[str] | None, sample: int, depth: int
           ) -> Counter[str]:
    """Who holds the live blocks of the young arenas (index >= `young`; of `kinds` only,
    when given): up to `sample` of them, each followed up through its holders (raw blocks
    and plain containers) to the first object of another type, `depth` steps at most;
    the chains counted."""
    mem = Memory(pid)
    try:
        heap = Heap(mem)
        chosen = []
        for start, size in heap.blocks:
            pool = start & ~(POOL - 1)
            if heap.arena.get(pool, -1) >= young:
                k = heap.kind(start, size)
                if kinds is None or k in kinds or k.split(":")[0] in kinds:
                    chosen.append((start, k))
        step = max(1, len(chosen) // sample)
        chains: dict[int, list[str]] = {s: [k] for s, k in chosen[::step][:sample]}
        ends = {s: s for s in chains}  # each chain's last block
        for _ in range(depth):
            going = {s: e for s, e in ends.items() if chains[s][-1].split(":")[0].split(
                " ")[0] in PLAIN or len(chains[s]) == 1}
            if not going:
                break
            found = heap.pointing_at(sorted(set(going.values())))
            for s, e in going.items():
                held = found.get(e) or []
                if not held:
                    chains[s].append("(none)")
                    del ends[s]
                    continue
                named = [(heap.kind(h, size), h) for h, size in held]
                # the most telling holder: an object of a type of its own, then a container
                named.sort(key=lambda kh: (kh[0].split(":")[0] in PLAIN,
                                           kh[0].startswith("in ")))
                more = f" (+{len(held) - 1})" if len(held) > 1 else ""
                chains[s].append(named[0][0] + more)
                ends[s] = named[0][1]
                if named[0][0].startswith("in "):
                    del ends[s]
        return Counter(" <- ".join(c) for c in chains.values())
    finally:
        mem.close()


# containers whose holder says more than they do
PLAIN = {"raw", "dict", "list", "tuple", "set", "cell", "frozenset", "collections.deque"}


def show(c: dict[str, Any]) -> str:
    young = c["young_from"]
    lines = [f"pid {c['pid']} at {time.strftime('%H:%M:%S', time.gmtime(c['time']))} UTC: "
             f"{len(c['arenas'])} arenas, {c['unreadable']} pools unread"]
    lines.append("arena: pools in use / live KiB (of 1024)")
    lines.append("  " + "  ".join(f"{k}:{p}/{b >> 10}" for k, (p, b) in c["arenas"].items()))
    for part in ("young", "all") if young is not None else ("all",):
        title = f"arenas >= {young}" if part == "young" else "every arena"
        lines.append(f"live blocks in {title} by type (blocks, KiB):")
        lines += [f"  {k:40} {n:>8} {b / 1024:>9.1f}" for k, n, b in c[part]]
    for s in c["samples"].get("str", []):
        lines.append(f"  str: {s!r}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("pid", type=int)
    ap.add_argument("--young", type=int, help="the first arena index counted young")
    ap.add_argument("--top", type=int, default=20)
    ap.add_argument("--every", type=float, help="read again every S seconds (to its exit)")
    ap.add_argument("--out", type=Path, help="append each reading as a JSON line")
    ap.add_argument("--owners", nargs="*", metavar="KIND",
                    help="with --young: who holds the young arenas' blocks (of these kinds)")
    ap.add_argument("--sample", type=int, default=200)
    ap.add_argument("--depth", type=int, default=4)
    a = ap.parse_args(argv)
    if a.owners is not None:
        if a.young is None:
            ap.error("--owners needs --young")
        chains = owners(a.pid, a.young, set(a.owners) or None, a.sample, a.depth)
        for chain, n in chains.most_common(a.top):
            print(f"{n:6}  {chain}")
        return 0
    while True:
        c = census(a.pid, a.young, a.top)
        if a.out is not None:
            with a.out.open("a") as f:
                f.write(json.dumps(c) + "\n")
        print(show(c), flush=True)
        if a.every is None:
            return 0
        time.sleep(a.every)
        if not Path(f"/proc/{a.pid}").exists():
            return 0


if __name__ == "__main__":
    sys.exit(main())
