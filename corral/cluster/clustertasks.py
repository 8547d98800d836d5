"""Cluster tasks handed in and asked about, on any node: the submit (idempotent on the
task id, acknowledged once Redis has it), `corral task ID`, and the wait for an outcome,
woken by the outcomes stream. Redis away, a submission is refused with the reason (never
accepted and lost); an outcome is believed only when its MAC verifies (trust.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable
from typing import Any

import msgspec
from redis.exceptions import RedisError

from .. import jsonrpc
from .. import methods as m
from ..jsonrpc import RpcError
from ..supervisor.config import DEFAULT_TENANT, AgentSpec, ClusterSettings, ConfigError
from ..supervisor.configload import parse_agents
from ..supervisor.labels import (
    HANDED,
    STARTER,
    LabelStore,
    accepted,
    session_record,
    starts,
)
from ..supervisor.tasks import TaskFinished, is_task_id, new_id
from ..supervisor.tasks.admission import QueueBound, cluster_refusal
from ..supervisor.tasks.durable import Sees
from ..supervisor.tasks.host import TaskHost
from ..supervisor.tasks.spawn import REACH
from ..supervisor.tasks.spawntree import Lineage
from ..taskkeys import KeyClaim, answer_of, claimed, submitted
from ..taskoptions import encoded, options_of
from ..timeouts import within
from . import listing, records
from .batch import Batcher
from .clustersessions import ClusterSessions
from .clusterspawns import ROOT, lineage_field
from .connection import never_sent, place, read_all, said, unavailable, why
from .keys import Keys
from .membership import Membership, NodeView
from .outbox import Outbox
from .replicas import UnconfirmedWrite
from .rides import REFUSED, LostLease, Ride
from .scripts import RedisPart, Scripts
from .sessionscripts import MOVED
from .submitclaim import SubmitClaims
from .submitkeys import SubmitKeys
from .trust import AGENT, OUTCOME, TENANT, Trust

RECHECK_BEATS = 5  # a waiting client reads its task's record at least this often (beats)
Waiter = asyncio.Future[m.TaskResult | None]
Progress = Callable[[dict[str, Any]], None]
_progress = msgspec.json.Decoder(dict[str, Any])


def _let_go(by: dict[str, list[Any]], task_id: str, item: Any) -> None:
    """A waiter or a follower of the task let go of (its list with the last)."""
    items = by.get(task_id)
    if items is not None and item in items:
        items.remove(item)
        if not items:
            del by[task_id]


def _least(bounds: Iterable[int]) -> int:
    return min((most for most in bounds if most), default=0)


def _tighter(agents: int, tenants: int, tenant: str) -> QueueBound:
    """The agent's bound, or the tenant's when that is the tighter (0: none)."""
    if tenants and (not agents or tenants < agents):
        return QueueBound(tenants, tenant)
    return QueueBound(agents)


class ClusterTasks(RedisPart):
    def __init__(self, scripts: Scripts, keys: Keys, trust: Trust, settings: ClusterSettings,
                 membership: Membership, host: TaskHost, report: Callable[[str], None],
                 submit_batch: SubmitClaims, sessions: ClusterSessions, outbox: Outbox,
                 submit_keys: SubmitKeys, labels: LabelStore) -> None:
        """`submit_batch`: the plain submit's batcher (a node that runs the agent claims
        its share as it submits: submitclaim.py); `labels`: where a task's handed
        labels are kept (supervisor/labels.py)."""
        super().__init__(scripts, keys, trust)
        self.labels = labels
        self.submit_keys = submit_keys
        self.settings = settings
        self.membership = membership
        self.host = host
        self.report = report
        self.view: list[NodeView] = []  # the nodes as last read (each beat)
        # clients waiting here, by task: woken with the outcome when the outcomes stream
        # carries it, else with None (read the record)
        self._waiting: dict[str, list[Waiter]] = {}
        self._following: dict[str, list[Progress]] = {}
        self.submit_batch = submit_batch
        self.outbox = outbox
        self._stepping: set[str] = set()  # the durable calls' steps' tasks waited for here
        self.sessions = sessions
        self._submit_turn = Batcher(scripts, self.sessions.submit)

    # -- submit ---------------------------------------------------------------------------
    async def refresh_view(self) -> None:
        self.view = await self.membership.nodes()

    async def _route(self, agent: str) -> str:
        """The tenant whose agent of this name a task of `agent` is for: this node's
        agent's when it runs one, else that of the live nodes' agents of the name, else
        the cluster agent's table's. Refused when no live node runs it (it would wait
        forever), or when the live nodes' agents of the name are of several tenants."""
        local = self.host.agents.get(agent)
        if local is not None:
            # (its own beat may still name the agent the name had before, which must not
            # refuse the task)
            return local.spec.tenant
        for fresh in (False, True):
            if fresh:
                await self.refresh_view()
            tenants = {n.tenants.get(agent, DEFAULT_TENANT) for n in self.view
                       if n.alive and agent in n.agents}
            if len(tenants) == 1:
                return tenants.pop()
            if len(tenants) > 1 and fresh:  # a stale view is read again
                raise RpcError(jsonrpc.REFUSED, (
                    f"agent {agent} is run by nodes of cluster {self.settings.name} as "
                    f"agents of {len(tenants)} tenants ({', '.join(sorted(tenants))}), "
                    "and not by this node: submit the task on a node that runs the one "
                    "meant"))
        table = await self._table_tenant(agent)
        if table is not None:
            return table
        raise RpcError(jsonrpc.REFUSED, f"no live node of cluster {self.settings.name} "
                                        f"runs agent {agent}")

    async def max_queue(self, agent: str, tenant: str) -> QueueBound:
        """The bound on what waits for the tenant's agent of the name, for every submit
        and spawn at this node: its agent's max_queue, or its tenant's own when tighter
        (decision 2096). Its own agent's and tenant's when it runs it, else the tightest
        the live nodes that run it say in their beats as last read (they differ only
        while a reload reaches them one by one), else its cluster table's, which a node
        places (decision 2040)."""
        local = self.host.agents.get(agent)
        if local is not None and local.spec.tenant == tenant and self.membership.queues:
            # (this node's own, as its beat says them: read from its agents and
            # [tenants] now, one place for both)
            agents, tenants = self.membership.queues()
            return _tighter(agents.get(agent, 0), tenants.get(tenant, 0), tenant)
        said = [n for n in self.view if n.runs(tenant, agent)]
        if said:
            return _tighter(_least(n.queues.get(agent, 0) for n in said),
                            _least(n.tenant_queues.get(tenant, 0) for n in said), tenant)
        table = await self._table(agent)
        return QueueBound(table.max_queue if table is not None and table.tenant == tenant
                          else 0)

    async def serves(self, agent: str, tenant: str) -> bool:
        """Whether a task of the tenant's agent of the name would be run (as `_route` finds it)."""
        local = self.host.agents.get(agent)
        if local is not None and local.spec.tenant == tenant:
            return True
        for fresh in (False, True):
            if fresh:
                await self.refresh_view()
            if any(n.runs(tenant, agent) for n in self.view):
                return True
        return await self._table_tenant(agent) == tenant

    async def _landed_first(self, ride: Ride) -> None:
        """The outcomes of the ride's tasks that wait in the outbox (a failed write's)
        in their records before the ride's rows: a row ended there never stands beside
        its task still running."""
        if not self.outbox.waiting(ride.tasks):
            return
        with said(self.settings, "the task was not accepted"):
            if not await self.outbox.send_held(ride.tasks):
                raise LostLease(ride.call_id)

    async def _put(self, p: m.TaskParams, task_id: str, *, watched: bool = False,
                   ride: Ride | None = None) -> bool:
        """Accept a cluster task: done once Redis holds it; RpcError otherwise (nothing
        was accepted). `watched`: a client follows its progress; `ride`: a durable
        call's rows the submit writes (LostLease when the call's fence refused them and
        the task). False: Redis had a task of this id already."""
        raw = bytes(p.input)
        with said(self.settings, "the task was not accepted"):
            tenant = await self._route(p.agent)
        # (kept before the task is: a node that claims it reads them)
        session = None if p.session is None else session_record(tenant or "", p.agent,
                                                                p.session)
        for key, labels in accepted(task_id, session, HANDED.get()):
            await self.labels.mark(key, labels)
        bound = await self.max_queue(p.agent, tenant)
        keys = [self.keys.task(task_id), self.keys.stream(tenant, p.agent, p.priority),
                self.keys.priorities(tenant, p.agent), self.keys.agents, self.keys.live]
        # (its retries: its own policy's, else the claiming node's agent's)
        retries = "" if p.retry is None or p.retry.retries is None else p.retry.retries
        options, now = options_of(p), time.time()
        at = options.start_at(now)  # (checked at the door: clustered.py)
        args = [task_id, p.agent, raw, p.priority,
                "" if p.timeout is None else repr(p.timeout), retries, repr(now),
                self.membership.node, bound.most, "1" if watched else "0",
                records.trace_field(p.traceparent, p.tracestate)]
        submit = self.scripts.submit
        if p.session is not None:
            with said(self.settings, "the task was not accepted"):
                args += await self.sessions.submit_args(p.agent, p.session, tenant)
            submit = self.sessions.submit
        # its place in a spawn tree, signed for every task: a place deleted by a Redis
        # writer must not read as a root's free of any reach
        reach = REACH.get()
        args += ["" if at is None else repr(at), encoded(options) or b"",
                 lineage_field(self.trust, task_id, ROOT if reach is None
                               else Lineage(0, reach[1], reach[0])),
                 tenant, self.trust.sign(TENANT, task_id, p.agent, tenant)]
        carried: list[Any] = []
        if ride is not None:  # (a step's task: never a session's)
            await self._landed_first(ride)
            carried = self.outbox.take(ride.tasks)
            keys += ride.keys
            args[-5:-5] = ride.args([(self.keys.task(t.id), t.token, a[2])
                                     for t, a in carried])
            submit = self.submit_batch.riding
        try:
            if p.session is None:
                answers, got = await self.submit_batch.after(
                    [self.outbox.call_of(*c) for c in carried], keys, args)
            else:
                got = await self._turn(keys, args, task_id)
            for c, answer in zip(carried, answers if p.session is None else [],
                                 strict=True):
                self.outbox.landed(c, answer)
        except BaseException as exc:
            for c in carried:
                self.outbox.landed(c, exc)  # (sent as any other: written or refused)
            if not isinstance(exc, RedisError):
                raise
            if never_sent(exc):
                raise unavailable(self.settings, exc, "the task was not accepted"
                                  ) from None
            got = await self._again(submit, keys, args, task_id)
        while got == MOVED and p.session is not None:  # (its turns moved since read)
            with said(self.settings, "the task was not accepted"):
                args[11:18] = await self.sessions.submit_args(p.agent, p.session, tenant)
            got = await self._turn(keys, args, task_id)
        if got == REFUSED and ride is not None:
            raise LostLease(ride.call_id)
        refused = cluster_refusal(p.agent, got, bound)
        if refused is not None:
            raise refused
        # (who started it, once it is accepted: a refused turn claims no session's name;
        # read by the view alone, never by the node that claims it)
        for key, labels in starts(task_id, session, STARTER.get()):
            await self.labels.mark(key, labels)
        return bool(got == 1)

    async def _turn(self, keys: list[Any], args: list[Any], task_id: str) -> Any:
        """A session's turn submitted: its answer lost is asked for again as any task's,
        whether it is the first submit or one after its session's turns moved (a write
        that ran must never be told as not accepted: a client would send it again)."""
        try:
            return await self._submit_turn(keys=keys, args=args)
        except RedisError as exc:
            if never_sent(exc):
                raise unavailable(self.settings, exc, "the task was not accepted"
                                  ) from None
            return await self._again(self.sessions.submit, keys, args, task_id)

    async def _again(self, submit: Any, keys: list[Any], args: list[Any], task_id: str
                     ) -> Any:
        """A submit whose answer was lost, or not confirmed by the replicas in time, once
        more with the same id: one Redis already holds answers 0."""
        try:
            return await self.scripts.one(submit, keys, args)
        except UnconfirmedWrite as exc:
            raise RpcError(jsonrpc.UNAVAILABLE, (
                f"the task was not acknowledged: the cluster's Redis at "
                f"{place(self.settings)} took it, but {exc}: a failover could lose it. It "
                f"may yet run: `corral task {task_id}` tells")) from None
        except RedisError as again:
            raise unavailable(
                self.settings, again,
                f"the task was not accepted, unless Redis took it before it stopped "
                f"answering (`corral task {task_id}` tells once it answers)") from None

    async def _table(self, agent: str) -> AgentSpec | None:
        """The cluster's table of `agent` as its spec, when it verifies."""
        def fill(pipe: Any) -> None:
            pipe.hget(self.keys.cluster_agents, agent)
            pipe.hget(self.keys.agent_macs, agent)

        table, mac = await read_all(self.redis, fill, transaction=True)
        if table is None or not self.trust.valid(mac, AGENT, agent, table):
            return None
        try:
            return parse_agents({"agents": {agent: msgspec.json.decode(table)}},
                                "the cluster's spec")[agent]
        except (ConfigError, msgspec.DecodeError):
            return None

    async def _table_tenant(self, agent: str) -> str | None:
        spec = await self._table(agent)
        return None if spec is None else spec.tenant

    # -- ask --------------------------------------------------------------------------------
    async def list(self, p: m.TasksList, since: float | None, limit: int,
                   sees: Sees | None) -> tuple[list[m.TaskSummary], str | None]:
        """`corral tasks`: the cluster's tasks. Redis away: refused, not answered with
        this node's tasks alone, which would read as the cluster's."""
        with said(self.settings, "the cluster's tasks cannot be listed (`corral tasks "
                                 "--local` lists this node's own)"):
            return await listing.page(self.redis, self.keys, self.trust, agent=p.agent,
                                      status=p.status, since=since, limit=limit,
                                      before=p.before, sees=sees, filters=p)

    async def info(self, task_id: str) -> m.TaskInfo | None:
        """The task's record, or None; RpcError when its outcome does not verify."""
        i, signed = await self._read(task_id)
        if not signed:
            raise RpcError(jsonrpc.REFUSED, f"task {task_id}'s outcome in Redis is not "
                           "signed with this node's cluster key (a Redis writer without "
                           "the key made or changed it): refused")
        return i

    async def _ended_info(self, task_id: str) -> m.TaskInfo | None:
        """The task's record once it has ended with an outcome that verifies."""
        i, signed = await self._read(task_id)
        if i is None or not signed or i.status.encode() not in records.TERMINAL:
            return None
        return i

    async def _read(self, task_id: str) -> tuple[m.TaskInfo | None, bool]:
        """The task's record, and False for an ended one whose outcome does not verify."""
        if not is_task_id(task_id):
            return None, True

        def fill(pipe: Any) -> None:
            pipe.hgetall(self.keys.task(task_id))
            pipe.lrange(self.keys.attempts(task_id), 0, -1)

        rec, attempts = await read_all(self.redis, fill)
        if not rec:
            return None, True
        status = rec.get(b"status", b"")
        if status in records.TERMINAL and not self.trust.outcome_valid(
                rec.get(b"mac"), task_id, rec.get(b"fence"), status,
                rec.get(b"output", b""), rec.get(b"error", b"")):
            self.trust.refuse(OUTCOME, f"of task {task_id} (its record)", rec.get(b"mac"),
                              "not told to any client")
            return None, False
        info = records.info(task_id, rec, attempts)
        info.tenant = self.trust.tenant_of(task_id, rec[b"agent"], rec.get(b"tenant"),
                                           rec.get(b"tenant_mac"))
        if info.status == "queued" and info.waiting is None:
            info.waiting = await self.sessions.why_waiting(task_id, rec)
        return info, True

    def _waiter(self, task_id: str) -> Waiter:
        fut: Waiter = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(task_id, []).append(fut)
        return fut

    async def _ended(self, task_id: str, fut: Waiter | None) -> m.TaskResult | m.TaskInfo:
        """The task's outcome once it has ended: as the outcomes stream carried it, or
        its record. `fut`: a waiter registered before the task was submitted. The record
        is also read every few beats: a wake-up lost with a connection costs only time."""
        while True:
            try:
                if fut is None:
                    fut = self._waiter(task_id)
                    with contextlib.suppress(RedisError):
                        i = await self._ended_info(task_id)
                        if i is not None:
                            return i
                with contextlib.suppress(TimeoutError):
                    await within(asyncio.shield(fut), RECHECK_BEATS * self.settings.beat)
            finally:
                # (a wait given up, `tasks.submit`'s, leaves no waiter behind)
                if fut is not None:
                    _let_go(self._waiting, task_id, fut)
            carried = fut.result() if fut.done() else None
            if carried is not None:
                return carried
            fut = None  # (woken with no outcome, or a few beats on: the record is read)

    async def wait(self, task_id: str) -> m.TaskInfo:
        while True:
            got = await self._ended(task_id, None)
            if isinstance(got, m.TaskInfo):
                return got
            with contextlib.suppress(RedisError):
                i = await self._ended_info(task_id)
                if i is not None:
                    return i

    async def _claimed(self, p: m.TaskParams, holder: str | None) -> KeyClaim:
        """A submission's idempotency key claimed as `holder`'s (corral/taskkeys.py)."""
        with said(self.settings, "the task was not accepted"):
            claim = await claimed(self.submit_keys, await self._route(p.agent), p, new_id(),
                                  holder)
            if not claim.new:
                await self._named(claim, p)
            return claim

    async def _named(self, claim: KeyClaim, p: m.TaskParams) -> None:
        """A key sent again is answered by its tenant's task of the agent asked alone:
        the task a key names is Redis's word, unsigned, and a Redis writer's key naming
        another tenant's task would give its caller that task's outcome (its record's
        tenant is signed). Refused as another request's key; a record gone is no one's."""
        info, _ = await self._read(claim.task_id)
        if info is not None:
            answer_of(claim, p, info.agent, info.tenant or DEFAULT_TENANT)

    async def submit(self, p: m.TasksSubmit, wait: float | None, holder: str | None
                     ) -> tuple[str, m.TaskResult | None, bool]:
        """The task's id once Redis holds it, with `wait` its outcome if it ends within
        that many seconds, and whether `holder`'s idempotency key named it, submitted
        before."""
        fut: Waiter | None = None
        if p.idempotency_key is not None:
            claim = await self._claimed(p, holder)
            task_id = claim.task_id
            _, replayed = await submitted(self.submit_keys, claim, lambda t: self._put(p, t))
            if wait is None:  # a replay's outcome, when its task has ended
                ended = None
                if replayed:
                    with contextlib.suppress(RedisError):
                        ended = await self._ended_info(task_id)
                return task_id, None if ended is None else ended.outcome(), replayed
        else:
            task_id, replayed = new_id(), False
            if wait is None:
                await self._put(p, task_id)
                return task_id, None, False
            fut = self._waiter(task_id)  # before the submit: no wake-up can come before it
            try:
                await self._put(p, task_id)
            except BaseException:
                _let_go(self._waiting, task_id, fut)
                raise
        try:  # (a replay's record read first: it may have ended)
            got = await within(self._ended(task_id, fut), wait)
        except TimeoutError:
            return task_id, None, replayed
        return task_id, (got.outcome() if isinstance(got, m.TaskInfo) else got), replayed

    async def step(self, p: m.TaskParams, task_id: str, ride: Ride | None = None
                   ) -> m.TaskResult | m.TaskInfo:
        """A durable call's step's task to its end: submitted under `task_id`, or found
        submitted before (a call taken over: its record is read first)."""
        fut = self._waiter(task_id)  # before the submit (as `submit`'s)
        self._stepping.add(task_id)
        try:
            try:
                new = await self._stepped(p, task_id, ride)
            except BaseException:
                _let_go(self._waiting, task_id, fut)
                raise
            if new:
                return await self._ended(task_id, fut)
            _let_go(self._waiting, task_id, fut)
            return await self._ended(task_id, None)
        finally:
            self._stepping.discard(task_id)

    async def _stepped(self, p: m.TaskParams, task_id: str, ride: Ride | None) -> bool:
        """`_put` with the ride; its rows held again when the submit fails other than by
        the call's fence (Redis may not have them)."""
        if ride is None:
            return await self._put(p, task_id)
        try:
            new = await self._put(p, task_id, ride=ride)
        except LostLease:
            raise
        except BaseException:
            ride.unsent()
            raise
        await ride.kept()
        return new

    async def run(self, p: m.TasksRun, accepted: Callable[[str], None],
                  progress: Progress, holder: str | None) -> m.TaskResult:
        """Submit and wait for the outcome; `accepted` is told its id once Redis holds it,
        and `progress` hears its reports from any node (which may come before that);
        `holder` as `submit`'s."""
        claimed = await self._claimed(p, holder) if p.idempotency_key is not None else None
        task_id = claimed.task_id if claimed is not None else new_id()
        fut: Waiter | None = self._waiter(task_id) if claimed is None else None
        self._following.setdefault(task_id, []).append(progress)
        try:
            try:
                if claimed is None:
                    await self._put(p, task_id, watched=True)
                else:
                    await submitted(self.submit_keys, claimed,
                                    lambda t: self._put(p, t, watched=True))
            except BaseException:
                if fut is not None:
                    _let_go(self._waiting, task_id, fut)
                raise
            accepted(task_id)
            got = await self._ended(task_id, fut)
        finally:
            _let_go(self._following, task_id, progress)
        return got.outcome() if isinstance(got, m.TaskInfo) else got

    # -- the outcomes of the tasks this node ran -----------------------------------------
    def finished(self, e: TaskFinished) -> None:
        """A task's end here: its outcome to the outbox; that of a call's step waited for
        here told to the step at once, its FINISH held for the call's next write."""
        args = self.outbox.finished(e, hold=e.task.id in self._stepping)
        if args is not None:
            self._wake(e.task.id, records.inline_result(e.task.id, {
                b"status": args[2].encode(), b"output": args[3], b"error": args[4],
                b"attempts": b"[" + b",".join(args[12:]) + b"]"}))

    # -- the outcomes stream ------------------------------------------------------------
    def _wake(self, task_id: str, result: m.TaskResult | None = None) -> None:
        for fut in self._waiting.get(task_id, ()):
            if not fut.done():
                fut.set_result(result)

    async def tail(self) -> None:
        """Every outcome of the cluster as it is written wakes the clients waiting here.
        After Redis was away, every waiter reads its record again."""
        last: bytes | None = None
        block = max(1, int(self.settings.beat * 1000))
        while True:
            try:
                if last is None:
                    newest = await self.redis.xrevrange(self.keys.outcomes, count=1)
                    last = newest[0][0] if newest else b"0-0"
                    for task_id in list(self._waiting):
                        self._wake(task_id)  # what ended before the tail began
                got = await self.redis.xread({self.keys.outcomes: last}, count=1000,
                                             block=block)
            except RedisError as exc:
                self.report(f"cluster: the outcomes stream: {why(exc)}")
                last = None
                await asyncio.sleep(self.settings.beat)
                continue
            for _stream, entries in got or ():
                for entry_id, fields in entries:
                    last = entry_id
                    task_id = fields.get(b"task")
                    if task_id is None:
                        continue
                    tid = task_id.decode(errors="replace")  # (no UTF-8: no task's)
                    if b"progress" in fields:
                        self._progressed(tid, fields[b"progress"])
                    elif tid in self._waiting:
                        self._carried(tid, fields)

    def _carried(self, task_id: str, fields: dict[bytes, bytes]) -> None:
        """An outcome carried on the stream is told only when its MAC verifies; an entry
        that carries none, or attempts that do not decode, has the waiters read the
        record."""
        status = fields.get(b"status")
        if status is not None and not self.trust.outcome_valid(
                fields.get(b"mac"), task_id, fields.get(b"fence"), status,
                fields.get(b"output", b""), fields.get(b"error", b"")):
            self.trust.refuse(OUTCOME, f"of task {task_id} (on the outcomes stream)",
                              fields.get(b"mac"), "not told to the client waiting for "
                              "it, which waits on for the real one")
            return
        try:
            told = records.inline_result(task_id, fields)
        except (KeyError, ValueError, msgspec.DecodeError):
            # attempts no node wrote (the MAC leaves them out), or an insecure cluster's
            # status that is no UTF-8: the record tells
            told = None
        self._wake(task_id, told)

    def _progressed(self, task_id: str, raw: bytes) -> None:
        following = self._following.get(task_id)
        if not following:
            return
        try:
            params = _progress.decode(raw)
        except msgspec.DecodeError:
            return  # not a worker's report: the record keeps it, no client is told
        for send in list(following):
            send({**params, "task_id": task_id})

