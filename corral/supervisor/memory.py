"""Keeping the daemon's heap from growing: payloads given back, SQLite's pages in a slab,
one glibc arena for its threads.

Finished tasks' payloads go back to the system (docs/operations.md): glibc keeps a freed
block below its mmap threshold mapped in its heap, and kept outputs pin the pages around
the holes; `malloc_trim(0)` gives them back (1.8 ms with ~30 MiB). So once TRIM_AFTER
bytes were let go a trim runs TRIM_DELAY later, on a thread. Not taken: a lower
`M_MMAP_THRESHOLD`, which made a 100 KB task's round trip 60 % slower.

SQLite's page cache comes from a fixed slab apart from the heap: page_slab, decision 1660.
The daemon's threads share one glibc arena: arena_bound, decision 1795.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

TRIM_AFTER = 4 * 1024 * 1024
TRIM_DELAY = 1.0


def _malloc_trim() -> Callable[[int], int] | None:
    import ctypes  # on the first trim, not at every start-up

    try:
        trim: Callable[[int], int] = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to call
        return None
    return trim


class Releaser:
    """Counts the payload bytes let go and trims the heap after enough of them."""

    def __init__(self) -> None:
        self.released = 0  # bytes let go since the last trim
        self.total = 0  # and since the start
        self.trims = 0
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # the timer's
        self._trim: Callable[[int], int] | bool | None = False  # False: not looked up yet

    def let_go(self, nbytes: int) -> None:
        self.released += nbytes
        self.total += nbytes
        if self._timer is not None and self._loop is not None and self._loop.is_closed():
            self._timer = None  # its loop is gone (an embedding program's): it never runs
        if self.released >= TRIM_AFTER:
            self._arm()

    def settled(self, nbytes: int) -> None:
        """A wave of work held at once has ended, `nbytes` of it let go (an estimate): a
        trim within TRIM_DELAY whatever the amount, so that what a burst left free goes
        back once it is over rather than at the next 4 MiB."""
        self.let_go(nbytes)
        if self.released:
            self._arm()

    def _arm(self) -> None:
        if self._timer is None:
            self._loop = asyncio.get_running_loop()
            self._timer = self._loop.call_later(TRIM_DELAY, self.trim)

    def trim(self) -> None:
        self._timer = None
        self.released = 0
        if self._trim is False:
            self._trim = _malloc_trim()
        if callable(self._trim) and self._loop is not None:
            # off the loop: glibc walks every arena's free blocks, longer the bigger the
            # heap, and ctypes lets the GIL go meanwhile
            self._loop.run_in_executor(None, self._trim, 0)
            self.trims += 1


SLAB_SLOTS = 512  # SQLite's page buffers in the slab, every connection's together
SLAB_ENV = "CORRAL_SQLITE_SLAB"  # the slots instead (0: no slab, malloc's pages)
PAGE_BYTES = 4096  # the databases' page size (SQLite's default, never changed here)
SQLITE_CONFIG_PAGECACHE = 7
SQLITE_CONFIG_PCACHE_HDRSZ = 24
_slab: list[int] = []  # the slab's address: mapped for the process's life, never unmapped


def page_slab(slots: int | None = None) -> bool:
    """SQLite's page buffers from one fixed slab, mapped apart from glibc's heap.

    Each read transaction after another connection's commit empties a connection's page
    cache (WAL mode) and fills it again, page by page: with the buffers from malloc, every
    read on the loop freed and took back blocks of ~4.4 KB in the brk heap, amid Python's
    own long-lived blocks, which took parts of the holes, so that the next pages extended
    the heap (issue 90: a soak's brk extensions past its warm-up were all these). A slab's
    slots are reused as they are freed, and once few are left the caches reuse their least
    recently used pages; a page no slot holds comes from malloc as before. Done
    once, before any connection is open (SQLite's configuration is the process's, set only
    while it is shut down): False when not done (connections open, another SQLite than
    the sqlite3 module's, no slots asked for)."""
    import _sqlite3
    import ctypes
    import mmap
    import os
    import sqlite3

    if slots is None:
        asked = os.environ.get(SLAB_ENV) or ""
        slots = int(asked) if asked.isdigit() else SLAB_SLOTS
    if _slab or slots <= 0:
        return False
    try:
        # the module's own: its symbols are found through it, where it links them from
        # (ctypes.util.find_library ran ldconfig, a process, at every daemon's start)
        lib = ctypes.CDLL(_sqlite3.__file__)
        lib.sqlite3_memory_used.restype = ctypes.c_int64
        lib.sqlite3_libversion.restype = ctypes.c_char_p
    except (OSError, AttributeError, TypeError):
        return False
    if lib.sqlite3_libversion().decode() != sqlite3.sqlite_version:
        return False  # the module's own copy of SQLite, out of reach
    if lib.sqlite3_memory_used() != 0:
        return False  # a connection is open: shutting SQLite down would pull it away
    if lib.sqlite3_shutdown() != 0:
        return False
    header = ctypes.c_int(0)
    if lib.sqlite3_config(ctypes.c_int(SQLITE_CONFIG_PCACHE_HDRSZ), ctypes.byref(header)):
        lib.sqlite3_initialize()
        return False
    size = (PAGE_BYTES + header.value + 7) & ~7
    # mapped by libc, not by a Python object: connections closed at the interpreter's
    # exit still write to their pages, after its objects are gone
    libc = ctypes.CDLL(None)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long]
    start = libc.mmap(None, size * slots, mmap.PROT_READ | mmap.PROT_WRITE,
                      mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0)
    done = start not in (None, ctypes.c_void_p(-1).value) and lib.sqlite3_config(
        ctypes.c_int(SQLITE_CONFIG_PAGECACHE), ctypes.c_void_p(start), ctypes.c_int(size),
        ctypes.c_int(slots)) == 0
    lib.sqlite3_initialize()
    if done:
        _slab.append(start)
    return done


ARENAS = 2  # glibc's arenas in the daemon: the main one (the loop's) and one its threads share
M_ARENA_MAX = -8  # mallopt's parameter (malloc.h)


def arena_bound(arenas: int = ARENAS) -> bool:
    """At most `arenas` glibc arenas in this process, set before its threads start.

    glibc gives each new thread an arena of its own up to eight a core, each a heap whose
    holes and free top only that arena reuses: the daemon's long-lived threads (the store's
    writer, the executors, the spawners) took up to 15 of them, and in a soak their resident bytes
    kept growing after the warm-up (issue 90). False when not done: not glibc, or the
    operator's own `MALLOC_ARENA_MAX` (or `GLIBC_TUNABLES`' arena_max), which is kept."""
    import ctypes
    import os

    if "MALLOC_ARENA_MAX" in os.environ or "arena_max" in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS)
        return False
    return bool(mallopt(M_ARENA_MAX, arenas))
