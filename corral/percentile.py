"""Latency percentiles for `corral stats`, one rule for every window that reports them."""

from __future__ import annotations

from collections.abc import Sequence


def percentile_ms(ordered: Sequence[float], q: float) -> float | None:
    """The `q` quantile (0 < q < 1) of `ordered` seconds, sorted ascending, in milliseconds
    to the microsecond: the value at rank ⌊q·n⌋ (nearest rank), None for no values."""
    if not ordered:
        return None
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 3)
