"""Task ids: UUIDv7 (RFC 9562), unique across processes and nodes, and sortable.

48 bits of Unix milliseconds, a 12-bit count within the millisecond (seeded at random),
62 random bits: one process's ids strictly increase even when the wall clock steps back.
Ids from before UUIDv7 (12 hex characters) stay valid.
"""

from __future__ import annotations

import os
import re
import time

_COUNTER_MAX = 0xFFF
# a fresh millisecond starts its counter in the lower half: room for the ids after it
_SEED_MASK = 0x7FF
FORMAT = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
# any task id: a UUIDv7, or one from before them
ANY = re.compile(f"{FORMAT.pattern}|[0-9a-f]{{12}}")


_RANDOM_BATCH = 256  # ids' worth of random bytes asked of the kernel at once
# an id's random hex digits: 16 for the id (62 random bits, with the variant's 2), 3 for
# the seed of its counter when it begins a millisecond (11 bits)
_RAND_HEX = 19
# the variant's hex digit (0b10 then two random bits) for a random hex digit
_VARIANT = {f"{i:x}": "89ab"[i & 3] for i in range(16)}
# the counter's three hex digits, looked up by its high four bits and its low eight, not
# formatted per id (a table of every counter's text would cost a quarter MiB of memory)
_HIGH = [f"{i:x}" for i in range(16)]
_LOW = [f"{i:02x}" for i in range(256)]


class IdClock:
    """Makes ids; one per process (`new_id`), or one per test."""

    __slots__ = ("_head", "_random", "_used", "counter", "last_ms")

    def __init__(self) -> None:
        self.last_ms = -1
        self.counter = 0
        # os.urandom's hex in batches (a syscall per id cost as much as the rest), an id's
        # text cut from the digits (twice as fast as formatting a 128-bit integer)
        self._random = ""
        self._used = 0
        self._head = ""  # the text of `last_ms`: the id's first two groups, their dashes

    def forget_random(self) -> None:
        """After a fork: the child must not make the parent's ids."""
        self._random, self._used = "", 0

    def make(self, now_ns: int | None = None) -> str:
        ms = (time.time_ns() if now_ns is None else now_ns) // 1_000_000
        used = self._used
        if used + _RAND_HEX > len(self._random):
            self._random, used = os.urandom(_RAND_HEX * _RANDOM_BATCH // 2).hex(), 0
        self._used = used + _RAND_HEX
        rand = self._random
        if ms > self.last_ms:
            self.last_ms, self.counter = ms, int(rand[used + 16:used + 19], 16) & _SEED_MASK
            self._head = ""
        else:  # the same millisecond, or the clock went back: count on from the last id
            self.counter += 1
            if self.counter > _COUNTER_MAX:
                self.last_ms += 1
                self.counter = int(rand[used + 16:used + 19], 16) & _SEED_MASK
                self._head = ""
        head = self._head
        if not head:
            h = f"{self.last_ms:012x}"
            head = self._head = f"{h[:8]}-{h[8:]}-"
        # 48 bits of time, 7, 12 of the counter, the variant's 0b10, then 62 random bits
        counter = self.counter
        return (f"{head}7{_HIGH[counter >> 8]}{_LOW[counter & 0xFF]}-{_VARIANT[rand[used]]}"
                f"{rand[used + 1:used + 4]}-{rand[used + 4:used + 16]}")

    def make_many(self, n: int, now_ns: int) -> list[str]:
        """`make(now_ns)` `n` times: within a millisecond that is not new each is cut from
        the same head with the counter's next value, without a call per id."""
        ids: list[str] = []
        ms = now_ns // 1_000_000
        while len(ids) < n:
            if ms > self.last_ms or self.counter >= _COUNTER_MAX or not self._head:
                ids.append(self.make(now_ns))  # (a new millisecond: make's own way)
                continue
            rand, used, head, counter = self._random, self._used, self._head, self.counter
            # as many as the random digits held and the counter's room allow
            k = min(n - len(ids), (len(rand) - used) // _RAND_HEX, _COUNTER_MAX - counter)
            if k <= 0:
                ids.append(self.make(now_ns))  # (the random digits run out: make's way)
                continue
            for _ in range(k):
                counter += 1
                ids.append(f"{head}7{_HIGH[counter >> 8]}{_LOW[counter & 0xFF]}-"
                           f"{_VARIANT[rand[used]]}{rand[used + 1:used + 4]}-"
                           f"{rand[used + 4:used + 16]}")
                used += _RAND_HEX
            self.counter, self._used = counter, used
        return ids


_clock = IdClock()
os.register_at_fork(after_in_child=_clock.forget_random)


def new_id() -> str:
    return _clock.make()


def new_ids(n: int) -> list[str]:
    """`n` new task ids in one call (a map's turn of inputs): one reading of the clock."""
    return _clock.make_many(n, time.time_ns())


def is_task_id(text: str) -> bool:
    return ANY.fullmatch(text) is not None
