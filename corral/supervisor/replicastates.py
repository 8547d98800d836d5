"""Agents' state checkpoints (`ctx.checkpoint`), by replica: kept as a worker sends them,
told on the stream (the daemon persists them: SQLite; a cluster: Redis), and given back in
`initialize` to the replica's next process within the agent's `state_ttl`."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import msgspec

from .stream import Checkpoint

if TYPE_CHECKING:
    from ..workerproto import StateCheckpointParams
    from .replica import Replica
    from .stream import Stream


class ReplicaStates:
    """The last state each replica checkpointed: (agent, index) -> (wall time, state)."""

    def __init__(self, stream: Stream) -> None:
        self.stream = stream
        self.saved: dict[tuple[str, int], tuple[float, Any]] = {}

    def initial(self, replica: Replica) -> Any:
        """What the replica's next process is given, or None (none kept, or too old)."""
        saved = self.saved.get((replica.name, replica.index))
        if saved is None:
            return None
        ttl = replica.spec.state_ttl
        if ttl and time.time() - saved[0] > ttl:
            return None
        return saved[1]

    def on_checkpoint(self, replica: Replica, p: StateCheckpointParams) -> None:
        if p.state is msgspec.UNSET:
            return
        when = time.time()
        self.saved[(replica.name, replica.index)] = (when, p.state)
        self.stream.emit(Checkpoint(replica.name, replica.index, when, p.state))
