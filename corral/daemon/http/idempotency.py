"""`Idempotency-Key` on the requests that create something other than a task
(docs/http.md, "Idempotency"): kept in memory under the token that sent it, bounded in
number and in age. A task's key is the task's own, kept in its home (corral/taskkeys.py)."""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from dataclasses import dataclass

MAX_KEYS = 10_000
KEEP_SECONDS = 24 * 3600
MAX_KEY_LENGTH = 255


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes
    content_type: str
    location: str | None


class Pending:
    """A key whose first request is still running."""


class IdempotencyKeys:
    def __init__(self) -> None:
        # (who, key) -> (when, the request's fingerprint, its answer or Pending)
        self.seen: OrderedDict[tuple[str, str], tuple[float, str, Answer | Pending]] = (
            OrderedDict())

    @staticmethod
    def fingerprint(method: str, path: str, query: str, body: bytes) -> str:
        return hashlib.sha256(b"\0".join((method.encode(), path.encode(), query.encode(),
                                          body))).hexdigest()

    def _expire(self, now: float) -> None:
        while self.seen:
            key, (when, _, answer) = next(iter(self.seen.items()))
            if now - when < KEEP_SECONDS and len(self.seen) <= MAX_KEYS:
                return
            if isinstance(answer, Pending) and now - when < KEEP_SECONDS:
                # never forget a request in flight: its answer is still to be kept
                self.seen.move_to_end(key)
                if all(isinstance(a, Pending) for _, _, a in self.seen.values()):
                    return
                continue
            del self.seen[key]

    def begin(self, who: str, key: str, fingerprint: str) -> Answer | Pending | None:
        """The first answer to replay, Pending (the first request still runs), or None:
        this request is the first, and its answer is to be kept with `keep`. A key
        seen with another request raises ValueError."""
        now = time.monotonic()
        self._expire(now)
        found = self.seen.get((who, key))
        if found is None:
            self.seen[(who, key)] = (now, fingerprint, Pending())
            return None
        _, first, answer = found
        if first != fingerprint:
            raise ValueError("the Idempotency-Key was used for a different request")
        return answer

    def keep_answer(self, who: str, key: str, answer: Answer | None) -> None:
        """The first request's answer (None: forget the key, the request may be sent
        again as new)."""
        found = self.seen.get((who, key))
        if found is None:
            return
        if answer is None:
            del self.seen[(who, key)]
        else:
            self.seen[(who, key)] = (found[0], found[1], answer)
