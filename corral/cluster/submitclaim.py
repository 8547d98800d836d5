"""Claim at submission: a node that runs the agent and has a free slot for it submits a
cluster task and claims it for itself in one script call (scripts.SUBMIT_CLAIM), so the
task starts here without waiting for any node's read of the stream. The task is a cluster
task like any other: its record and its stream entry exist, its claim has its own fence
token and this incarnation as its consumer, and if this node dies it is taken over. When
nothing waited before it, its entry is in the route's claimed stream (Keys.claimed),
which no pull loop reads or waits on: no node wakes for a task already taken (decision
797).

Fair to the other nodes: of the submissions batched in one turn of the loop (a burst on
one socket), this node claims at most its share, one in as many as there are live nodes
running the agent, and never more than its free slots less what it is claiming already;
the rest go to the streams, where every node's pull loop (this one's too) reads them.
"""

from __future__ import annotations

import math
import time
from typing import Any

from . import records
from .batch import Batcher
from .membership import Membership
from .puller import Puller
from .queue import ClusterQueue
from .rides import KEYS as RIDING_KEYS
from .rides import RideScripts
from .scripts import Call, Scripts


class SubmitClaims(Batcher):
    """The submit's batcher (batch.py) that claims this node's share of each batch."""

    def __init__(self, scripts: Scripts, membership: Membership, queue: ClusterQueue,
                 puller: Puller, prefix: str) -> None:
        super().__init__(scripts, scripts.submit)
        self.membership = membership
        self.queue = queue
        self.puller = puller
        self.prefix = prefix
        self.claimed = 0  # tasks claimed at their submission
        self.rides = RideScripts(scripts.redis)

    def _share(self, agent: str, submitted: int) -> int:
        """How many of `submitted` tasks of `agent` this node claims as it submits them."""
        a = self.puller.host.agents.get(agent)
        if (a is None or not self.membership.member or self.puller.paused
                or self.puller.closed):
            return 0
        return min(self.queue.wanted(a), math.ceil(submitted / self.puller.serving(a)))

    def plan(self, calls: list[tuple[list[Any], list[Any]]]) -> list[Call]:
        by_agent: dict[str, int] = {}
        for _, args in calls:
            by_agent[args[1]] = by_agent.get(args[1], 0) + 1
        shares = {agent: self._share(agent, k) for agent, k in by_agent.items()}
        consumer, node, now = self.membership.consumer, self.membership.node, time.time()
        attempt = records.claimed_attempt(node, now)
        out: list[Call] = []
        for keys, args in calls:
            agent = args[1]
            # a durable call's rows ride with it (rides.py): its keys and arguments after
            # SUBMIT's own (and the claim's)
            riding = len(keys) == RIDING_KEYS
            own, last = (keys[:-2], keys[-2:]) if riding else (keys, [])
            tail = 7 if riding else 4
            # the last of the batch claimed: those left to the others go first, and wake
            # their reads while Redis runs this node's claims
            left = by_agent[agent]
            by_agent[agent] = left - 1
            if left > shares[agent]:
                out.append((self.rides.submit if riding else self.script, keys, args))
                continue
            self.queue.claiming[agent] = self.queue.claiming.get(agent, 0) + 1
            spec = self.puller.host.agents[agent].spec
            # (SUBMIT's last four, the options, the place in a spawn tree, the tenant and
            # its MAC, stay last: scripts.py)
            out.append((self.rides.submit_claim if riding else self.scripts.submit_claim,
                        [*own, self.puller.keys.fence, *last],
                        [*args[:-tail], consumer, node, repr(now), attempt, spec.retries,
                         repr(spec.task_timeout), self.prefix, spec.retry_lost,
                         *args[-tail:]]))
        return out

    def _claims(self, script: Any) -> bool:
        return script is self.scripts.submit_claim or script is self.rides.submit_claim

    def sent(self, planned: list[Call]) -> None:
        claiming = self.queue.claiming
        for script, _keys, args in planned:
            if self._claims(script):
                left = claiming[args[1]] - 1
                if left:
                    claiming[args[1]] = left
                else:
                    del claiming[args[1]]

    def answer(self, call: Call, result: Any) -> Any:
        """SUBMIT's answer; a task claimed with it goes to the engine here, unless this
        incarnation was fenced or lost the agent meanwhile (the claim is then an orphan,
        or a dead consumer's, which the reaper queues again)."""
        script, _keys, args = call
        if not self._claims(script):
            return result
        if len(result) > 1:
            agent, consumer = args[1], args[11]
            stream, *claim = result[1]
            if (consumer == self.membership.consumer
                    and agent in self.puller.host.agents):
                self.claimed += 1
                self.puller.take(agent, consumer, stream.decode(), claim)
        return result[0]
