"""A cluster task's asks of a person, in Redis (issue 55; docs/approvals.md#on-a-cluster,
decision 770): what a node's inbox (supervisor/tasks/inbox.py) is for its own tasks, for
the tasks a node claimed from its cluster (`Task.asks_kept`), so that any node lists them
(`corral approvals`, `GET /api/v1/approvals`), any node decides one, exactly once, and
the node that takes the task over after the asking node died finds the ask its attempt
made (pending, or decided meanwhile) and is never asked again.

An ask is a hash (Keys.ask): its record (`rec`, the Ask as JSON while pending) with a MAC
made with the cluster key (trust.ASK over its id), and once it ended its end (`end`:
how, when, by whom, what the person gave) with a MAC of its own. A record or an end
whose MAC does not verify is refused as every forged record is (said once, counted in
`corral stats` -> cluster.trust.refused.asks): a forged ask is listed nowhere and
decided by no one, a forged end is never applied.

ASK makes the ask, fenced by the claim's token as the task's steps are (a node whose
task was taken over cannot ask for it), and finds the one its task made before under
the same call's key (Keys.task_asks, deleted with the task's end). END ends it once: a
second decision, on any node, is refused naming how and by whom it ended; an ask whose
task has ended (or whose record expired) is withdrawn instead, and the decision refused
as such. The pending asks are a sorted set, and a tenant's another (the bounds count
them). An ask made here, and an end written here, is told on this node's stream as the
inbox's are (AskEnded): its feeds (`approvals.watch`) and its webhook have it, each
once in the cluster.

The attempt waiting for an ask is told its end at once when this node decides it, else
by a read of the asks waited on here (one pipeline) woken by END's message on the asks'
channel (Keys.asks_ended), and once a beat while any is waited on, which stands in for
a message lost (the subscription not yet made, Redis away and back): decision 770.
Its deadline (approve_timeout, a question's timeout) is kept by the node waiting: the
node that takes the task over waits out what is left of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from typing import Any, NamedTuple

import msgspec
from redis.exceptions import RedisError

from .. import jsonrpc
from ..askviews import Ask, AskEnd, AskRequest
from ..jsonrpc import RpcError
from ..supervisor.config import DEFAULT_TENANT, ClusterSettings
from ..supervisor.stream import Stream
from ..supervisor.tasks import TERMINAL, Task
from ..supervisor.tasks.elicitations import PREFIX as ELICITATION
from ..supervisor.tasks.inbox import (
    CORRAL,
    DEFAULT_BOUNDS,
    MAX_PENDING,
    AskEnded,
    Decision,
    InboxBounds,
    check_decision,
    ended_message,
    too_many_asks,
)
from ..supervisor.tasks.model import TaskFinished
from ..supervisor.tasks.taskmachine import suspension_error
from ..timeouts import within
from . import records
from .connection import read, unavailable
from .keys import GROUP, Keys
from .queue import ClusterTask
from .scripts import Scripts
from .trust import ASK as ASK_KIND
from .trust import Trust

log = logging.getLogger("corral.cluster.asks")
SWEPT = 64  # asks past their deadline timed out per beat, at most

# KEYS: the task's record, its asks by call (Keys.task_asks), the ask, the pending asks,
#       its tenant's
# ARGV: the claim's fence token, the call's key, the ask's id, its record, its MAC, when
#       it was asked, the bounds: the cluster's and a tenant's, its deadline ('' none:
#       kept in Keys.ask_deadlines, which any node's beat times out, a suspended task's
#       ask having no node waiting on it), the bound of a task's asks
# -> {1} asked, {2, id} asked before under the key, {0} not this claim's (the fence),
#    {-1, n} / {-2, n} the cluster's / the tenant's pending asks at their bound, {-3, n}
#    the task's asks at their bound
ASK = """
local t = redis.call('HMGET', KEYS[1], 'fence', 'status')
if t[1] ~= ARGV[1] or t[2] ~= 'running' then return {0} end
local had = redis.call('HGET', KEYS[2], ARGV[2])
if had then return {2, had} end
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
if ARGV[9] and ARGV[9] ~= '' then
  redis.call('ZADD', string.match(KEYS[1], '^(.*)task:') .. 'askdue', ARGV[9], ARGV[3])
