"""One agent's task counters and latency window, for `corral stats`."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from ...percentile import Window, percentile_ms
from ...ratelimit import TokenBucket
from .taskmachine import TERMINAL

LATENCY_WINDOW = 1000
# removed agents whose counts are kept by name; past this many the oldest's are folded
# into one row (FOLDED), so that churn of runtime agents keeps memory bounded
RETIRED_AGENTS = 1024
FOLDED = "(removed)"
COUNTED = ("accepted", "succeeded", "failed", "timed_out", "cancelled", "lost", "retried",
           "refused")


class AgentTasks:
    """An agent's counts by outcome, tasks running, latencies, and rate limit's bucket."""

    __slots__ = ("bucket", "counts", "latencies", "running")

    def __init__(self, per_minute: float) -> None:
        self.bucket = TokenBucket(per_minute) if per_minute else None
        self.counts = dict.fromkeys(COUNTED, 0)
        self.latencies = Window(LATENCY_WINDOW)
        self.running = 0

    def stats(self, depth: int) -> dict[str, Any]:
        """`depth`: its tasks waiting, as the queue says (so it cannot drift)."""
        finished = sum(self.counts[k] for k in TERMINAL)
        lat = sorted(self.latencies)
        return {
            **self.counts,
            "success_rate": round(self.counts["succeeded"] / finished, 4) if finished else None,
            "queue_depth": depth,
            "running": self.running,
            "latency_ms": {"p50": percentile_ms(lat, 0.50), "p95": percentile_ms(lat, 0.95),
                           "p99": percentile_ms(lat, 0.99), "window": len(lat)},
        }


def totals(per_agent: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    rows = list(per_agent)
    total: dict[str, Any] = {k: sum(s[k] for s in rows)
                             for k in (*COUNTED, "queue_depth", "running")}
    finished = sum(total[k] for k in TERMINAL)
    total["success_rate"] = round(total["succeeded"] / finished, 4) if finished else None
    return total


class RetiredCounts:
    """The task counts of removed agents: totals never go backwards when an agent goes
    (Prometheus counters are monotonic), and an agent added again counts on from them."""

    __slots__ = ("by_name",)

    def __init__(self) -> None:
        # name -> (its tenant, its counts); insertion order: the oldest removed first
        self.by_name: dict[str, tuple[str, dict[str, int]]] = {}

    def keep(self, name: str, tenant: str, q: AgentTasks) -> None:
        self.by_name[name] = (tenant, dict(q.counts))
        if len(self.by_name) > RETIRED_AGENTS:
            oldest = next(n for n in self.by_name if n != FOLDED)
            _, counts = self.by_name.pop(oldest)
            _, folded = self.by_name.setdefault(FOLDED, ("", dict.fromkeys(COUNTED, 0)))
            for k in COUNTED:
                folded[k] += counts[k]

    def count(self, name: str, outcome: str) -> None:
        kept = self.by_name.get(name)
        if kept is not None:
            kept[1][outcome] += 1

    def take(self, name: str, q: AgentTasks) -> None:
        """The agent is back under its name: `q` counts on from its counts."""
        kept = self.by_name.pop(name, None)
        if kept is not None:
            for k in COUNTED:
                q.counts[k] += kept[1][k]

    def stats(self) -> dict[str, Any]:
        total: dict[str, Any] = {k: sum(c[k] for _, c in self.by_name.values())
                                 for k in COUNTED}
        return {**total, "queue_depth": 0, "running": 0}
