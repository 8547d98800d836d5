"""Durable calls on a cluster (a workflow's run, a team's call), kept in Redis
(docs/cluster.md#workflow-runs-on-any-node): each driven by one node incarnation at a time
under a lease (the call's `holder` and `fence`); every write shows the token and is
refused when the call's is another. A step's ended row is held here and rides with the
call's next write (or goes alone after HOLD_FOR), never before its task's outcome
(`outcomes_first`), and a call's end never before a held row's write under way. Redis
is the truth; `local`, the node's journal, holds a copy of each call it drives for the
engine's synchronous reads: a call taken over is copied in first.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple, cast, get_type_hints

import msgspec
from msgspec.structs import astuple
from redis.exceptions import RedisError

from .. import jsonrpc
from ..jsonrpc import RpcError
from ..supervisor.durable import STEP_ENDED, CallHandover, CallRecord, StepRow
from ..supervisor.durable.store import DurableStore, EndKeeper
from ..timeouts import kept, within
from .connection import read, read_all, unanswered, why
from .keys import Keys
from .membership import Membership
from .rides import Ride
from .scripts import RedisPart, Scripts
from .trust import CALL, Trust

HOLD_FOR = 0.05  # seconds a held ended row waits for its call's next write, at most

# KEYS: call, fence counter, the liveness key of the holder the caller read (ARGV[2])
# ARGV: the taker (its consumer name), the holder it read ('' none)
#   -> the new fence token, 0 when the holder changed since or is alive
TAKE = """
local holder = redis.call('HGET', KEYS[1], 'holder') or ''
if holder ~= ARGV[2] then return 0 end
if holder ~= '' and holder ~= ARGV[1] and redis.call('EXISTS', KEYS[3]) == 1 then
  return 0
end
local token = redis.call('INCR', KEYS[2])
redis.call('HSET', KEYS[1], 'holder', ARGV[1], 'fence', token)
return token
"""

# KEYS: call, the running calls, the kind's calls, the call's steps; ARGV: token, call
# id, status, the signed record, seconds an ended call is kept, how many of a kind's
# ended calls are listed -> 1 written, 0 refused (the fence is another's)
SAVE_CALL = """
if redis.call('HGET', KEYS[1], 'fence') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'rec', ARGV[4], 'status', ARGV[3])
redis.call('ZADD', KEYS[3], 0, ARGV[2])
if ARGV[3] == 'running' then
  redis.call('ZADD', KEYS[2], 0, ARGV[2])
else
  redis.call('ZREM', KEYS[2], ARGV[2])
  redis.call('HDEL', KEYS[1], 'holder')
  redis.call('EXPIRE', KEYS[1], ARGV[5])
  redis.call('EXPIRE', KEYS[4], ARGV[5])
  redis.call('ZREMRANGEBYRANK', KEYS[3], 0, -tonumber(ARGV[6]) - 1)
