"""The cluster's side of the engine's Queue: a `ClusterQueue` holds what waits on this
node in the local priority lines, and says how many more tasks each agent's replicas
could start now: that is what the node pulls from the agent's streams, so the least
loaded node takes the work. A `ClusterTask` is the engine's Task with what its claim gave.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable, Iterator

import msgspec

from ..supervisor.tasks import LocalQueue, Task
from ..supervisor.tasks.host import AgentLike
from .home import ClusterHome


class ClusterTask(Task):
    __slots__ = ("base", "consumer", "entry", "session_state", "stream", "token")

    def __init__(self, task_id: str, agent: str, raw_input: msgspec.Raw, priority: int,
                 timeout: float, retries: int, created: float, *, token: int, base: int,
                 entry: str, stream: str, consumer: str,
                 home: ClusterHome | None = None) -> None:
        super().__init__(agent, raw_input, priority, timeout, retries, 0)
        self.id = task_id
        self.created = created
        self.token = token  # the fence token of this claim
        self.base = base  # attempts the record had before this claim
        self.entry = entry  # its stream entry (acknowledged with the outcome)
        self.stream = stream
        self.consumer = consumer  # the node incarnation that claimed it
        # None: a claim given back as it is made keeps nothing here
        if home is not None:
            self.home = home
        # its session's state as its claim read it or its last checkpoint wrote it (the
        # MAC, a space, the JSON)
        self.session_state: bytes | None = None

    @property
    def attempt(self) -> int:
        """Counted across the cluster: the attempts of earlier claims (other nodes) too."""
        return self.base + len(self.attempts)


def free_slots(agent: AgentLike) -> int:
    """Tasks the agent's serving replicas could start now (what dispatch would give)."""
    limit = agent.spec.max_concurrent_tasks
    return sum(max(0, limit - r.tasks_running) for r in agent.replicas if r.takes_tasks)


class ClusterQueue(LocalQueue):
    """The local heap, which is what waits on this node, and what the pullers need beside
    it: `wanted` says how much to read, `wake` that a slot may have freed."""

    __slots__ = ("_wake", "claiming", "reads")

    def __init__(self) -> None:
        super().__init__()
        self._wake: dict[str, asyncio.Event] = {}
        # claims under way, by agent: at submission, sent and not yet answered
        # (submitclaim.py); a pull's, from its read's send until the replicas confirm
        # what it claimed (puller.py)
        self.claiming: dict[str, int] = {}
        # a pull's reads in flight, by agent: the slots each holds (among `claiming` too)
        # and what is set at its answer
        self.reads: dict[str, list[tuple[int, asyncio.Event]]] = {}

    # -- for the pullers ----------------------------------------------------------------
    def wanted(self, agent: AgentLike) -> int:
        """How many cluster tasks this node should read for `agent` now: its free slots
        less what already waits here for them or is being claimed."""
        return (free_slots(agent) - self.depth(agent.name)
                - self.claiming.get(agent.name, 0))

    def claims(self, agent: str, n: int) -> None:
        """`n` claims of `agent` under way (counted by `wanted`) until `claims_ended`."""
        self.claiming[agent] = self.claiming.get(agent, 0) + n

    def claims_ended(self, agent: str, n: int) -> None:
        left = self.claiming[agent] - n
        if left:
            self.claiming[agent] = left
        else:
            del self.claiming[agent]

    @contextlib.contextmanager
    def reading(self, agent: str, n: int) -> Iterator[None]:
        """A pull's read of `agent` in flight, holding `n` slots as claims under way: what
        it claims of them is known only at its answer."""
        read = (n, asyncio.Event())
        self.claims(agent, n)
        self.reads.setdefault(agent, []).append(read)
        try:
            yield
        finally:
            self.claims_ended(agent, n)
            reads = self.reads[agent]
            reads.remove(read)
            if not reads:
                del self.reads[agent]
            read[1].set()

    def held_by_reads(self, agent: str) -> int:
        """The slots of `agent` that reads in flight hold."""
        return sum(n for n, _ in self.reads.get(agent, ()))

    async def reads_answered(self, agents: Iterable[str]) -> None:
        """Until the reads of `agents` in flight now have their answers (those sent
        meanwhile not awaited: a submission waits for one read, not a stream of them)."""
        for ended in [ev for a in agents for _, ev in self.reads.get(a, ())]:
            await ended.wait()

    def event(self, agent: str) -> asyncio.Event:
        return self._wake.setdefault(agent, asyncio.Event())

    def wake(self, agent: str) -> None:
        """A slot of `agent` may have freed."""
        ev = self._wake.get(agent)
        if ev is not None:
            ev.set()
