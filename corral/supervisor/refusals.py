"""The boundary's refusals, recorded (DESIGN section 27, issue 88): every layer that
refuses an agent something — the egress layer (a connect, a send, a bind), a path outside
its own, a policy rule, a pin, a taint — tells `BoundaryRefusals.refused`, and nothing else.

A refusal is counted at once (`counts`: `corral_boundary_refusals_total{agent,kind}` in
/metrics) and, within its (agent, kind)'s rate, emitted on the engine's stream as a
`BoundaryRefused`: the supervisor publishes it on the bus (`boundary.refused`, `corral
events`, the dashboard) and the daemon writes its audit row. Past the rate a refusal is
counted and not emitted; the next one emitted says how many were not (`unsaid`). What is
kept is bounded: MAX_KEYS (agent, kind) pairs, the least recently refused forgotten first
(and an agent's when it is removed), their counts kept by kind as agent FORGOTTEN's, so no
total goes back; and a target cut at MAX_TARGET characters — an agent refusing itself in a
loop grows nothing.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

import msgspec

from ..ratelimit import TokenBucket
from .stream import Stream

TOPIC = "boundary.refused"
# what an (agent, kind) may say a minute (a burst of as many), beyond: counted alone
PER_MINUTE = 60
MAX_KEYS = 4096
MAX_TARGET = 512
# the kinds the layers record (a refusal of another kind is recorded all the same)
KINDS = ("connect", "send", "bind", "open", "policy", "pin", "taint")
FORGOTTEN = "(forgotten)"  # whose counts are those of pairs forgotten (no agent's name)


class BoundaryRefused(msgspec.Struct, frozen=True, kw_only=True):
    """One refusal as the bus and the audit carry it."""

    agent: str
    task: str | None
    kind: str
    target: str
    tenant: str | None = None
    unsaid: int = 0  # refusals of this agent and kind counted and not emitted before it
    time: float = 0.0


class _Key:
    __slots__ = ("bucket", "count", "unsaid")

    def __init__(self, bucket: TokenBucket) -> None:
        self.bucket = bucket
        self.count = 0
        self.unsaid = 0


class BoundaryRefusals:
    """The one recorder of the boundary's refusals: `refused(...)`."""

    def __init__(self, stream: Stream, *, per_minute: float = PER_MINUTE,
                 max_keys: int = MAX_KEYS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = stream
        self.per_minute = per_minute
        self.max_keys = max_keys
        self.clock = clock
        self._keys: OrderedDict[tuple[str, str], _Key] = OrderedDict()
        self.unsaid = 0  # refusals counted and never emitted, in all
        self._folded: dict[str, int] = {}  # kind -> the forgotten pairs' counts

    def forget(self, agent: str) -> None:
        """An agent removed: its pairs forgotten (its counts kept as FORGOTTEN's)."""
        for key in [key for key in self._keys if key[0] == agent]:
            self._fold(key)

    def _fold(self, key: tuple[str, str]) -> None:
        self._folded[key[1]] = self._folded.get(key[1], 0) + self._keys.pop(key).count

    def refused(self, agent: str, kind: str, target: str, *, task: str | None = None,
                tenant: str | None = None) -> bool:
        """Record that corral's boundary refused agent `agent` (its task `task`, None: a
        call of no task) a `kind` (one of KINDS) of `target` (an address, a path, a tool);
        True when it was emitted (an event and an audit row), False when only counted."""
        key = (agent, kind)
        entry = self._keys.get(key)
        if entry is None:
            if len(self._keys) >= self.max_keys:
                self._fold(next(iter(self._keys)))
            entry = self._keys[key] = _Key(TokenBucket(self.per_minute, self.clock))
        else:
            self._keys.move_to_end(key)
        entry.count += 1
        if not entry.bucket.take():
            entry.unsaid += 1
            self.unsaid += 1
            return False
        unsaid, entry.unsaid = entry.unsaid, 0
        if len(target) > MAX_TARGET:
            target = f"{target[:MAX_TARGET]}… ({len(target)} characters)"
        self.stream.emit(BoundaryRefused(agent=agent, task=task, kind=kind, target=target,
                                         tenant=tenant, unsaid=unsaid, time=time.time()))
        return True

    @property
    def counts(self) -> dict[tuple[str, str], int]:
        """BoundaryRefusals by (agent, kind), as /metrics says them."""
        return {**{key: entry.count for key, entry in self._keys.items()},
                **{(FORGOTTEN, kind): n for kind, n in self._folded.items()}}
