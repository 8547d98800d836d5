"""The interpreter's table of interned strings in a running process (a soak's daemon), read
from outside: libpython's static `interned` dict, found at its symbol's address in the
mapped library and read through `/proc/PID/mem` (the process is not stopped or touched).

A string interned and then let go leaves its slot used until the table is rebuilt, which
happens when no free slot is left: at three times the live count, so a table that churns
doubles (2^16 -> 2^17 slots, a 0.92 MiB block: bench/RESULTS.md, "Soak"). `free` is how
many more interned strings the table takes before that; its fall per second is the churn.

    .venv/bin/python -m bench.soak_interned PID [--every SECONDS] [--out FILE]

One line a reading: `seconds live free slots` (tab-separated; `--out` appends to FILE too).
CPython 3.11's layout of a dict and its keys (Include/cpython/dictobject.h,
Objects/dict-common.h); the library must keep its symbol table (`nm` finds `interned`).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import struct
import subprocess
import sys
import time
from collections.abc import Callable


def _library(pid: int) -> tuple[str, int]:
    """libpython's file and its load address in the process."""
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            fields = line.split()
            if len(fields) >= 6 and "libpython" in fields[5] and int(fields[2], 16) == 0:
                return fields[5], int(fields[0].split("-")[0], 16)
    raise SystemExit(f"process {pid} has no libpython mapped (a static build?)")


def _symbol(library: str, name: str) -> int:
    out = subprocess.run(["nm", library], capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[2] == name:
            return int(parts[0], 16)
    raise SystemExit(f"{library} has no symbol {name} (stripped?)")


def ascii_text(read: Callable[[int, int], bytes | None], address: int,
               most: int) -> str | None:
    """An ASCII str's text (PyASCIIObject: its length, its state, the bytes after) read
    through `read(address, size)`; None when it is not ASCII or longer than `most`."""
    head = read(address + 16, 32)
    if head is None:
        return None
    (length,) = struct.unpack_from("<q", head, 0)
    if not head[16] & 0x40 or not 0 <= length <= most:
        return None
    text = read(address + 48, length)
    return None if text is None else text.decode("ascii", "replace")


class Table:
    def __init__(self, pid: int) -> None:
        library, base = _library(pid)
        self.where = base + _symbol(library, "interned")
        self.mem = os.open(f"/proc/{pid}/mem", os.O_RDONLY)

    def _read(self, address: int, size: int) -> bytes:
        return os.pread(self.mem, size, address)

    def entries(self, since: int) -> tuple[int, list[int]]:
        """The table's entries from `since` on (a new string is appended at the end until
        the table is rebuilt): how many there are now, and the strings' addresses in those
        (0: interned and let go already)."""
        (d,) = struct.unpack("<Q", self._read(self.where, 8))
        (keys,) = struct.unpack("<Q", self._read(d + 32, 8))
        head = self._read(keys, 32)
        index_bytes, kind = 1 << head[9], head[10]
        (count,) = struct.unpack("<q", head[24:32])
        size = 16 if kind else 24  # (key, value) a unicode-keyed table's entry, else hash too
        since = min(since, count)
        raw = self._read(keys + 32 + index_bytes + since * size, (count - since) * size)
        return count, [struct.unpack_from("<Q", raw, i * size + (0 if kind else 8))[0]
                       for i in range(count - since)]

    def text(self, address: int) -> str | None:
        return ascii_text(self._read, address, 200)

    def read(self) -> tuple[int, int, int]:
        """(live strings, free slots before a rebuild, slots)."""
        (d,) = struct.unpack("<Q", self._read(self.where, 8))
        # PyDictObject: refcnt, type, ma_used, ma_version_tag, ma_keys
        used, _tag, keys = struct.unpack("<qQQ", self._read(d + 16, 24))
        # PyDictKeysObject: dk_refcnt, dk_log2_size (u8) .. dk_version (u32), dk_usable
        head = self._read(keys, 24)
        log2 = head[8]
        (usable,) = struct.unpack("<q", head[16:24])
        return used, usable, 1 << log2


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("pid", type=int)
    ap.add_argument("--every", type=float, default=0.0, help="0: one reading")
    ap.add_argument("--out", default="")
    ap.add_argument("--new", action="store_true",
                    help="print the strings interned after the first reading, as seen")
    a = ap.parse_args()
    table = Table(a.pid)
    began = time.monotonic()
    if a.new:
        return _new_names(table, a.every or 1.0, a.out, began)
    while True:
        try:
            live, free, slots = table.read()
        except OSError:
            return 0  # the process ended
        line = f"{round(time.monotonic() - began)}\t{live}\t{free}\t{slots}"
        print(line, flush=True)
        if a.out:
            with open(a.out, "a") as f:
                f.write(line + "\n")
        if a.every <= 0:
            return 0
        time.sleep(a.every)


def _new_names(table: Table, every: float, out: str, began: float) -> int:
    """Each string interned after the start, as its entry is seen at the table's end:
    one interned and let go within a reading's interval shows as `<gone>`."""
    count, _ = table.entries(1 << 62)
    while True:
        time.sleep(every)
        try:
            now, keys = table.entries(count)
        except OSError:
            return 0
        if now < count:  # rebuilt: its entries packed anew
            count = now
            continue
        count = now
        for key in keys:
            text = "<gone>"
            if key:
                with contextlib.suppress(OSError):
                    text = repr(table.text(key))
            line = f"{time.monotonic() - began:.1f}\t{text}"
            print(line, flush=True)
            if out:
                with open(out, "a") as f:
                    f.write(line + "\n")


if __name__ == "__main__":
    sys.exit(main())
