"""Claim at submission (scripts.SUBMIT_CLAIM): a node that runs the agent with a free slot
submits a cluster task and claims it in one script call, so it starts here without
waiting for a read. Fair: of one loop turn's submissions this node claims at most one in
as many as there are live nodes running the agent, and never more than its free slots,
counted once the node's pull in flight has taken what it takes.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from typing import Any

from . import records
from .batch import Batcher
from .puller import Puller
from .rides import KEYS as RIDING_KEYS
from .rides import SUBMIT_CLAIM_RIDING, SUBMIT_RIDING
from .scripts import Call


class SubmitClaims(Batcher):
    """The submit's batcher (batch.py) that claims this node's share of each batch."""

    def __init__(self, puller: Puller) -> None:
        super().__init__(puller.scripts, puller.scripts.submit)
        self.membership = puller.membership
        self.queue = puller.queue
        self.puller = puller
        self.claimed = 0  # tasks claimed at their submission
        self.waiting = 0  # batches waiting now for a pull's read (`ready`)
        self.riding = puller.redis.register_script(SUBMIT_RIDING)  # (rides.py)
        self.claim_riding = puller.redis.register_script(SUBMIT_CLAIM_RIDING)

    def _share(self, agent: str, submitted: int, held: int = 0) -> int:
        """What this node claims of `submitted` tasks of `agent` (with `held` slots more
        free than now)."""
        a = self.puller.host.agents.get(agent)
        if (a is None or not self.membership.member or self.puller.paused
                or self.puller.closed):
            return 0
        return min(self.queue.wanted(a) + held,
                   math.ceil(submitted / self.puller.claims.serving(a)))

    async def ready(self, calls: list[tuple[list[Any], list[Any]]]) -> None:
        """A batch whose share the slots a pull's read in flight holds would cut waits
        for that read's answer, which tells how many of them it took: an idle look
        (once a beat) takes none, and a submission it met is claimed here all the same
        rather than left in the stream for the next pull (decision 2181)."""
        if not self.queue.reads:
            return
        by_agent = Counter(args[1] for _, args in calls)
        cut = [agent for agent, k in by_agent.items()
               if (held := self.queue.held_by_reads(agent))
               and self._share(agent, k) < self._share(agent, k, held)]
        if cut:
            self.waiting += 1
            try:
                await self.queue.reads_answered(cut)
            finally:
                self.waiting -= 1

    def plan(self, calls: list[tuple[list[Any], list[Any]]]) -> list[Call]:
        by_agent = Counter(args[1] for _, args in calls)
        shares = {agent: self._share(agent, k) for agent, k in by_agent.items()}
        consumer, node, now = self.membership.consumer, self.membership.node, time.time()
        attempt = records.claimed_attempt(node, now)
        out: list[Call] = []
        for keys, args in calls:
            agent = args[1]
            # (a durable call's rows ride with it: its keys and arguments after SUBMIT's)
            riding = len(keys) == RIDING_KEYS
            own, last = (keys[:-2], keys[-2:]) if riding else (keys, [])
            tail = 8 if riding else 5
            # the last of the batch claimed: those left to the others go first, and wake
            # their reads while Redis runs this node's claims
            left = by_agent[agent]
            by_agent[agent] = left - 1
            if left > shares[agent]:
                out.append((self.riding if riding else self.script, keys, args))
                continue
            self.queue.claims(agent, 1)
            # (SUBMIT's tenant is its last argument but one)
            self.puller.claims_in(self.puller.keys.claimed(args[-2], agent))
            spec = self.puller.host.agents[agent].spec
            # (SUBMIT's last five stay last)
            out.append((self.claim_riding if riding else self.scripts.submit_claim,
                        [*own, self.puller.keys.fence, *last],
                        [*args[:-tail], consumer, node, repr(now), attempt, spec.retries,
                         repr(spec.task_timeout), self.puller.keys.prefix, spec.retry_lost,
                         *args[-tail:]]))
        return out

    def _claims(self, script: Any) -> bool:
        return script is self.scripts.submit_claim or script is self.claim_riding

    def sent(self, planned: list[Call]) -> None:
        for script, _keys, args in planned:
            if self._claims(script):
                self.queue.claims_ended(args[1], 1)

    def answer(self, call: Call, result: Any) -> Any:
        """SUBMIT's answer; a task claimed with it goes to the engine here, unless this
        incarnation was fenced or lost the agent meanwhile (the reaper then queues it
        again)."""
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
