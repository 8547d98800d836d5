"""A cluster task's asks of a person, in Redis (docs/approvals.md#on-a-cluster): any node
lists them and decides one, exactly once, and the node that takes the task over finds the
ask its attempt made. An ask's record and its end each carry a MAC made with the cluster
key: a forged ask is listed nowhere, a forged end never applied.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from typing import TYPE_CHECKING, Any

import msgspec
from redis.exceptions import RedisError

from .. import jsonrpc
from ..askviews import Ask, AskEnd, AskRequest
from ..jsonrpc import RpcError
from ..supervisor.config import DEFAULT_TENANT, ClusterSettings
from ..supervisor.tasks import TERMINAL, Task
from ..supervisor.tasks.askwaits import CORRAL, AskEnded, AskHeard
from ..supervisor.tasks.inbox import (
    ELICITED,
    MAX_PENDING,
    InboxBounds,
    too_many_asks,
)
from ..supervisor.tasks.model import Resumer
from ..supervisor.tasks.taskmachine import suspension_error
from ..timeouts import cancel_all, within
from . import records
from .connection import read, read_all, said
from .keys import GROUP, Keys
from .queue import ClusterTask
from .records import on_worker
from .scripts import RedisPart, Scripts
from .trust import ASK as ASK_KIND
from .trust import Trust

if TYPE_CHECKING:
    from ..supervisor.tasks.askwaits import AskWaits

log = logging.getLogger("corral.cluster.asks")
SWEPT = 64  # asks past their deadline found per beat, at most (the waits end them)

# KEYS: the task's record, its asks by call (Keys.task_asks), the ask, the pending asks,
#       its tenant's
# ARGV: the claim's fence token, the call's key, the ask's id, its record, its MAC, when
#       it was asked, the bounds: the cluster's and a tenant's, its deadline ('' none;
#       any node's beat times it out: a suspended task's ask has no node waiting on it),
#       the bound of a task's asks
# -> {1} asked, {2, id} asked before under the key, {0} not this claim's (the fence),
#    {-1, n} / {-2, n} the cluster's / the tenant's pending asks at their bound, {-3, n}
#    the task's asks at their bound. The task is `waiting` while what it asked is pending
ASK = """
local t = redis.call('HMGET', KEYS[1], 'fence', 'status')
if t[1] ~= ARGV[1] or not ON_WORKER then return {0} end
local had = redis.call('HGET', KEYS[2], ARGV[2])
if had then
  local a = string.match(KEYS[1], '^(.*)task:') .. 'ask:' .. had
  if redis.call('HEXISTS', a, 'rec') == 1 and redis.call('HEXISTS', a, 'end') == 0 then
    redis.call('HSET', KEYS[1], 'status', 'waiting')
  end
  return {2, had}
end
local n = redis.call('HLEN', KEYS[2])
if n >= tonumber(ARGV[10]) then return {-3, n} end
n = redis.call('ZCARD', KEYS[4])
if n >= tonumber(ARGV[7]) then return {-1, n} end
n = redis.call('ZCARD', KEYS[5])
if n >= tonumber(ARGV[8]) then return {-2, n} end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
redis.call('HSET', KEYS[3], 'rec', ARGV[4], 'mac', ARGV[5])
redis.call('ZADD', KEYS[4], ARGV[6], ARGV[3])
redis.call('ZADD', KEYS[5], ARGV[6], ARGV[3])
redis.call('HSET', KEYS[1], 'status', 'waiting')
if ARGV[9] and ARGV[9] ~= '' then
  redis.call('ZADD', string.match(KEYS[1], '^(.*)task:') .. 'askdue', ARGV[9], ARGV[3])
