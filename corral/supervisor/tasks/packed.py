"""Maps of many small records held in two large buffers (issue 55, decision 951).

A suspended task waits for a person for days, and thousands are suspended at once: what
each keeps (its id and `seq`, its pending ask packed, the ask's id) were, in dicts, four
or five small objects a task, blocks of CPython's small-object allocator made during the
burst that suspended them, among the burst's short-lived objects. That allocator gives a
1 MiB arena back only once every block in it is free, so the records kept the burst's
arenas (bench/RESULTS.md). A `PackedMap` holds its entries, each a str key and a bytes
value, one after another in a bytearray, and where each starts in an array indexed by
the key's hash (open addressing, linear probing): two buffers however many entries, each
one block of the C allocator's, which `malloc_trim` gives back once they shrink.

Lookups cost a few microseconds rather than a dict's tenth: the maps are read when an ask
is asked, ended or listed, and when a suspended task is looked up, not per task run.
Entries iterate in the order they were set (a value set again moves to the end).
"""

from __future__ import annotations

import struct
from array import array
from collections.abc import Iterator

_EMPTY = -1  # a slot never used since the index was made
_GONE = -2  # a slot whose entry was removed (a probe goes on past it)
# an entry: its key's length (negative once removed), its value's, the key, the value
_HEAD = struct.Struct("<iI")
_MIN_SLOTS = 8


class PackedMap:
    """str -> bytes, the entries packed in one bytearray (see the module)."""

    __slots__ = ("_data", "_gone", "_index", "_len", "_used")

    def __init__(self) -> None:
        self._index = array("q", (_EMPTY,)) * _MIN_SLOTS
        self._data = bytearray()
        self._len = 0  # entries held
        self._used = 0  # slots not _EMPTY (held or _GONE)
        self._gone = 0  # bytes of _data of entries removed

    def __len__(self) -> int:
        return self._len

    def _find(self, key: str, kb: bytes) -> tuple[int, int]:
        """(the slot holding `key`, -1 if none; the slot it would be set in)."""
        index, data = self._index, self._data
        mask = len(index) - 1
        i = hash(key) & mask
        free = -1
        n = len(kb)
        while True:
            at = index[i]
            if at == _EMPTY:
                return -1, (i if free < 0 else free)
            if at == _GONE:
                if free < 0:
                    free = i
            elif _HEAD.unpack_from(data, at)[0] == n and data[at + 8:at + 8 + n] == kb:
                return i, i
            i = (i + 1) & mask

    def _value(self, at: int) -> bytes:
        n, size = _HEAD.unpack_from(self._data, at)
        start = at + 8 + n
        return bytes(self._data[start:start + size])

    def get(self, key: str) -> bytes | None:
        slot = self._find(key, key.encode())[0]
        return None if slot < 0 else self._value(self._index[slot])

    def __getitem__(self, key: str) -> bytes:
        found = self.get(key)
        if found is None:
            raise KeyError(key)
        return found

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self._find(key, key.encode())[0] >= 0

    def __setitem__(self, key: str, value: bytes) -> None:
        kb = key.encode()
        slot, free = self._find(key, kb)
        data = self._data
        if slot >= 0:
            self._drop(self._index[slot])
        else:
            slot = free
            if self._index[slot] == _EMPTY:
                self._used += 1
            self._len += 1
        self._index[slot] = len(data)
        data += _HEAD.pack(len(kb), len(value))
        data += kb
        data += value
        if self._used * 2 > len(self._index):
            self._remake()

    def _drop(self, at: int) -> None:
        n, size = _HEAD.unpack_from(self._data, at)
        _HEAD.pack_into(self._data, at, -1 - n, size)
        self._gone += 8 + n + size

    def pop(self, key: str, default: bytes | None = None) -> bytes | None:
        slot = self._find(key, key.encode())[0]
        if slot < 0:
            return default
        at = self._index[slot]
        value = self._value(at)
        self._drop(at)
        self._index[slot] = _GONE
        self._len -= 1
        if self._gone > 4096 and self._gone * 2 > len(self._data):
            self._remake()
        return value

    def __delitem__(self, key: str) -> None:
        if self.pop(key) is None:
            raise KeyError(key)

    def _entries(self) -> Iterator[tuple[int, int, int]]:
        """(where, key length, value length) of each entry held, in the order set."""
        data = self._data
        at, end = 0, len(data)
        while at < end:
            n, size = _HEAD.unpack_from(data, at)
            if n >= 0:
                yield at, n, size
                at += 8 + n + size
            else:
                at += 8 - 1 - n + size

    def keys(self) -> list[str]:
        data = self._data
        return [data[at + 8:at + 8 + n].decode() for at, n, _ in self._entries()]

    def items(self) -> list[tuple[str, bytes]]:
        data = self._data
        return [(data[at + 8:at + 8 + n].decode(), bytes(data[at + 8 + n:at + 8 + n + size]))
                for at, n, size in self._entries()]

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def clear(self) -> None:
        self._index = array("q", (_EMPTY,)) * _MIN_SLOTS
        self._data = bytearray()
        self._len = self._used = self._gone = 0

    def _remake(self) -> None:
        """Both buffers made anew: the entries held, in order, and an index with room."""
        old = self._data
        slots = _MIN_SLOTS
        while slots < self._len * 4:
            slots *= 2
        index = array("q", (_EMPTY,)) * slots
        data = bytearray()
        mask = slots - 1
        for at, n, size in self._entries():
            i = hash(old[at + 8:at + 8 + n].decode()) & mask
            while index[i] != _EMPTY:
                i = (i + 1) & mask
            index[i] = len(data)
            data += old[at:at + 8 + n + size]
        self._index, self._data = index, data
        self._used, self._gone = self._len, 0


_SEQ = struct.Struct("<q")


class PackedInts(PackedMap):
    """str -> int (64 bits), packed as PackedMap's."""

    __slots__ = ()

    def get(self, key: str) -> int | None:  # type: ignore[override]
        found = PackedMap.get(self, key)
        return None if found is None else _SEQ.unpack(found)[0]

    def __getitem__(self, key: str) -> int:  # type: ignore[override]
        found = self.get(key)
        if found is None:
            raise KeyError(key)
        return found

    def __setitem__(self, key: str, value: int) -> None:  # type: ignore[override]
        PackedMap.__setitem__(self, key, _SEQ.pack(value))
