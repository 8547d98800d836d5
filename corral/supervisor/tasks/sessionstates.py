"""Sessions' states in memory: the recently used ones within a byte budget, one evicted read
back from the journal before its session's next task (docs/durable.md#sessions). Without a
journal nothing is evicted: memory is where states live then."""

from __future__ import annotations

from collections import OrderedDict

import msgspec

Key = tuple[str, str, str, int]  # (tenant, agent, session, gen): one life of a session


class HotStates:
    def __init__(self, budget: int) -> None:
        self.budget = budget  # bytes; 0: none held once they are durable
        self.spills = False  # whether a journal holds every state (set with it)
        self._held: OrderedDict[Key, msgspec.Raw] = OrderedDict()
        self.bytes = 0
        self.evicted = 0  # states let go (read back from the journal when needed)
        self.loads = 0  # states read back

    def __len__(self) -> int:
        return len(self._held)

    def get(self, key: Key) -> msgspec.Raw | None:
        state = self._held.get(key)
        if state is not None:
            self._held.move_to_end(key)
        return state

    def put(self, key: Key, state: msgspec.Raw) -> None:
        self.drop(key)
        self._held[key] = state
        self.bytes += len(state)
        self._fit()

    def drop(self, key: Key) -> None:
        state = self._held.pop(key, None)
        if state is not None:
            self.bytes -= len(state)

    def _fit(self) -> None:
        if not self.spills:
            return
        held = self._held
        while self.bytes > self.budget and held:
            _, state = held.popitem(last=False)
            self.bytes -= len(state)
            self.evicted += 1
