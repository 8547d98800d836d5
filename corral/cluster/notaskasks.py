"""A cluster node's asks of its calls of no task (docs/approvals.md#on-a-cluster): kept in
the cluster's Redis beside its tasks' asks (clusterasks.py), so that every node lists and
decides them, once, and the call waiting on its node hears the end by the asks' channel.

The owner of such asks (a replica's incarnation, a gateway client's call:
replicacalls.py) stands in for a task: its record (`Keys.task` of the owner) holds a
status that lives while this node attends the owner, renewed once a beat, so that an ask
whose owner is gone (exited, its node dead) is withdrawn where it is next read or
decided, as a task's is once the task has ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets

import msgspec
from redis.exceptions import RedisError

from ..askviews import Ask, AskEnd, AskRequest
from ..supervisor.config import DEFAULT_TENANT, ClusterSettings
from ..supervisor.tasks.askwaits import CORRAL, AskEnded
from ..supervisor.tasks.inbox import InboxBounds
from ..timeouts import cancel_all
from .clusterasks import ClusterAsks, past_bound
from .connection import said
from .scripts import RedisPart
from .trust import ASK as ASK_KIND

# an owner's record lives this many of the node's TTLs past its last renewal: a loaded
# node's late beat withdraws no ask a call waits on, and a dead node's asks are withdrawn
# within them
OWNER_TTLS = 3
OWNER_STATUS = "running"  # (no end: its asks are live, read as a running task's are)

# KEYS: the owner's record, the ask, the pending asks, its tenant's, the asks by deadline
# ARGV: the ask's id, its record, its MAC, when it was asked, the cluster's bound and a
#       tenant's, its deadline ('' none), the owner record's TTL (ms), OWNER_STATUS
# -> {1} asked; {-1, n} / {-2, n} the cluster's / the tenant's pending asks at their bound
ASK = """
local n = redis.call('ZCARD', KEYS[3])
if n >= tonumber(ARGV[5]) then return {-1, n} end
n = redis.call('ZCARD', KEYS[4])
if n >= tonumber(ARGV[6]) then return {-2, n} end
redis.call('HSET', KEYS[1], 'status', ARGV[9])
redis.call('PEXPIRE', KEYS[1], ARGV[8])
redis.call('HSET', KEYS[2], 'rec', ARGV[2], 'mac', ARGV[3])
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[1])
redis.call('ZADD', KEYS[4], ARGV[4], ARGV[1])
if ARGV[7] ~= '' then redis.call('ZADD', KEYS[5], ARGV[7], ARGV[1]) end
return {1}
"""

_encode = msgspec.json.Encoder().encode


class ClusterNoTaskAsks(RedisPart):
    """The asks of this node's calls of no task, every node's (replicacalls.NoTaskAsks):
    made here, read, ended and heard as the cluster's tasks' asks are (`shelf`)."""

    def __init__(self, shelf: ClusterAsks, settings: ClusterSettings,
                 bounds: InboxBounds) -> None:
        super().__init__(shelf.scripts, shelf.keys, shelf.trust)
        self.shelf = shelf
        self.settings = settings
        self.bounds = bounds
        self.max_asks_per_task = bounds.per_task  # (an incarnation's, counted on its node)
        self._ask = self.redis.register_script(ASK)
        self._owners: dict[str, set[str]] = {}  # owner -> its asks made here, pending
        self._renewer: asyncio.Task[None] | None = None

    @property
    def _ttl_ms(self) -> int:
        return int(self.settings.node_ttl * OWNER_TTLS * 1000)

    async def ask(self, req: AskRequest) -> Ask:
        """A new ask of `req` (an owner's asks are keyed by the owner's count: no retry
        finds one), kept in Redis before this returns; refused past the cluster's bounds."""
        now = self.shelf.clock.time()
        ask = req.made(f"ask-{secrets.token_hex(8)}", now, req.tenant)
        rec = _encode(ask)
        tenant = req.tenant if req.tenant is not None else DEFAULT_TENANT
        keys = [self.keys.task(req.task_id), self.keys.ask(ask.id),
                self.keys.asks_pending(), self.keys.asks_pending(tenant),
                self.keys.ask_deadlines]
        args = [ask.id, rec, self.trust.sign(ASK_KIND, ask.id, "rec", rec), repr(now),
                self.bounds.pending, self.bounds.per_tenant,
                "" if ask.deadline is None else repr(ask.deadline), self._ttl_ms,
                OWNER_STATUS]
        with said(self.settings, f"its {req.kind} was not asked (nothing was kept)"):
            got = await self.scripts.one(self._ask, keys, args)
        if int(got[0]) != 1:
            raise past_bound(self.bounds, int(got[0]), int(got[1]), tenant)
        self._owners.setdefault(req.task_id, set()).add(ask.id)
        if self._renewer is None:
            self._renewer = asyncio.get_running_loop().create_task(self._renew())
        self.shelf.stream.emit(AskEnded(ask))
        return ask

    async def wait(self, ask: Ask) -> Ask:
        """The ask as it ended, wherever it was ended (the asks' channel tells this node)."""
        ended = await self.shelf.waits.wait(self.shelf, ask)
        mine = self._owners.get(ask.task_id)
        if mine is not None and not ended.pending:
            mine.discard(ask.id)
            if not mine:
                del self._owners[ask.task_id]
        return ended

    def asking(self, owner: str) -> bool:
        return owner in self._owners

    def withdraw(self, task_id: str, ask_id: str | None = None, why: str | None = None
                 ) -> asyncio.Future[list[Ask]]:
        """The pending asks of the owner `task_id` withdrawn (its replica exited), or its
        ask `ask_id` alone (its call ended first), `why` their data's reason: each ended
        where it is kept, which tells every node; the owner's record deleted with all."""
        mine = self._owners.get(task_id, set())
        ids = set(mine) if ask_id is None else {ask_id}
        mine -= ids
        if not mine:
            self._owners.pop(task_id, None)
        return asyncio.ensure_future(self._withdrawn(task_id, ids, why, ask_id is None))

    async def _withdrawn(self, owner: str, ids: set[str], why: str | None, whole: bool
                         ) -> list[Ask]:
        data = None if why is None else {"reason": why}
        asks = []
        for ask_id in sorted(ids):
            ask = await self.shelf.read(ask_id)
            if ask is not None and ask.pending:
                ask = await self.shelf.end(ask, AskEnd.WITHDRAWN, CORRAL, data)
            if ask is not None:
                asks.append(ask)
        if whole:  # (else it lapses, renewed no more once no ask of it is attended here)
            with said(self.settings, f"the record of {owner} was not deleted (it lapses)"):
                await self.redis.delete(self.keys.task(owner))
        return asks

    async def _renew(self) -> None:
        """The records of the owners attended here renewed once a beat while any is."""
        try:
            while self._owners:
                await asyncio.sleep(self.settings.beat)
                with contextlib.suppress(RedisError, OSError):  # (lapses at its TTL)
                    async with self.redis.pipeline(transaction=False) as pipe:
                        for owner in list(self._owners):
                            pipe.pexpire(self.keys.task(owner), self._ttl_ms)
                        await pipe.execute()
        finally:
            self._renewer = None

    async def close(self) -> None:
        if self._renewer is not None:
            await cancel_all([self._renewer])
        self._owners.clear()