end
return 1
"""

# KEYS: call, its steps; ARGV: token, field, signed row, field, signed row...
#   -> 1 written, 0 refused
SAVE_STEPS = """
if redis.call('HGET', KEYS[1], 'fence') ~= ARGV[1] then return 0 end
for i = 2, #ARGV, 2 do
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
end
return 1
"""


def _array_of(struct: type[msgspec.Struct], fields: int) -> msgspec.json.Decoder[Any]:
    """The first `fields` fields of `struct` as Redis holds them: a JSON array, in order
    (an array_like Struct: elements a newer node appended are skipped, as a mixed-version
    cluster needs)."""
    hints = get_type_hints(struct)
    return msgspec.json.Decoder(msgspec.defstruct(
        struct.__name__, [(f, hints[f]) for f in struct.__struct_fields__[:fields]],
        array_like=True))


_entry = _array_of(CallRecord, -1)  # a call's record: all but its rows (a field each)
_row = _array_of(StepRow, len(StepRow.__struct_fields__))


def field_of(step: str, item: int) -> str:
    """A row's field in its call's steps hash (a step's name holds no newline)."""
    return f"{item}\n{step}"


class Lease(NamedTuple):
    """A node incarnation's lease of a call: its fence token, and who it was taken as."""

    token: int
    holder: str


class ForeignRecord(Exception):
    """A call whose record or a row of it is not one this cluster's nodes wrote."""


class ClusterCalls(RedisPart):
    """A DurableStore of a cluster node: writes to Redis, then to `local`; reads `local`."""

    def __init__(self, scripts: Scripts, keys: Keys, trust: Trust,
                 membership: Membership, local: DurableStore,
                 kept: tuple[int, int] = (7 * 86400, 100_000),
                 drivable: Callable[[CallRecord], bool] = lambda record: True,
                 settled: Callable[[str], bool] = lambda task_id: False,
                 outcomes_first: Callable[[list[str]], Awaitable[bool]] | None = None
                 ) -> None:
        """`kept`: an ended call's seconds in Redis, and how many of a kind's are
        listed; `drivable`: whether this node runs the agents a call's kind needs on the
        driving node; `settled`: whether a task id is a step's cluster task that ended
        (its row may be held); `outcomes_first`: these tasks' outcomes held here written,
        False when one was refused."""
        super().__init__(scripts, keys, trust)
        self.outcomes_first = outcomes_first
        self.drivable = drivable
        self.settled = settled
        # call id -> its ended rows not yet in Redis (field -> signed row)
        self.held: dict[str, dict[str, bytes]] = {}
        self.held_tasks: dict[str, list[str]] = {}  # and the tasks those rows name
        self._timed: set[str] = set()
        self.flushing: set[asyncio.Task[None]] = set()  # the held rows going alone
        # call id -> the writes under way that took rows from `held`, each done once
        # answered (or failed, its rows held again): a call's end waits for them
        self.carrying: dict[str, list[asyncio.Future[None]]] = {}
        self.held_again = 0  # held rows a write took and Redis did not answer for
        self.closed = False  # (held rows no longer held again)
        self.kept = kept
        self.membership = membership
        self.local = local
        # (asked once: isinstance of a protocol is slow)
        self._one_commit = isinstance(local, EndKeeper)
        self.leases: dict[str, Lease] = {}  # call id -> this node's lease of it
        # call id -> the lease this node held until another node took the call (its
        # later writes are refused without asking Redis)
        self.lost: dict[str, Lease] = {}
        self._take = self.redis.register_script(TAKE)
        self._save_call = self.redis.register_script(SAVE_CALL)
        self._save_steps = self.redis.register_script(SAVE_STEPS)
        self.taken = 0  # calls taken over from a dead incarnation
        self.fenced = 0  # writes refused: the lease was another's

    # -- the lease ------------------------------------------------------------------------
    async def take(self, call_id: str, holder: str) -> int:
        """The call's lease, from `holder` ('' none) which must be dead (or this node):
        its fence token, 0 when another holds it now."""
        me = await self._member(call_id)
        token = int(await self.scripts.one(self._take, [
            self.keys.call(call_id), self.keys.fence, self.keys.alive(holder)], [me, holder]))
        if token:
            self.leases[call_id] = Lease(token, me)
            self.lost.pop(call_id, None)
        return token

    async def _member(self, call_id: str) -> str:
        """This node's incarnation, once it is a member (waited for up to a TTL): a call
        taken before its join or while it is fenced would be leased to no live
        incarnation, and taken over by the next node to look."""
        m = self.membership
        if not m.member:
            with contextlib.suppress(TimeoutError):
                await within(self._joined(), m.ttl)
        if not m.member:
            raise RpcError(jsonrpc.UNAVAILABLE, (
                f"call {call_id} not kept: this node is not a member of its cluster "
                f"({m.error or m.state}) within {m.ttl:g} s"))
        return m.consumer

    async def _joined(self) -> None:
        while not self.membership.member:
            await self.membership.changed.wait()  # each join and fence wakes it

    async def _fenced(self, call_id: str, calls: list[tuple[Any, list[str], list[Any]]]
                      ) -> None:
        """The call's writes (args without the token) in one round trip, each under this
        node's lease: a refused one refuses those after it."""
        lease = self.leases.get(call_id)
        if lease is None:
            raise self._not_ours(call_id)
        if not calls:
            return
        try:
            answers = await self.scripts.acknowledged(
                [(script, keys, [lease.token, *args]) for script, keys, args in calls])
            got = next((a for a in answers if a != 1), 1)
        except RedisError as exc:
            got = exc
        if isinstance(got, BaseException):
            raise RpcError(jsonrpc.UNAVAILABLE, f"call {call_id} not kept: the cluster's "
                                                f"Redis did not take it ({why(got)})")
        if got != 1:
            # (a map's writes run at once: another of them may have let the lease go)
            raise self.lost_lease(call_id, lease)

    def _not_ours(self, call_id: str) -> RpcError:
        lost = self.lost.get(call_id)
        if lost is None:
            return RpcError(jsonrpc.CONFLICT, f"call {call_id} not kept: another node "
                                              "holds it")
        return RpcError(jsonrpc.CONFLICT, (
            f"call {call_id} not kept: it is no longer this node's (its lease as "
            f"{lost.holder}, fence {lost.token}): another node took it over"))

    # -- DurableStore: the writes ---------------------------------------------------------
    async def save_call(self, record: CallRecord) -> None:
        if record.call_id not in self.leases and (
                record.call_id in self.lost or not await self.take(record.call_id, "")):
            raise self._not_ours(record.call_id)
        payload = msgspec.json.encode(astuple(record)[:-1])
        mac = self.trust.sign(CALL, record.call_id, payload)
        await self._outcomes_first(record.call_id, [])
        while record.status != "running" and record.call_id in self.carrying:
            # a flush may have taken its last step's row as its end came: Redis takes
            # that row first (or it is held again, and goes with the end), else a reader
            # between the two would see the call ended beside that step still running
            await self._carried(record.call_id)
            await self._outcomes_first(record.call_id, [])
        # its held rows first: an ended call's rows are all in Redis as it ends
        await self._held_write(record.call_id, {}, [(
            self._save_call, [
                self.keys.call(record.call_id), self.keys.calls_running,
                self.keys.calls(record.kind), self.keys.call_steps(record.call_id)],
            [record.call_id, record.status, mac.encode() + b" " + payload, self.kept[0],
             self.kept[1]])])
        await self.local.save_call(record)
        if record.status != "running":
            self.leases.pop(record.call_id, None)  # the lease ends with the call

    async def save_steps(self, call_id: str, rows: list[StepRow]) -> None:
        """Kept in Redis when it returns, but for rows that ended with their task: held."""
        fields = self._signed_rows(call_id, rows)
        settled = [r.status in STEP_ENDED and r.task_id is not None
                   and self.settled(r.task_id) for r in rows]
        if rows and all(settled) and call_id in self.leases:
            self.held.setdefault(call_id, {}).update(fields)
            self.held_tasks.setdefault(call_id, []).extend(
                r.task_id for r in rows if r.task_id is not None)
            self._flush_later(call_id)
        else:
            await self._outcomes_first(call_id, [r.task_id for r, s in zip(
                rows, settled, strict=True) if s and r.task_id is not None])
            await self._held_write(call_id, fields)
        await self.local.save_steps(call_id, rows)

    def _signed_rows(self, call_id: str, rows: list[StepRow]) -> dict[str, bytes]:
        fields: dict[str, bytes] = {}
        for r in rows:
            field = field_of(r.step, r.item)
            payload = msgspec.json.encode(astuple(r))
            fields[field] = self.trust.sign(CALL, call_id, field, payload).encode() + b" " + payload
        return fields

    def ride(self, call_id: str, row: StepRow, noted: Callable[[], None]) -> Ride:
        """A step's new running row, and the call's held rows, to be written by its task's
        submit script under this node's lease (rides.py); `noted` once Redis has them."""
        lease = self.leases.get(call_id)
        if lease is None:
            raise self._not_ours(call_id)
        held, tasks = self.held.pop(call_id, {}), self.held_tasks.pop(call_id, [])
        own = self._signed_rows(call_id, [row])

        async def kept() -> None:
            await self.local.save_steps(call_id, [row])
            noted()
        return Ride(call_id, [self.keys.call(call_id), self.keys.call_steps(call_id)],
                    lease.token, list({**held, **own}.items()), kept, tasks,
                    lambda: self._held_again(call_id, held, tasks, own))

    def lost_lease(self, call_id: str, lease: Lease | None = None) -> RpcError:
        lease = self.leases.pop(call_id, lease)
        if lease is not None:
            self.lost[call_id] = lease
        self.fenced += 1
        return self._not_ours(call_id)

    async def _outcomes_first(self, call_id: str, tasks: list[str]) -> None:
        """The outcomes held for the call's held rows and `tasks` written before a write
        that does not carry them (the held rows' tasks forgotten once they are)."""
        tasks = [*self.held_tasks.get(call_id, ()), *tasks]
        if not tasks:
            return
        with unanswered(f"call {call_id} not kept: the cluster's Redis did not take its "
                        "steps' outcomes"):
            ok = self.outcomes_first is None or await self.outcomes_first(tasks)
        if not ok:
            raise self.lost_lease(call_id)
        self.held_tasks.pop(call_id, None)

    async def _held_write(self, call_id: str, fields: dict[str, bytes],
                          then: list[tuple[Any, list[str], list[Any]]] | None = None
                          ) -> None:
        """The SAVE_STEPS of the call's held rows and `fields`, then `then`, in one fenced
        round trip. Redis away: the held rows are held again."""
        held = self.held.pop(call_id, {})
        rows = {**held, **fields}
        args: list[Any] = [part for row in rows.items() for part in row]
        calls = [(self._save_steps, [self.keys.call(call_id),
                                     self.keys.call_steps(call_id)], args)] if rows else []
        carried = self._carrying(call_id) if held else None
        try:
            await self._fenced(call_id, [*calls, *(then or [])])
        except RpcError as exc:
            if exc.code == jsonrpc.UNAVAILABLE:
                self._held_again(call_id, held, [], fields)
            raise
        finally:
            if carried is not None:
                self._landed(call_id, carried)

    def _carrying(self, call_id: str) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.carrying.setdefault(call_id, []).append(fut)
        return fut

    def _landed(self, call_id: str, fut: asyncio.Future[None]) -> None:
        under_way = self.carrying[call_id]
        under_way.remove(fut)
        if not under_way:
            del self.carrying[call_id]
        fut.set_result(None)

    async def _carried(self, call_id: str) -> None:
        """The writes under way that took the call's held rows, answered or failed."""
        for fut in list(self.carrying.get(call_id, ())):
            await asyncio.shield(fut)

    def _held_again(self, call_id: str, rows: dict[str, bytes], tasks: list[str],
                    newer: dict[str, bytes]) -> None:
        """Held rows a write took that Redis may not have: held again, with the tasks
        whose outcomes go first. Not a row held anew since or written by that write
        (`newer`), and none once the lease is let go or lost: the call is then taken
        again from what Redis holds."""
        again = {f: v for f, v in rows.items() if f not in newer}
        if call_id not in self.leases or self.closed or not (again or tasks):
            return
        self.held_again += 1
        self.held[call_id] = {**again, **self.held.get(call_id, {})}
        if tasks:
            self.held_tasks[call_id] = list(dict.fromkeys(
                [*tasks, *self.held_tasks.get(call_id, [])]))
        self._flush_later(call_id)

    def _flush_later(self, call_id: str) -> None:
        if call_id in self._timed:
            return
        self._timed.add(call_id)
        asyncio.get_running_loop().call_later(HOLD_FOR, self._flush_now, call_id)

    def _flush_now(self, call_id: str) -> None:
        self._timed.discard(call_id)
        if call_id not in self.held:
            return  # (gone with a write since)
        kept(self.flushing, asyncio.ensure_future(self._flush(call_id)))

    async def _flush(self, call_id: str) -> None:
        """The call's held rows alone. Refused (the lease was lost): the driver's next
        write is refused too, and it stops; Redis away: they are held again."""
        try:
            await self._outcomes_first(call_id, [])
        except RpcError as exc:
            if exc.code == jsonrpc.UNAVAILABLE and call_id in self.held:
                self._flush_later(call_id)  # (rows and their tasks kept: not yet taken)
            return
        with contextlib.suppress(RpcError):
            await self._held_write(call_id, {})

    async def close(self) -> None:
        """The held rows sent while Redis answers; the rest dropped, as a dead node's are."""
        self.closed = True
        for call_id in list(self.held):
            await self._flush(call_id)
        if self.flushing:
            await asyncio.gather(*self.flushing, return_exceptions=True)

    # -- DurableStore: the reads (this node's copy) ---------------------------------------
    def load(self, call_id: str) -> CallRecord | None:
        return self.local.load(call_id)

    def unfinished(self, kind: str) -> list[CallRecord]:
        """None at a start: the cluster's unfinished calls are taken over by the beat
        (`orphans`), this node's previous incarnation's among them."""
        return []

    def output(self, call_id: str, step: str, item: int) -> Any:
        return self.local.output(call_id, step, item)

    # -- read from Redis ------------------------------------------------------------------
    async def fetch(self, call_id: str) -> CallRecord | None:
        """The call as Redis holds it (ForeignRecord: a MAC that does not verify)."""
        def fill(pipe: Any) -> None:
            pipe.hget(self.keys.call(call_id), "rec")
            pipe.hgetall(self.keys.call_steps(call_id))

        raw, steps = await read_all(self.redis, fill)
        if raw is None:
            return None
        record = CallRecord(*astuple(_entry.decode(self._verified(call_id, "record", raw,
                                                                  (call_id,)))))
        for f, value in steps.items():
            field = f.decode(errors="replace")
            row = _row.decode(self._verified(call_id, f"step {field!r}", value, (call_id, field)))
            r = StepRow(*astuple(row))
            record.rows[(r.step, r.item)] = r
        return record

    def _verified(self, call_id: str, what: str, value: bytes,
                  parts: tuple[str, ...]) -> bytes:
        mac, _, payload = value.partition(b" ")
        if not self.trust.valid(mac, CALL, *parts, payload):
            self.trust.refuse(CALL, f"{what} of call {call_id}", mac,
                              "the call is not driven on it")
            raise ForeignRecord(f"call {call_id}: its {what} is not one this cluster's nodes "
                          "wrote (its MAC does not verify)")
        return payload

    async def orphans(self) -> list[CallHandover]:
        """The calls running under a dead incarnation's lease, taken by this node and
        copied into its journal. Until Redis has answered for a TTL and a beat, only the
        calls of this incarnation whose driver stopped (a missing liveness key may be a
        node yet to beat again; this node's own key is no other's to wait for)."""
        if not self.membership.member:
            return []
        settled = self.membership.settled()
        ids = [i.decode(errors="replace") for i in await read(  # (a Redis writer's: none)
            lambda: self.redis.zrange(self.keys.calls_running, 0, -1))]
        ids = [i for i in ids if i not in self.leases]
        if not ids:
            return []

        def fill(pipe: Any) -> None:
            for i in ids:
                pipe.hget(self.keys.call(i), "holder")

        holders = {i: (h.decode(errors="replace") if h else "") for i, h in zip(
            ids, await read_all(self.redis, fill), strict=True)}
        me = self.membership.consumer
        if not settled:
            holders = {i: h for i, h in holders.items() if h == me}
        alive = await self.membership.alive(sorted({h for h in holders.values() if h}))
        taken = []
        for call_id, holder in holders.items():
            if holder in alive and holder != me:  # (this node's own: its driver stopped)
                continue
            try:
                record = await self.fetch(call_id)
            except ForeignRecord:
                continue
            if record is None or record.status != "running" or not self.drivable(record):
                continue
            if not await self.take(call_id, holder):
                continue  # another live node took it first
            record = await self._read_taken(call_id)
            if record is None:
                continue
            await self._copied(record)
            for r in record.rows.values():
                r.output = None  # (kept in the journal alone, as the engine keeps rows)
            self.taken += 1
            taken.append(CallHandover(record, holder or "no node"))
        return taken

    async def _read_taken(self, call_id: str) -> CallRecord | None:
        """The call as Redis holds it under the lease this node just took: a holder
        kept off a core past its TTL still wrote under its own until the take (a step's
        new row with its task's submit), and a read before it would miss that row, its
        step made again under a new id. Not running, or not one this cluster's nodes
        wrote: the lease let go (None)."""
        try:
            record = await self.fetch(call_id)
        except ForeignRecord:
            record = None
        except BaseException:
            self.stopped(call_id)  # (taken again at a later beat)
            raise
        if record is None or record.status != "running":
            self.stopped(call_id)
            return None
        return record

    def stopped(self, call_id: str) -> None:
        """Its driver here stopped: the lease let go, so the next beat's `orphans` takes it."""
        self.leases.pop(call_id, None)
        self.held.pop(call_id, None)  # (the call is taken again from what Redis holds)
        self.held_tasks.pop(call_id, None)

    async def _copied(self, record: CallRecord) -> None:
        """The call and its rows in the journal, one commit where it makes one: a read
        between two would see the call as Redis holds it beside its rows as they were (a
        run ended, its last step still running: no output)."""
        rows = list(record.rows.values())
        if rows and self._one_commit:
            await cast(EndKeeper, self.local).save_end(record, rows)
            return
        await self.local.save_call(record)
        if rows:
            await self.local.save_steps(record.call_id, rows)

    # -- what another node drives, read here (`corral runs`, `run-status`) ---------------
    async def newest(self, kind: str, n: int) -> list[str]:
        return [i.decode() for i in await read(
            lambda: self.redis.zrevrange(self.keys.calls(kind), 0, n - 1))]

    async def copy(self, call_ids: list[str]) -> None:
        """These calls copied into this node's journal as Redis holds them now (those it
        drives aside); Redis away: the copies stay as they were."""
        for call_id in call_ids:
            if call_id in self.leases:
                continue
            try:
                record = await self.fetch(call_id)
            except (ForeignRecord, RedisError):
                continue
            # taken here while it was read (the beat's, its driver stopped): the
            # journal's rows are its driver's, newer than Redis's (those held here)
            if record is not None and call_id not in self.leases:
                await self._copied(record)
