"""A gateway client's counts and limits: its calls, errors and latencies (CallCounter),
and its calls in flight and rate (Limiter), as GatewayService keeps them per client."""

from __future__ import annotations

from typing import Any

import msgspec

from .. import jsonrpc
from ..jsonrpc import RpcError
from ..percentile import Window, percentile_ms
from ..ratelimit import TokenBucket
from ..text import plural
from .caller import GatewayCaller

LATENCY_SAMPLES = 2048  # per client and per tool: percentiles over the latest calls
# a client's refusals by its own limits: one audit row in each of these many seconds, the
# others counted and said in the next (decision 1742)
REFUSAL_ROW_EVERY = 60.0


class CallCounter(msgspec.Struct):
    """Calls, errors and the calls' own latencies; the time they waited for a person
    apart: an approval's minutes in the percentiles would make them a person's."""

    calls: int = 0
    errors: int = 0
    latencies: Window = msgspec.field(default_factory=lambda: Window(LATENCY_SAMPLES))
    attributed: int = 0  # a replica's calls made as a task's step, and as none's
    unattributed: int = 0
    waited: int = 0  # calls that waited for a person, and how long in all
    waited_s: float = 0.0

    def add(self, seconds: float, error: bool, waited: float = 0.0) -> None:
        self.calls += 1
        self.errors += error
        self.latencies.append(max(0.0, seconds - waited))
        if waited > 0:
            self.waited += 1
            self.waited_s += waited

    def summary(self) -> dict[str, Any]:
        lat = sorted(self.latencies)
        return {"calls": self.calls, "errors": self.errors,
                "p50_ms": percentile_ms(lat, 0.50), "p95_ms": percentile_ms(lat, 0.95),
                "p99_ms": percentile_ms(lat, 0.99), "waited": self.waited,
                "waited_ms": round(self.waited_s * 1000, 1)}

    def replica_summary(self) -> dict[str, Any]:
        """A client's row: with, for an agent replica's, its calls by attribution."""
        row = self.summary()
        if self.attributed or self.unattributed:
            row.update(attributed=self.attributed, unattributed=self.unattributed)
        return row


class RefusalRows(msgspec.Struct):
    """A caller's refusals' audit rows: `burst` of them written in each REFUSAL_ROW_EVERY
    seconds, the others counted and said in the next written (decisions 1742, 1743)."""

    burst: int = 1
    written: int = 0  # in the window that ends at `window_end`
    unwritten: int = 0  # since the last row written
    window_end: float = 0.0

    def refusal_row(self, now: float) -> int | None:
        """Whether a refusal now has its row: None (counted, not written), or how many
        since the last row were not written."""
        if now >= self.window_end:
            self.window_end, self.written = now + REFUSAL_ROW_EVERY, 0
        if self.written >= self.burst:
            self.unwritten += 1
            return None
        self.written += 1
        unwritten, self.unwritten = self.unwritten, 0
        return unwritten


class Limiter(RefusalRows):
    """A client's calls in flight and its rate (its bucket made again when that changes);
    its refusals by them one row a minute (decision 1742)."""

    in_flight: int = 0
    bucket: TokenBucket | None = None

    def admit(self, ident: GatewayCaller, rated: bool = True) -> None:
        """Take a slot (and, for a call, a token of its rate) or refuse."""
        if self.in_flight >= ident.max_concurrent:
            raise RpcError(jsonrpc.REFUSED, f"gateway client {ident.name} has "
                                            f"{plural(self.in_flight, 'call')} in flight, its "
                                            "limit (max_concurrent)")
        if rated and ident.rate_per_minute:
            if self.bucket is None or self.bucket.per_minute != ident.rate_per_minute:
                self.bucket = TokenBucket(ident.rate_per_minute)
            if not self.bucket.take():
                raise RpcError(jsonrpc.REFUSED, f"gateway client {ident.name} is over its "
                                                f"rate of {plural(ident.rate_per_minute, 'call')} "
                                                "a minute")
        self.in_flight += 1
