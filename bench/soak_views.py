"""The soak's cross-tenant watch: what each tenant made, and whether the other ever saw it.

Each tenant's ledger keeps the ids its own requests were answered (tasks, a spawn's
children, a run and its steps' tasks, a team call and its members' tasks, the trace ids
of them all) and its mark, a random word every input, state, definition and log line of
it carries. Every answer a tenant reads is walked whole: a string that is an id of the
other tenant's ledger, holds the other's mark, or names the other tenant is a sighting.
A probe asks for one of the other's ids directly: anything but a 404 is a sighting.
"""

from __future__ import annotations

import random
import re
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any


class Ledger:
    """One tenant's: its name, its mark, and the ids it was answered, by kind."""

    def __init__(self, tenant: str, mark: str) -> None:
        self.tenant = tenant
        self.mark = mark
        self.word = re.compile(rf"\b{re.escape(tenant)}\b")
        self._lock = threading.Lock()
        self._ids: set[str] = set()
        self._kinds: dict[str, list[str]] = {}

    def keep(self, kind: str, ids: Iterable[str]) -> None:
        with self._lock:
            for i in ids:
                if i in self._ids:
                    continue
                self._ids.add(i)
                self._ids.add(i.replace("-", ""))  # a task's trace id is its id's hex
                self._kinds.setdefault(kind, []).append(i)

    def __contains__(self, s: str) -> bool:
        return s in self._ids  # a set's membership test is atomic: no lock

    def count(self, kind: str) -> int:
        with self._lock:
            return len(self._kinds.get(kind, ()))

    def sample(self, kind: str, k: int, rng: random.Random) -> list[str]:
        """Up to k ids of this kind: the newest half, the rest from any time."""
        with self._lock:
            ids = list(self._kinds.get(kind, ()))
        if len(ids) <= k:
            return ids
        newest = ids[-(k // 2):] if k >= 2 else []
        return newest + rng.sample(ids[: len(ids) - len(newest)], k - len(newest))


@dataclass(frozen=True)
class Sighting:
    at: float  # seconds since the watch began
    viewer: str
    view: str  # the request whose answer held it
    kind: str  # id, mark, tenant, probe
    what: str  # the string seen (cut short)


@dataclass
class Watch:
    """Every tenant's ledger; the answers read and what of another tenant they held."""

    ledgers: dict[str, Ledger]
    views: int = 0
    strings: int = 0
    probes: int = 0
    sightings: int = 0
    # (viewer, view with its ids made one, kind) -> how many
    groups: dict[tuple[str, str, str], int] = field(default_factory=dict)
    distinct: dict[tuple[str, str, str, str], Sighting] = field(default_factory=dict)
    t0: float = field(default_factory=time.monotonic)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    KEPT = 200  # distinct sightings kept for the report (all are counted)

    def others(self, viewer: str) -> list[Ledger]:
        return [ledger for name, ledger in self.ledgers.items() if name != viewer]

    def scan(self, viewer: str, view: str, body: Any) -> None:
        """Walk an answer `viewer` read; note each string of another tenant in it."""
        others = self.others(viewer)
        n = 0
        for s in _strings(body):
            n += 1
            for o in others:
                # the substring test first: the word's regex only where it could match
                kind = ("id" if s in o else "mark" if o.mark in s
                        else "tenant" if o.tenant in s and o.word.search(s) else None)
                if kind is not None:
                    self._note(viewer, view, kind, s)
        with self._lock:
            self.views += 1
            self.strings += n

    def probed(self, viewer: str, view: str, status: int) -> None:
        """`viewer` asked for another tenant's record by its id and was answered
        `status`: anything but a 404 tells it the record is there."""
        with self._lock:
            self.probes += 1
        if status != 404:
            self._note(viewer, view, "probe", f"HTTP {status}")

    def _note(self, viewer: str, view: str, kind: str, s: str) -> None:
        group = (viewer, _shape(view), kind)
        key = (*group, s[:120])
        with self._lock:
            self.sightings += 1
            self.groups[group] = self.groups.get(group, 0) + 1
            if key not in self.distinct and len(self.distinct) < self.KEPT:
                self.distinct[key] = Sighting(round(time.monotonic() - self.t0, 1), viewer,
                                              view, kind, s[:120])


_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _shape(view: str) -> str:
    """A request with its ids made one: the same view of two tasks is one row."""
    return _ID.sub("ID", view)


def _strings(body: Any) -> Iterator[str]:
    stack = [body]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            yield v
        elif isinstance(v, dict):
            yield from (k for k in v if isinstance(k, str))
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
