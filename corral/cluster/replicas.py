"""A write acknowledged once the replicas have it too ([cluster] `ack_replicas`,
docs/cluster.md#redis-that-fails-over): each batch a client or worker is told was kept
ends with WAIT N. WAIT counts the connection's own last write, and a batch whose scripts
all answered "already there" wrote nothing, so each batch first bumps a marker key
(`acks`): a replica that has the marker has what the batch read.
"""

from __future__ import annotations

from typing import Any

from redis.exceptions import RedisError

from ..supervisor.config import ClusterSettings


class UnconfirmedWrite(RedisError):
    """Fewer replicas than `ack_replicas` confirmed the write in time: not acknowledged.
    A RedisError, so that each caller does what it does when Redis does not answer."""


class Acks:
    def __init__(self, replicas: int, timeout: float, marker: str) -> None:
        self.replicas = replicas
        self.timeout = timeout
        self.marker = marker  # Keys.acks
        self.short = False  # a confirmation fell short since `fell_short` last answered

    def ask(self, pipe: Any) -> None:
        """The pipeline's last two commands: the marker's write, then WAIT."""
        pipe.incr(self.marker)
        pipe.execute_command("WAIT", self.replicas, int(self.timeout * 1000))

    def check(self, answers: list[Any]) -> list[Any]:
        """The pipeline's answers but the last two; UnconfirmedWrite when WAIT's (the
        replicas that confirmed) falls short, or the marker's write failed."""
        *calls, marked, confirmed = answers
        if isinstance(marked, Exception):
            self.short = True
            raise UnconfirmedWrite(f"the write that WAIT confirms was refused ({marked})")
        if isinstance(confirmed, Exception) or int(confirmed) < self.replicas:
            got = confirmed if not isinstance(confirmed, Exception) else 0
            self.short = True
            raise UnconfirmedWrite(f"{got} of the {self.replicas} replicas ack_replicas asks "
                                   f"for confirmed it within {self.timeout:g} s (ack_timeout)")
        return calls

    def fell_short(self) -> bool:
        """Whether a write went unconfirmed since the last time this was asked: the node
        reads Redis's replicas again at its next beat, not up to CHECK_BEATS later."""
        short, self.short = self.short, False
        return short


def acks_of(settings: ClusterSettings, marker: str) -> Acks | None:
    n = settings.replicas_acked
    return Acks(n, settings.ack_timeout, marker) if n else None