end
return {1}
"""

# KEYS: the ask, the pending asks, its tenant's, its task's record
# ARGV: the ask's id, its end (JSON), that end's MAC, a withdrawal (JSON) and its MAC,
#       seconds an ended ask is kept, 'decide' or 'withdraw' (only of an ended task), the
#       channel its end is published on (Keys.asks_ended)
# -> {1, end, mac} ended so, {3, end, mac} withdrawn (its task had ended), {2, end, mac}
#    had ended before, {4} not withdrawn (its task runs on), {0} no such ask. A suspended
#    task (SUSPEND) with nothing else pending is queued again in its agent's stream in
#    the same step: whichever node claims it resumes it by replay (decision 780)
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
if code == 1 and status == 'suspended' then
  -- its task waits with no attempt: queued again, once nothing else it asked is pending
  local waiting = false
  for _, other in ipairs(redis.call('HVALS', prefix .. 'asks:' .. id)) do
    local o = prefix .. 'ask:' .. other
    if other ~= ARGV[1] and redis.call('HEXISTS', o, 'rec') == 1
        and redis.call('HEXISTS', o, 'end') == 0 then
      waiting = true
    end
  end
  if not waiting then
    local entry = redis.call('XADD', redis.call('HGET', KEYS[4], 'stream'), '*', 'task', id)
    redis.call('HSET', KEYS[4], 'status', 'queued', 'entry', entry)
  end
end
redis.call('PUBLISH', ARGV[8], ARGV[1])
return {code, e, m}
"""
# A waiting attempt gives its claim back past its agent's suspend_after (decision 780):
# the task is `suspended`, its attempt ended so (as the node writes it), its stream entry
# gone, no claim, its steps and its asks kept (an end deletes them, this does not): END of
# what it asked queues it again. Refused while nothing it asked is pending (the answer
# came first: its attempt runs on with it), while an MCP server's elicitation is pending
# (its tool call is in flight at the server: no next attempt takes it up), and when a
# cancel was asked (the node cancels it at its beat).
# KEYS: the task's record, its attempts, its stream, its asks by call (Keys.task_asks)
# ARGV: the claim's fence token, its stream entry, its attempt as it ended (JSON), the
#       prefix of an elicitation's call key
# -> 1 suspended, 0 not this claim's, 2 nothing it asked is pending, 3 an elicitation is
#    pending, 4 a cancel was asked
SUSPEND = f"""
local t = redis.call('HMGET', KEYS[1], 'fence', 'status', 'cancel')
if t[1] ~= ARGV[1] or t[2] ~= 'running' then return 0 end
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


class AskEnding(msgspec.Struct, array_like=True):
    """An ask's end as its hash keeps it (`end`)."""

    end: AskEnd
    ended: float
    by: str
    data: Any = None


_encode = msgspec.json.Encoder().encode
_ask = msgspec.json.Decoder(Ask)
_ending = msgspec.json.Decoder(AskEnding)


class _AskWait:
    """An ask waited on here: its record, the future its waiters share, how many."""

    __slots__ = ("ask", "fut", "waiters")

    def __init__(self, ask: Ask) -> None:
        self.ask = ask
        self.fut: asyncio.Future[Ask] = asyncio.get_running_loop().create_future()
        self.waiters = 0


class EndWritten(NamedTuple):
    """What END answered: its code (above) and the ask as it ended (None: not ended)."""

    code: int
    ask: Ask | None


