"""One loop per agent, kept as the agent's spec says: a file watch (filewatch.py) or a
restart on a schedule (cronrestart.py). Which agents have one follows the fleet: every
lifecycle event of an agent looks whether the key its spec gives now is the one its loop
runs for, O(1); a new key replaces the loop, none ends it."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, Generic, TypeVar

from ..supervisor.agents import Agents
from ..supervisor.process_replica import Transition
from ..timeouts import cancel_all

K = TypeVar("K")


class AgentLoops(Generic[K]):
    """The loops, by agent: (the key each runs for, its task). A subclass says which key
    a spec gives (`key_of`, None: no loop) and what a loop does (`run_loop`)."""

    def __init__(self, agents: Agents) -> None:
        self.agents = agents
        self.loops: dict[str, tuple[K, asyncio.Task[None]]] = {}
        self.closed = False

    def key_of(self, spec: Any) -> K | None:
        raise NotImplementedError

    async def run_loop(self, name: str, key: K) -> None:
        raise NotImplementedError

    def on_transition(self, event: Transition) -> None:
        if event.kind == "agent":
            self.sync(event.name)

    def sync(self, name: str) -> None:
        """Keep the loop the agent's spec says now (or none)."""
        agent = self.agents.get(name)
        key = self.key_of(agent.spec) if agent is not None else None
        current = self.loops.get(name)
        if current is not None and current[0] == key:
            return
        if current is not None:
            current[1].cancel()
            del self.loops[name]
        if key is not None and not self.closed:
            self.loops[name] = (key, asyncio.ensure_future(self.run_loop(name, key)))

    async def close(self) -> None:
        self.closed = True
        tasks = [t for _, t in self.loops.values()]
        self.loops.clear()
        with contextlib.suppress(Exception):
            await cancel_all(tasks)
