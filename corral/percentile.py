"""Latency percentiles for `corral stats`, one rule for every window that reports them,
and the window that keeps their latest values."""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Iterator, Sequence


def percentile_ms(ordered: Sequence[float], q: float) -> float | None:
    """The `q` quantile (0 < q < 1) of `ordered` seconds, sorted ascending, in milliseconds
    to the microsecond: the value at rank ⌊q·n⌋ (nearest rank), None for no values."""
    if not ordered:
        return None
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 3)


class Window:
    """The latest `size` values, oldest first, as doubles in one array: a deque of floats
    held an object of 32 bytes and a slot of 8 a value, so windows that fill over hours of
    calls grew the heap by that much (issue 90); here 8."""

    __slots__ = ("_next", "size", "values")

    def __init__(self, size: int) -> None:
        self.size = size
        self.values = array("d")
        self._next = 0  # once full: the oldest value's place, the next one replaced

    def append(self, value: float) -> None:
        if len(self.values) < self.size:
            self.values.append(value)
        else:
            self.values[self._next] = value
            self._next = (self._next + 1) % self.size

    def extend(self, values: Iterable[float]) -> None:
        for value in values:
            self.append(value)

    def clear(self) -> None:
        self.values, self._next = array("d"), 0

    def __len__(self) -> int:
        return len(self.values)

    def __iter__(self) -> Iterator[float]:
        yield from self.values[self._next:]
        yield from self.values[:self._next]