class ClusterAsks:
    """The asks of the cluster's tasks: made, waited on, listed, read and decided from
    any node."""

    def __init__(self, redis: Any, scripts: Scripts, keys: Keys, trust: Trust,
                 settings: ClusterSettings, stream: Stream,
                 bounds: InboxBounds = DEFAULT_BOUNDS) -> None:
        """`bounds`: [supervisor] max_pending_asks and max_pending_asks_per_tenant, held
        by the cluster's ask script as the inbox holds its own."""
        self.redis = redis
        self.bounds = bounds
        self.scripts = scripts
        self.keys = keys
        self.trust = trust
        self.settings = settings
        self._ask = redis.register_script(ASK)
        self._end = redis.register_script(END)
        self._suspend = redis.register_script(SUSPEND)
        # task id -> ask id -> the ask waited on here: a task waits while it has one
        self._waiting: dict[str, dict[str, _AskWait]] = {}
        # ask id -> the same waits: what the channel names (an ask id per end) found at
        # once, and the asks read; kept in step with _waiting by _hold and _unwait alone
        self._by_ask: dict[str, _AskWait] = {}
        self._poller: asyncio.Task[None] | None = None
        self._listener: asyncio.Task[None] | None = None
        self._woken = asyncio.Event()  # an ask waited on here ended (its channel said)
        # ask id -> its withdrawal under way (one, however many listings find it)
        self._withdrawing: dict[str, asyncio.Task[Any]] = {}
        self._unread = False  # the last read of the asks waited on failed (said once)
        self.asked = 0  # asks made here
        self.decided = 0  # decisions made here (a person's, a deadline's)
        self.suspended = 0  # claims given back here by a suspension (SUSPEND)
        self.stream = stream
        stream.subscribe(self._finished, TaskFinished)

    # -- asking (AsksElsewhere) -----------------------------------------------------------
    async def ask(self, task: Task, req: AskRequest) -> Ask:
        assert isinstance(task, ClusterTask)  # (only a claim carries this store)
        now = time.time()
        # a claim's tenant is its agent's here: the cluster routed it to this tenant's
        # agent of the name (decision 439)
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
            # told here, once in the cluster: the inbox's feeds and webhook of this node
            self.stream.emit(AskEnded(ask))
            return ask
        if code == 2:
            return await self._earlier(task, req, got[1].decode())
        if code == 0:
            raise RpcError(jsonrpc.CONFLICT, f"task {task.id} is no longer this node's claim "
                                             f"(fence {task.token}): {what}")
        if code == -3:
            raise RpcError(jsonrpc.QUOTA_EXCEEDED, too_many_asks(
                task.id, int(got[1]), self.settings.max_asks_per_task))
        whose = ("the cluster's tasks hold" if code == -1 else
                 f"tenant {tenant}'s tasks hold")
        bound = ("max_pending_asks", self.bounds.pending) if code == -1 else (
            "max_pending_asks_per_tenant", self.bounds.per_tenant)
        raise RpcError(jsonrpc.QUOTA_EXCEEDED, f"{whose} {int(got[1])} pending asks, its "
                                               f"bound ({bound[0]} {bound[1]})")

    async def _earlier(self, task: Task, req: AskRequest, ask_id: str) -> Ask:
        """The ask the task made before under the call's key (an earlier attempt's, on
        this node or one that died): the same task's and call's, or refused."""
        found = await self.get(ask_id)
        if found is None or found.task_id != task.id or found.key != req.key:
            raise RpcError(jsonrpc.REFUSED, f"task {task.id}'s ask for {req.key} in the "
                                            f"cluster's Redis ({ask_id}) is not one this "
                                            f"cluster made for it: refused, not asked "
                                            f"again (`corral stats` -> cluster.trust)")
        return found

    async def wait(self, ask: Ask) -> Ask:
        if not ask.pending:
            return ask
        held = self._by_ask.get(ask.id) or self._hold(ask)
        held.waiters += 1
        if self._poller is None:
            self._poller = asyncio.get_running_loop().create_task(self._poll())
        try:
            return await asyncio.shield(held.fut)
        finally:
            held.waiters -= 1
            if not held.waiters and self._held(ask) is held:
                self._unwait(ask)

    async def holds(self, task: Task) -> bool:
        assert isinstance(task, ClusterTask)
        try:
            fence, status = await read(lambda: self.redis.hmget(
                self.keys.task(task.id), "fence", "status"))
        except RedisError as exc:
            raise unavailable(self.settings, exc, f"task {task.id}'s record was not read"
                              ) from None
        return bool(fence == str(task.token).encode() and status == b"running")

    def waits(self, task_id: str) -> bool:
        return task_id in self._waiting

    async def suspend(self, task: Task, why: str) -> bool:
        """Give the waiting task's claim back, suspended in Redis (SUSPEND); False: it was
        not (what it asked ended first, an elicitation is pending, a cancel was asked, or
        the claim is no longer this node's). RpcError: Redis did not answer."""
        assert isinstance(task, ClusterTask)
        node = task.consumer.rsplit("/", 1)[0]
        attempt = records.suspended_attempt(task.attempts[-1], node, time.time(),
                                            suspension_error(why))
        keys = [self.keys.task(task.id), self.keys.attempts(task.id), task.stream,
                self.keys.task_asks(task.id)]
        got = await self._write(self._suspend, keys,
                                [task.token, task.entry, attempt, ELICITATION],
                                f"task {task.id} was not suspended: it waits on its "
                                f"attempt")
        if int(got) != 1:
            return False
        self.suspended += 1
        return True

    async def sweep(self) -> None:
        """The asks whose deadline passed ended timed out (a node's beat): those a
        suspended task made have no node waiting on them. RedisError: not now."""
        now = time.time()
        ids = [i.decode() for i in await self.redis.zrangebyscore(
            self.keys.ask_deadlines, "-inf", repr(now), start=0, num=SWEPT)]
        for ask_id, ask in zip(ids, await self._rows(ids), strict=True):
            if ask is None or not ask.pending or ask.deadline is None:
                # gone, ended by a forged hand, or listed by one (no deadline signed)
                await self.redis.zrem(self.keys.ask_deadlines, ask_id)
            elif ask.deadline <= now:
                await self._time_out(ask)
            else:  # listed due before its signed deadline: due then
                await self.redis.zadd(self.keys.ask_deadlines, {ask_id: ask.deadline})

    # -- reading --------------------------------------------------------------------------
    async def pending(self, tenant: str | None = None) -> list[Ask]:
        """Every pending ask of the cluster's tasks, or of one tenant's, oldest first (the
        caller's sight is the visibility rules'). Those whose task has ended are
        withdrawn, not listed."""
        # a tenant's caller reads its tenant's set: never every tenant's records, nor
        # as many as the cluster holds
        key = self.keys.asks_pending(tenant)
        try:
            ids = await read(lambda: self.redis.zrange(key, 0, MAX_PENDING - 1))
            rows = await self._rows([i.decode() for i in ids])
            asks = [a for a in rows if a is not None and a.pending]
            statuses = await self._statuses([a.task_id for a in asks])
        except RedisError as exc:
            raise unavailable(self.settings, exc, "the cluster's asks were not read"
                              ) from None
        live = []
        for ask, status in zip(asks, statuses, strict=True):
            if status is None or status.decode() in TERMINAL:
                self._withdraw_later(ask)
            else:
                live.append(ask)
        return live

    async def of_task(self, task_id: str) -> list[Ask]:
        """What the task waits for: its pending asks, oldest first (RedisError when Redis
        does not answer)."""
        ids = await read(lambda: self.redis.hvals(self.keys.task_asks(task_id)))
        rows = await self._rows(sorted({i.decode() for i in ids}))
        return sorted((a for a in rows if a is not None and a.pending
                       and a.task_id == task_id), key=lambda a: (a.created, a.id))

    async def get(self, ask_id: str) -> Ask | None:
        """The ask (pending, or as it ended), None when there is none or its record does
        not verify. A pending ask of a task that has ended is withdrawn first."""
        try:
            [ask] = await self._rows([ask_id])
            if ask is None or not ask.pending:
                return ask
            [status] = await self._statuses([ask.task_id])
        except RedisError as exc:
            raise unavailable(self.settings, exc, f"ask {ask_id} was not read") from None
        if status is not None and status.decode() not in TERMINAL:
            return ask
        gone = await self._write_end(ask, AskEnd.WITHDRAWN, CORRAL, None, "withdraw")
        return gone.ask if gone.ask is not None else ask

    async def _rows(self, ids: list[str]) -> list[Ask | None]:
        async def fetch() -> list[Any]:
            pipe = self.redis.pipeline(transaction=False)
            for i in ids:
                pipe.hmget(self.keys.ask(i), "rec", "mac", "end", "emac")
            return list(await pipe.execute())
        rows = await read(fetch) if ids else []
        return [self._verified(i, *row) for i, row in zip(ids, rows, strict=True)]

    async def _statuses(self, task_ids: list[str]) -> list[bytes | None]:
        async def fetch() -> list[Any]:
            pipe = self.redis.pipeline(transaction=False)
            for t in task_ids:
                pipe.hget(self.keys.task(t), "status")
            return list(await pipe.execute())
        return await read(fetch) if task_ids else []

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
        """The ask as its end says, when that end verifies (else the ask as it was,
        pending: a forged end is never applied)."""
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
    async def decide(self, ask: Ask, decision: Decision) -> Ask:
        """End the pending ask as a person decided, on whichever node (the checks of
        the inbox's, then END: once)."""
        check_decision(ask, decision)
        # past its (signed) deadline, not yet timed out by a beat: timed out now
        late = ask.deadline is not None and ask.deadline <= time.time()
        written = await (self._write_end(ask, AskEnd.TIMED_OUT, CORRAL, None, "decide")
                         if late else self._write_end(ask, decision.end, decision.by,
                                                      decision.data, "decide"))
        if written.code == 0 or written.ask is None:
            raise RpcError(jsonrpc.NOT_FOUND, f"no such ask: {ask.id}")
        if late or written.code != 1:
            raise RpcError(jsonrpc.CONFLICT, ended_message(written.ask))
        return written.ask

    async def _write_end(self, ask: Ask, end: AskEnd, by: str, data: Any, how: str
                         ) -> EndWritten:
        now = time.time()
        mine = _encode(AskEnding(end, now, by, data))
        gone = _encode(AskEnding(AskEnd.WITHDRAWN, now, CORRAL, None))
        tenant = ask.tenant if ask.tenant is not None else DEFAULT_TENANT
        keys = [self.keys.ask(ask.id), self.keys.asks_pending(),
                self.keys.asks_pending(tenant), self.keys.task(ask.task_id)]
        args = [ask.id, mine, self.trust.sign(ASK_KIND, ask.id, "end", mine), gone,
                self.trust.sign(ASK_KIND, ask.id, "end", gone),
                int(self.settings.tasks_kept_for), how, self.keys.asks_ended]
        got = await self._write(self._end, keys, args,
                                f"ask {ask.id} was not ended (it is still pending)")
        code = int(got[0])
        if code in (0, 4):
            return EndWritten(code, None)
        ended = self._ended(ask, got[1], got[2])
        if ended.pending:  # an end there this node cannot verify
            raise RpcError(jsonrpc.CONFLICT, f"ask {ask.id} has an end in the cluster's "
                                             f"Redis that does not verify with this "
                                             f"node's cluster key: refused")
        if code == 1:
            self.decided += 1
        if code in (1, 3):  # written here: told here, once in the cluster
            self.stream.emit(AskEnded(ended))
        self._settle(ended)
        return EndWritten(code, ended)

    async def _write(self, script: Any, keys: list[Any], args: list[Any], what: str
                     ) -> Any:
        try:
            [got] = await self.scripts.acknowledged([(script, keys, args)])
        except RedisError as exc:
            raise unavailable(self.settings, exc, what) from None
        if isinstance(got, RedisError):
            raise unavailable(self.settings, got, what)
        if isinstance(got, BaseException):
            raise got
        return got

    def _settle(self, ask: Ask) -> None:
        held = self._unwait(ask)
        if held is not None and not held.fut.done():
            held.fut.set_result(ask)

    def _held(self, ask: Ask) -> _AskWait | None:
        return self._by_ask.get(ask.id)

    def _hold(self, ask: Ask) -> _AskWait:
        held = self._by_ask[ask.id] = _AskWait(ask)
        self._waiting.setdefault(ask.task_id, {})[ask.id] = held
        return held

    def _unwait(self, ask: Ask) -> _AskWait | None:
        held = self._by_ask.pop(ask.id, None)
        if held is None:
            return None
        task_id = held.ask.task_id
        asks = self._waiting[task_id]
        del asks[ask.id]
        if not asks:  # its last: the task waits no more
            del self._waiting[task_id]
        return held

    # -- the asks waited on here ----------------------------------------------------------
    async def _poll(self) -> None:
        """Their ends read when the channel says one ended, and once a beat while any is
        waited on (a message lost, Redis away and back); a deadline passed ends its ask
        timed out (END: unless a person decided it first)."""
        try:
            while self._waiting:
                if self._listener is None or self._listener.done():
                    self._listener = asyncio.get_running_loop().create_task(self._listen())
                with contextlib.suppress(TimeoutError):
                    await within(self._woken.wait(), self.settings.beat)
                self._woken.clear()
                waited = list(self._by_ask.values())
                try:
                    rows = await self._rows([held.ask.id for held in waited])
                except RedisError as exc:
                    if not self._unread:
                        log.warning("cluster: the asks waited on here were not read "
                                    "(%s): their tasks wait on", exc)
                    self._unread = True
                    continue
                self._unread = False
                now = time.time()
                for held, ask in zip(waited, rows, strict=True):
                    if ask is None or self._held(held.ask) is not held:
                        continue
                    if not ask.pending:
                        self._settle(ask)
                    elif ask.deadline is not None and ask.deadline <= now:
                        await self._time_out(ask)
        finally:
            self._poller = None

    async def _listen(self) -> None:
        """The ends published on the asks' channel while any ask is waited on here: one
        of those wakes the read at once. Redis away: the beat's read stands in."""
        pubsub = self.redis.pubsub()
        try:
            await pubsub.subscribe(self.keys.asks_ended)
            while self._waiting:
                got = await pubsub.get_message(ignore_subscribe_messages=True,
                                               timeout=self.settings.beat)
                if got is None:
                    continue
                ended = got["data"].decode(errors="replace")
                if ended in self._by_ask:
                    self._woken.set()
        except (RedisError, OSError):
            return
        finally:
            with contextlib.suppress(RedisError, OSError):
                await pubsub.aclose()

    async def _time_out(self, ask: Ask) -> None:
        try:
            await self._write_end(ask, AskEnd.TIMED_OUT, CORRAL, None, "decide")
        except RpcError as exc:  # tried again at the next read
            log.warning("cluster: ask %s was not timed out (%s)", ask.id, exc.message)

    def _finished(self, e: TaskFinished) -> None:
        """A task of this node ended while it waited: its waiters are told withdrawn
        (written where the ask is next read, once its record says it ended)."""
        for held in list(self._waiting.get(e.task.id, {}).values()):
            self._settle(msgspec.structs.replace(held.ask, end=AskEnd.WITHDRAWN,
                                                 ended=time.time(), by=CORRAL))

    def _withdraw_later(self, ask: Ask) -> None:
        if ask.id not in self._withdrawing:
            self._withdrawing[ask.id] = asyncio.get_running_loop().create_task(
                self._withdraw(ask))

    async def _withdraw(self, ask: Ask) -> None:
        try:
            await self._write_end(ask, AskEnd.WITHDRAWN, CORRAL, None, "withdraw")
        except RpcError as exc:  # withdrawn where it is next read
            log.warning("cluster: an ask of an ended task was not withdrawn (%s)",
                        exc.message)
        finally:
            del self._withdrawing[ask.id]

    def status(self) -> dict[str, int]:
        """`corral stats` -> cluster.asks: asks made and ended here, and waited on now."""
        return {"asked": self.asked, "decided": self.decided,
                "waited_on": len(self._by_ask), "suspended": self.suspended}

    async def close(self) -> None:
        work = [t for t in (self._poller, self._listener, *self._withdrawing.values())
                if t is not None]
        for t in work:
            t.cancel()
        for t in work:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        for held in self._by_ask.values():
            if not held.fut.done():
                held.fut.cancel()
        self._waiting.clear()
        self._by_ask.clear()