end
return {1}
""".replace("ON_WORKER", on_worker("t[2]"))

# KEYS: the ask, the pending asks, its tenant's, its task's record
# ARGV: the ask's id, its end (JSON), that end's MAC, a withdrawal (JSON) and its MAC,
#       seconds an ended ask is kept, 'decide' or 'withdraw' (only of an ended task), the
#       channel its end is published on (Keys.asks_ended)
# -> {1, end, mac} ended so, {3, end, mac} withdrawn (its task had ended), {2, end, mac}
#    had ended before, {4} not withdrawn (its task runs on), {0} no such ask. Its task,
#    with nothing else it asked pending, resumes in the same step: a waiting one runs on,
#    a suspended one is queued again (whichever node claims it resumes it by replay)
_END = """
local a = redis.call('HMGET', KEYS[1], 'rec', 'end', 'emac')
if not a[1] then return {0} end
if a[2] then return {2, a[2], a[3] or ''} end
local status = redis.call('HGET', KEYS[4], 'status')
local prefix, id = string.match(KEYS[4], '^(.*)task:(.-)$')
local e, m, code = ARGV[2], ARGV[3], 1
if (not status) or OVER[status] then
  e, m, code = ARGV[4], ARGV[5], 3
elseif ARGV[7] == 'withdraw' then
  return {4}
end
redis.call('HSET', KEYS[1], 'end', e, 'emac', m)
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[6])
redis.call('ZREM', prefix .. 'askdue', ARGV[1])
if code == 1 and (status == 'suspended' or status == 'waiting') then
  local waiting = false
  for _, other in ipairs(redis.call('HVALS', prefix .. 'asks:' .. id)) do
    local o = prefix .. 'ask:' .. other
    if other ~= ARGV[1] and redis.call('HEXISTS', o, 'rec') == 1
        and redis.call('HEXISTS', o, 'end') == 0 then
      waiting = true
    end
  end
  if not waiting and status == 'waiting' then
    redis.call('HSET', KEYS[4], 'status', 'running')
  elseif not waiting then
    local entry = redis.call('XADD', redis.call('HGET', KEYS[4], 'stream'), '*', 'task', id)
    redis.call('HSET', KEYS[4], 'status', 'queued', 'entry', entry)
  end
end
redis.call('PUBLISH', ARGV[8], ARGV[1])
return {code, e, m}
"""
# A waiting attempt gives its claim back past its agent's suspend_after: the task is
# `suspended`, its stream entry gone, its steps and asks kept: END of what it asked queues
# it again. Refused while nothing it asked is pending (the answer came first), while an
# MCP server's elicitation is pending (its tool call is in flight at the server: no next
# attempt takes it up), and when a cancel was asked.
# KEYS: the task's record, its attempts, its stream, its asks by call (Keys.task_asks)
# ARGV: the claim's fence token, its stream entry, its attempt as it ended (JSON), the
#       prefix of an elicitation's call key
# -> 1 suspended, 0 not this claim's, 2 nothing it asked is pending, 3 an elicitation is
#    pending, 4 a cancel was asked
SUSPEND = f"""
local t = redis.call('HMGET', KEYS[1], 'fence', 'status', 'cancel')
if t[1] ~= ARGV[1] or not {on_worker('t[2]')} then return 0 end
if t[3] == '1' then return 4 end
local prefix = string.match(KEYS[1], '^(.*)task:')
local asks = redis.call('HGETALL', KEYS[4])
local pending = false
for i = 1, #asks, 2 do
  local a = prefix .. 'ask:' .. asks[i + 1]
  if redis.call('HEXISTS', a, 'rec') == 1 and redis.call('HEXISTS', a, 'end') == 0 then
    if string.sub(asks[i], 1, #ARGV[4]) == ARGV[4] then return 3 end
    pending = true
  end
end
if not pending then return 2 end
if redis.call('LLEN', KEYS[2]) > 0 then redis.call('LSET', KEYS[2], -1, ARGV[3]) end
redis.call('XACK', KEYS[3], '{GROUP}', ARGV[2])
redis.call('XDEL', KEYS[3], ARGV[2])
redis.call('HSET', KEYS[1], 'status', 'suspended', 'fence', '0', 'owner', '', 'entry', '')
return 1
"""
END = ("local OVER = {" + ", ".join(f"['{s}'] = true" for s in sorted(map(str, TERMINAL)))
       + "}\n" + _END)


def past_bound(bounds: InboxBounds, code: int, n: int, tenant: str) -> RpcError:
    """An ask refused at the cluster's pending asks' bound (`code` -1) or its tenant's (-2),
    `n` held: its script's answer, worded once for every ask the cluster keeps."""
    whose = "the cluster's tasks hold" if code == -1 else f"tenant {tenant}'s tasks hold"
    bound = ("max_pending_asks", bounds.pending) if code == -1 else (
        "max_pending_asks_per_tenant", bounds.per_tenant)
    return RpcError(jsonrpc.QUOTA_EXCEEDED, f"{whose} {n} pending asks, its bound "
                                            f"({bound[0]} {bound[1]})")


class AskEnding(msgspec.Struct, array_like=True):
    """An ask's end as its hash keeps it (`end`)."""

    end: AskEnd
    ended: float
    by: str
    data: Any = None


_encode = msgspec.json.Encoder().encode
_ask = msgspec.json.Decoder(Ask)
_ending = msgspec.json.Decoder(AskEnding)


class ClusterAsks(RedisPart):
    """The asks of the cluster's tasks (the AskShelf of a claimed task's home): made,
    listed, read and decided from any node."""

    def __init__(self, scripts: Scripts, keys: Keys, trust: Trust, settings: ClusterSettings,
                 waits: AskWaits, bounds: InboxBounds) -> None:
        super().__init__(scripts, keys, trust)
        self.bounds = bounds
        self.settings = settings
        self._ask = self.redis.register_script(ASK)
        self._end = self.redis.register_script(END)
        self._suspend = self.redis.register_script(SUSPEND)
        self.waits = waits
        self.clock = waits.clock  # (the engine's: a manual one moves the deadlines)
        self.stream = waits.stream
        # the asks a call here waits on: each end, wherever it is written, told to the
        # engine's waits (AskHeard)
        self._heeded: dict[str, Ask] = {}
        self._hearer: asyncio.Task[None] | None = None
        self._listener: asyncio.Task[None] | None = None
        self._woken = asyncio.Event()  # an ask heeded here ended (its channel said)
        self._unread = False  # the last read of the asks heeded failed (said once)
        self.asked = 0  # asks made here
        self.decided = 0  # decisions made here (a person's, a deadline's)
        self.suspended = 0  # claims given back here by a suspension (SUSPEND)

    # -- the home of a claimed task's asks (AskShelf) -----------------------------------
    async def keep(self, task: Task, req: AskRequest) -> Ask:
        assert isinstance(task, ClusterTask)  # (only a claim carries this store)
        now = self.clock.time()
        # (the cluster routed the claim to this tenant's agent of the name)
        tenant = req.tenant if req.tenant is not None else (
            task.replica.spec.tenant if task.replica is not None else DEFAULT_TENANT)
        ask = req.made(f"ask-{secrets.token_hex(8)}", now, tenant)
        rec = _encode(ask)
        keys = [self.keys.task(task.id), self.keys.task_asks(task.id), self.keys.ask(ask.id),
                self.keys.asks_pending(), self.keys.asks_pending(tenant)]
        args = [task.token, req.key, ask.id, rec, self.trust.sign(ASK_KIND, ask.id, "rec", rec),
                repr(now), self.bounds.pending, self.bounds.per_tenant,
                "" if ask.deadline is None else repr(ask.deadline),
                self.settings.max_asks_per_task]
        what = f"its {req.kind} was not asked (nothing was kept)"
        got = await self._write(self._ask, keys, args, what)
        code = int(got[0])
        if code == 1:
            self.asked += 1
            self.stream.emit(AskEnded(ask))
            return ask
        if code == 2:
            return await self._earlier(task, req.key, got[1].decode())
        if code == 0:
            raise RpcError(jsonrpc.CONFLICT, f"task {task.id} is no longer this node's claim "
                                             f"(fence {task.token}): {what}")
        if code == -3:
            raise RpcError(jsonrpc.QUOTA_EXCEEDED, too_many_asks(
                task.id, int(got[1]), self.settings.max_asks_per_task))
        raise past_bound(self.bounds, code, int(got[1]), tenant)

    async def _earlier(self, task: Task, key: str, ask_id: str) -> Ask:
        """The ask an earlier attempt made under the call's key: the same task's and
        call's, or refused."""
        found = await self.read(ask_id)
        if found is None or found.task_id != task.id or found.key != key:
            raise RpcError(jsonrpc.REFUSED, f"task {task.id}'s ask for {key} in the "
                                            f"cluster's Redis ({ask_id}) is not one this "
                                            f"cluster made for it: refused, not asked "
                                            f"again (`corral stats` -> cluster.trust)")
        return found

    async def find(self, task: Task, key: str) -> Ask | None:
        with said(self.settings, f"task {task.id}'s asks were not read"):
            ask_id = await read(lambda: self.redis.hget(self.keys.task_asks(task.id), key))
        return None if ask_id is None else await self._earlier(task, key, ask_id.decode())

    async def end(self, ask: Ask, end: AskEnd, by: str, data: Any = None) -> Ask:
        if by != CORRAL and ask.deadline is not None and ask.deadline <= self.clock.time():
            # past its (signed) deadline, not yet timed out by a beat: timed out now
            end, by, data = AskEnd.TIMED_OUT, CORRAL, None
        written = await self._write_end(ask, end, by, data, "decide")
        if written is None:
            raise RpcError(jsonrpc.NOT_FOUND, f"no such ask: {ask.id}")
        return written

    async def withdraw(self, task_id: str) -> list[Ask]:
        # (written where the ask is next read, once its record says its task ended: its
        # outcome may not be in Redis yet)
        ended = [msgspec.structs.replace(a, end=AskEnd.WITHDRAWN, ended=self.clock.time(),
                                         by=CORRAL)
                 for a in list(self._heeded.values()) if a.task_id == task_id]
        for ask in ended:
            self._heard(ask)
        return ended

    def heed(self, ask: Ask) -> Ask | None:
        self._heeded[ask.id] = ask
        if self._hearer is None:
            self._hearer = asyncio.get_running_loop().create_task(self._hear())
        return None

    def unheed(self, ask: Ask) -> bool:
        self._heeded.pop(ask.id, None)
        return False  # (an ask no node waits on is timed out by a node's beat: sweep)

    def _heard(self, ask: Ask) -> None:
        if self._heeded.pop(ask.id, None) is not None:
            self.stream.emit(AskHeard(ask))

    async def holds(self, task: Task) -> bool:
        assert isinstance(task, ClusterTask)
        with said(self.settings, f"task {task.id}'s record was not read"):
            fence, status = await read(lambda: self.redis.hmget(
                self.keys.task(task.id), "fence", "status"))
        return bool(fence == str(task.token).encode() and status in records.ON_WORKER)

    async def give_back(self, task: Task, why: str) -> Resumer:
        """Give the waiting task's claim back, suspended in Redis (SUSPEND); NOBODY: it
        was not."""
        assert isinstance(task, ClusterTask)
        node = task.consumer.rsplit("/", 1)[0]
        attempt = records.suspended_attempt(task, node, time.time(),
                                            suspension_error(why))
        keys = [self.keys.task(task.id), self.keys.attempts(task.id), task.stream,
                self.keys.task_asks(task.id)]
        got = await self._write(self._suspend, keys,
                                [task.token, task.entry, attempt, ELICITED],
                                f"task {task.id} was not suspended: it waits on its "
                                f"attempt")
        if int(got) != 1:
            return Resumer.NOBODY
        self.suspended += 1
        return Resumer.HOME

    async def sweep(self) -> None:
        """The asks whose deadline passed given to the engine's waits, which end them
        timed out: those a suspended task made have no node waiting on them."""
        now = self.clock.time()
        ids = []
        for i in await self.redis.zrangebyscore(self.keys.ask_deadlines, "-inf",
                                                repr(now), start=0, num=SWEPT):
            try:
                ids.append(i.decode())
            except UnicodeDecodeError:  # (a Redis writer's: no ask's id, else every
                await self.redis.zrem(self.keys.ask_deadlines, i)  # beat stopped here)
        for ask_id, ask in zip(ids, await self._rows(ids), strict=True):
            if ask is None or not ask.pending or ask.deadline is None:
                # gone, ended by a forged hand, or listed by one (no deadline signed)
                await self.redis.zrem(self.keys.ask_deadlines, ask_id)
            elif ask.deadline <= now:
                self.waits.hold(self, ask)
            else:  # listed due before its signed deadline: due then
                await self.redis.zadd(self.keys.ask_deadlines, {ask_id: ask.deadline})

    # -- reading --------------------------------------------------------------------------
    async def pending(self, tenant: str | None = None) -> list[Ask]:
        """Every pending ask of the cluster's tasks, or of one tenant's (never every
        tenant's records), oldest first. Those whose task has ended are withdrawn."""
        key = self.keys.asks_pending(tenant)
        with said(self.settings, "the cluster's asks were not read"):
            ids = await read(lambda: self.redis.zrange(key, 0, MAX_PENDING - 1))
            rows = await self._rows([i.decode(errors="replace") for i in ids])
            asks = [a for a in rows if a is not None and a.pending]
            statuses = await self._statuses([a.task_id for a in asks])
        live = []
        for ask, status in zip(asks, statuses, strict=True):
            if status is not None and status.decode() not in TERMINAL:
                live.append(ask)
                continue
            with contextlib.suppress(RpcError):  # (withdrawn where it is next read)
                await self._write_end(ask, AskEnd.WITHDRAWN, CORRAL, None, "withdraw")
        return live

    async def of_task(self, task_id: str) -> list[Ask]:
        """What the task waits for: its pending asks, oldest first."""
        ids = await read(lambda: self.redis.hvals(self.keys.task_asks(task_id)))
        rows = await self._rows(sorted({i.decode() for i in ids}))
        return sorted((a for a in rows if a is not None and a.pending
                       and a.task_id == task_id), key=lambda a: (a.created, a.id))

    async def read(self, ask_id: str) -> Ask | None:
        """The ask (pending, or as it ended), None when there is none or its record does
        not verify. A pending ask of a task that has ended is withdrawn first."""
        with said(self.settings, f"ask {ask_id} was not read"):
            [ask] = await self._rows([ask_id])
            if ask is None or not ask.pending:
                return ask
            [status] = await self._statuses([ask.task_id])
        if status is not None and status.decode() not in TERMINAL:
            return ask
        gone = await self._write_end(ask, AskEnd.WITHDRAWN, CORRAL, None, "withdraw")
        return gone if gone is not None else ask

    async def _rows(self, ids: list[str]) -> list[Ask | None]:
        def fill(pipe: Any) -> None:
            for i in ids:
                pipe.hmget(self.keys.ask(i), "rec", "mac", "end", "emac")
        rows = await read_all(self.redis, fill) if ids else []
        return [self._verified(i, *row) for i, row in zip(ids, rows, strict=True)]

    async def _statuses(self, task_ids: list[str]) -> list[bytes | None]:
        def fill(pipe: Any) -> None:
            for t in task_ids:
                pipe.hget(self.keys.task(t), "status")
        return await read_all(self.redis, fill) if task_ids else []

    def _verified(self, ask_id: str, rec: bytes | None, mac: bytes | None,
                  end: bytes | None, emac: bytes | None) -> Ask | None:
        if rec is None:
            return None
        if not self.trust.valid(mac, ASK_KIND, ask_id, "rec", rec):
            self.trust.refuse(ASK_KIND, ask_id, mac, "it is listed nowhere and decided by "
                                                     "no one")
            return None
        try:
            ask = _ask.decode(rec)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return None
        if ask.id != ask_id:
            return None
        return ask if end is None else self._ended(ask, end, emac)

    def _ended(self, ask: Ask, end: bytes, emac: bytes | None) -> Ask:
        """The ask as its end says, when that end verifies (else as it was, pending)."""
        if not self.trust.valid(emac, ASK_KIND, ask.id, "end", end):
            self.trust.refuse(ASK_KIND, f"{ask.id}'s end", emac,
                              "it is not applied: its task goes on waiting")
            return ask
        try:
            e = _ending.decode(end)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return ask
        return msgspec.structs.replace(ask, end=e.end, ended=e.ended, by=e.by, data=e.data)

    # -- ending ---------------------------------------------------------------------------
    async def _write_end(self, ask: Ask, end: AskEnd, by: str, data: Any, how: str
                         ) -> Ask | None:
        """The ask as END left it (None: not ended: no such ask, or its task runs on)."""
        now = self.clock.time()
        mine = _encode(AskEnding(end, now, by, data))
        gone = _encode(AskEnding(AskEnd.WITHDRAWN, now, CORRAL, None))
        tenant = ask.tenant if ask.tenant is not None else DEFAULT_TENANT
        keys = [self.keys.ask(ask.id), self.keys.asks_pending(),
                self.keys.asks_pending(tenant), self.keys.task(ask.task_id)]
        args = [ask.id, mine, self.trust.sign(ASK_KIND, ask.id, "end", mine), gone,
                self.trust.sign(ASK_KIND, ask.id, "end", gone),
                int(self.settings.keep_tasks_for), how, self.keys.asks_ended]
        got = await self._write(self._end, keys, args,
                                f"ask {ask.id} was not ended (it is still pending)")
        code = int(got[0])
        if code in (0, 4):
            return None
        ended = self._ended(ask, got[1], got[2])
        if ended.pending:  # an end there this node cannot verify
            raise RpcError(jsonrpc.CONFLICT, f"ask {ask.id} has an end in the cluster's "
                                             f"Redis that does not verify with this "
                                             f"node's cluster key: refused")
        if code == 1:
            self.decided += 1
        if code in (1, 3):  # written here: told here, once in the cluster
            self._heeded.pop(ask.id, None)
            self.stream.emit(AskEnded(ended))
        else:
            self._heard(ended)
        return ended

    async def _write(self, script: Any, keys: list[Any], args: list[Any], what: str
                     ) -> Any:
        with said(self.settings, what):
            return await self.scripts.one(script, keys, args)

    # -- the ends of the asks heeded here ------------------------------------------------
    async def _hear(self) -> None:
        """Their ends read when the channel says one ended, and once a beat (a message
        lost)."""
        try:
            while self._heeded:
                if self._listener is None or self._listener.done():
                    self._listener = asyncio.get_running_loop().create_task(self._listen())
                with contextlib.suppress(TimeoutError):
                    await within(self._woken.wait(), self.settings.beat)
                self._woken.clear()
                try:
                    rows = await self._rows(list(self._heeded))
                except RedisError as exc:
                    if not self._unread:
                        log.warning("cluster: the asks waited on here were not read "
                                    "(%s): their tasks wait on", exc)
                    self._unread = True
                    continue
                self._unread = False
                for ask in rows:
                    if ask is not None and not ask.pending:
                        self._heard(ask)
        finally:
            self._hearer = None

    async def _listen(self) -> None:
        """An end published on the asks' channel of an ask heeded here wakes the read."""
        pubsub = self.redis.pubsub()
        try:
            await pubsub.subscribe(self.keys.asks_ended)
            while self._heeded:
                got = await pubsub.get_message(ignore_subscribe_messages=True,
                                               timeout=self.settings.beat)
                if got is None:
                    continue
                if got["data"].decode(errors="replace") in self._heeded:
                    self._woken.set()
        except (RedisError, OSError):
            return
        finally:
            with contextlib.suppress(RedisError, OSError):
                await pubsub.aclose()

    def status(self) -> dict[str, int]:
        return {"asked": self.asked, "decided": self.decided,
                "waited_on": len(self._heeded), "suspended": self.suspended}

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await cancel_all(t for t in (self._hearer, self._listener) if t is not None)
        self._heeded.clear()
