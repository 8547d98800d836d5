"""Sessions on a cluster (docs/durable.md#sessions-on-a-cluster): Redis keeps a session's
turns in order (sessionscripts.py), each given the state the last turn checkpointed,
written under the claim's fence with a MAC over tenant, agent, name and state (one that
does not verify is refused: the turn starts without a state). The worker is given the
state at every turn, sticky or not: the protocol has no "you have it" for it to trust.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import msgspec
from redis.exceptions import RedisError

from .. import jsonrpc
from ..jsonrpc import RpcError
from ..results import SessionTask, SessionView
from ..supervisor.config import DEFAULT_TENANT
from ..supervisor.labels import session_record, started_record
from ..supervisor.tasks import Task, is_task_id
from ..supervisor.tasks.host import TaskHost
from ..supervisor.tasks.sessions import (
    SessionKey,
    SessionTurns,
    bytes_counted,
    expires,
    over,
    session_bounds,
    session_ttl,
    turn_waits,
)
from ..supervisor.tasks.turns import TurnEvent, decide, ended, state
from . import sessionscripts
from .connection import read, read_all, said, why
from .keys import Keys
from .membership import Membership
from .queue import ClusterTask
from .records import ON_WORKER, TERMINAL
from .scripts import Call, RedisPart, Scripts, submit_script
from .trust import SESSION, Trust

if TYPE_CHECKING:
    from ..supervisor.config import ClusterSettings
    from ..supervisor.quotas import Tenancy
    from ..supervisor.replica import Replica

SUBMIT = submit_script(sessionscripts.SUBMIT_FIRST, sessionscripts.ENTRY,
                       sessionscripts.SUBMIT_THEN)
_FIELDS = ("cur", "last", "created", "tasks", "state", "node", "ttl")  # (`_view`'s)
SWEPT = 100  # ended turns whose sessions a beat's sweep moves, at most
UNREAD = "the cluster's sessions were not read"


class ClusterSessions(RedisPart):
    """The cluster's side of sessions: the submit of a turn, its state, its checkpoints."""

    def __init__(self, scripts: Scripts, keys: Keys, trust: Trust, host: TaskHost,
                 tenancy: Tenancy | None, membership: Membership,
                 report: Callable[[str], None], settings: ClusterSettings) -> None:
        super().__init__(scripts, keys, trust)
        self.settings = settings  # (Redis not answering a command: said in its words)
        self.membership = membership
        self.report = report
        self.host = host
        self.tenancy = tenancy  # (the node's Sessions' own: the same bounds)
        self.submit = self.redis.register_script(SUBMIT)
        self.checkpoint_script = self.redis.register_script(sessionscripts.CHECKPOINT)
        self.end_script = self.redis.register_script(sessionscripts.END)
        self.move_script = self.redis.register_script(sessionscripts.MOVE)
        self.counts = self.redis.register_script(sessionscripts.COUNTS)
        self.sizes = self.redis.register_script(sessionscripts.SIZES)
        # (tenant, agent) -> its live sessions' states' bytes together, at most, as last
        # read or kept here: a checkpoint decided on it is kept only while it holds
        self._bytes_seen: dict[tuple[str, str], int] = {}

    # -- submit ----------------------------------------------------------------------------
    async def submit_args(self, agent: str, session: str, tenant: str) -> list[Any]:
        """What SUBMIT takes after the plain submit's arguments: the session, its ttl (its
        agent's here; '' the hash's own), what a new session was admitted on (each set of
        live sessions its bounds count, and its count read), its owner, and its move. A
        node that does not run the agent knows none of its bounds: it refuses a new
        session, and a turn of one that lives keeps its hash's ttl (decision 1991)."""
        local = self.host.agents.get(agent)
        move = await turn_args(self.scripts, self.keys, SessionKey(tenant, agent, session))
        seen: list[Any] = []
        if move[1] == "-":  # (SUBMIT keeps it only while still so)
            if local is None:
                raise RpcError(jsonrpc.CONFLICT, (  # (not a 429: waiting changes nothing here)
                    f"session {jsonrpc.visible(session)} of agent {agent} not begun: node "
                    f"{self.membership.node} does not run {agent}, so knows neither its "
                    f"max_sessions nor its session_ttl; begin it at a node that runs "
                    f"{agent} (`corral nodes`), its later turns at any node"))
            bounds = session_bounds(local, self.tenancy)
            sets = {a: self.keys.sessions(tenant, a) for b in bounds for a in b.agents}
            counted = await read(lambda: self.counts(keys=[*sets.values()]))
            if (why := over(bounds, dict(zip(sets, counted, strict=True)), {}, 1, 0)):
                raise why
            seen = [*zip(sets.values(), counted, strict=True)]
        return [session, "" if local is None else session_ttl(local, tenant),
                msgspec.json.encode(seen), tenant, *move]

    def _tenant(self, agent: str) -> str:
        """The tenant of this node's agent of the name ('' when it runs none)."""
        local = self.host.agents.get(agent)
        return local.spec.tenant if local is not None else ""

    # -- a claimed task's home.turns (TurnStore) -------------------------------------------
    def started(self, task: Task, replica: Replica) -> msgspec.Raw | None:
        """The state the claim of this turn read (READ_CLAIM's), if its MAC verifies."""
        if not isinstance(task, ClusterTask) or task.session_state is None:
            return None
        assert task.session is not None
        mac, _, body = task.session_state.partition(b" ")
        if not self.trust.valid(mac, SESSION, self._tenant(task.agent), task.agent,
                                task.session, body):
            self.trust.refuse(SESSION, f"{task.session} of agent {task.agent}", mac,
                              "the turn starts without it")
            return None
        return msgspec.Raw(body)

    async def checkpoint(self, task: Task, state: Any) -> dict[str, Any]:
        """Kept in Redis under the claim's fence before it is answered; its bounds decided
        by `over` on the bytes last known of each agent they count (SIZES' read when none
        is, or when what was known no longer holds), kept only while those hold (decision
        2231)."""
        assert isinstance(task, ClusterTask) and task.session is not None
        body = msgspec.json.encode(state)
        tenant = self._tenant(task.agent)
        mac = self.trust.sign(SESSION, tenant, task.agent, task.session, body)
        bounds = session_bounds(self.host.agents.get(task.agent), self.tenancy)
        counted = bytes_counted(bounds)
        # (its state as its claim read it, or as this attempt last kept it)
        own = 0 if task.session_state is None else len(task.session_state.partition(b" ")[2])
        seen: dict[str, int] | None = {a: self._bytes_seen[tenant, a] for a in counted} \
            if all((tenant, a) in self._bytes_seen for a in counted) else None
        try:
            while True:
                fresh = seen is None
                if seen is None:
                    own, *held = await read(lambda: self.sizes(keys=[
                        self.keys.session_bytes(tenant, task.agent),
                        *(k for a in counted for k in (self.keys.sessions(tenant, a),
                                                        self.keys.session_bytes(tenant, a)))
                    ], args=[task.session]))
                    seen = dict(zip(counted, held, strict=True))
                why = over(bounds, {}, seen, 0, len(body) - own)
                if why is not None and fresh:
                    raise why
                got = None if why is not None else await self.scripts.one(
                    self.checkpoint_script, [self.keys.task(task.id)],
                    [task.token, mac.encode() + b" " + body, len(body),
                     msgspec.json.encode([own, [*seen.items()]]), tenant])
                if got not in (None, [-1]):  # (else what it was decided on changed)
                    break
                seen = None
        except (RedisError, OSError) as exc:
            raise RpcError(jsonrpc.UNAVAILABLE, f"session/checkpoint: not kept: the "
                                                f"cluster's Redis did not take it ({exc})"
                           ) from None
        if got == 1:
            task.session_state = mac.encode() + b" " + body
            # (at most what each holds now: a later checkpoint decides on it unread)
            self._bytes_seen.update({(tenant, a): n for a, n in seen.items()})
            if task.agent in seen:
                self._bytes_seen[tenant, task.agent] += len(body) - own
            return {}
        if got == 0:
            raise RpcError(jsonrpc.CONFLICT, f"session/checkpoint: task {task.id} is no "
                                             f"longer this node's claim (fence {task.token})")
        raise RpcError(jsonrpc.CONFLICT, f"session/checkpoint: session {task.session} of "
                                         f"agent {task.agent} is tenant "
                                         f"{got[1].decode()}'s, not this node's agent's "
                                         f"({tenant or 'none'}); the state is not kept")

    # -- a turn's end (decision 1500) --------------------------------------------------------
    async def moved(self, task_ids: Iterable[str]) -> None:
        """The sessions of these ended turns (those still marked so) move as the rule
        decides (turns.py): MOVE keeps each move while its session is as read, else
        answers what it is now, and the move is decided again; all at once, a round
        trip each time. Redis away: said, and a later sweep moves them."""
        # (first as nothing read: MOVE answers what it finds)
        moves = {tid: [tid, "", b"", -1] for tid in task_ids}
        while moves:
            try:
                answers = await self.scripts.acknowledged([
                    (self.move_script, [self.keys.task(tid), self.keys.turns_ended], args)
                    for tid, args in moves.items()])
            except (RedisError, OSError) as exc:
                self.report(f"cluster: the sessions of {len(moves)} turns that ended have "
                            f"not moved yet ({why(exc)}): a node's next beat moves them")
                return
            for tid, got in zip(list(moves), answers, strict=True):
                if not isinstance(got, list):  # moved, moved already, or refused
                    del moves[tid]
                    if isinstance(got, Exception):  # (a record a Redis writer's: said)
                        self.report(f"cluster: the session of task {tid}, which ended, "
                                    f"was not moved: {why(got)}")
                    continue
                _, cur, waiting, place = got
                move = ended(cur == tid.encode(), waiting, place is not None)
                moves[tid] = [tid, move.value if move else "", cur, waiting]

    async def sweep(self) -> None:
        """Every node's beat: the sessions of turns whose end was written and whose node
        did not move them (it died between the two, or Redis did not answer it)."""
        try:
            marked = await self.redis.srandmember(self.keys.turns_ended, SWEPT)
            ids = [t.decode(errors="replace") for t in marked]
            if garbage := [m for m, t in zip(marked, ids, strict=True) if not is_task_id(t)]:
                await self.redis.srem(self.keys.turns_ended, *garbage)  # (a Redis writer's)
        except RedisError as exc:  # (a key of another type: the beat goes on)
            self.report(f"cluster: the ended turns not read: {why(exc)}")
            return
        await self.moved(t for t in ids if is_task_id(t))

    # -- reading -------------------------------------------------------------------------------
    async def session_views(self, agent: str | None) -> list[SessionView]:
        """The cluster's live sessions (of `agent`), every tenant's (each view says
        whose)."""
        head = self.keys.sessions("", "")[:-1]  # the sets' names up to the tenant
        now = time.time()
        out: list[SessionView] = []
        with said(self.settings, UNREAD):
            async for raw in self.redis.scan_iter(
                    match=self.keys.sessions("*", agent or "*"), count=1000):
                # (a name, a member or a record that does not parse, a Redis writer's, is
                # passed over and kept, as a task's listing does: decision 2087)
                try:
                    tenant, _, name_of = raw.decode()[len(head):].partition(":")
                except ValueError:
                    continue
                if not name_of:  # (a set of before sessions had owners: no tenant in it)
                    continue
                live: list[SessionKey] = []
                for n, score in await self.redis.zrange(raw, 0, -1, withscores=True):
                    if score >= now:
                        with contextlib.suppress(ValueError):
                            live.append(SessionKey(tenant, name_of, n.decode()))
                for key, got in zip(live, await self.scripts.run(
                        [read_call(self.scripts, self.keys, key) for key in live]), strict=True):
                    if isinstance(got, Exception):
                        raise got
                    waiting, marked, _, *fields = got
                    with contextlib.suppress(ValueError):
                        view = _view(key, fields, waiting, marked == 1)
                        if view is not None:  # (else expired between the two reads)
                            out.append(view)
        return sorted(out, key=lambda v: (v.agent, v.session))

    async def session_turns(self, key: SessionKey) -> SessionTurns | None:
        with said(self.settings, UNREAD):
            waiting, marked, status, fields = await session_read(self.scripts, self.keys, key)
        view = _view(key, fields, waiting, marked)
        if view is None:
            return None
        cur = (fields[0] or b"").decode()
        # (a current turn whose record is gone runs nowhere; one that ended holds the
        # place no more, its session's move yet to be made: marked, and its record says
        # so, as a mark no end wrote, a Redis writer's, would not)
        holds = bool(status) and (view.running is not None or status not in TERMINAL)
        # (held as the node's end reads it: while any turn is unfinished, a line behind
        # no running turn too, which ended would wait in no session for ever)
        return SessionTurns(view, view.waiting + holds, cur, status.decode() if holds else None)

    async def session_history(self, key: SessionKey) -> list[SessionTask]:
        def fill(pipe: Any) -> None:
            for task_id in ids:
                pipe.hmget(self.keys.task(task_id), "status", "created")

        with said(self.settings, UNREAD):
            ids = [t.decode() for t in await read(
                lambda: self.redis.lrange(self.keys.session_tasks(key), 0, -1))]
            rows = await read_all(self.redis, fill) if ids else []
        return [SessionTask(task_id=task_id, status=status.decode() if status else None,
                            created=float(created) if created else None)
                for task_id, (status, created) in zip(ids, rows, strict=True)]

    async def end_session(self, key: SessionKey, read: SessionTurns) -> bool:
        """END deletes its keys only while its current turn and its line are as read."""
        with said(self.settings, "the session was not ended"):
            got: int = await self.end_script(
                keys=[self.keys.session(key), self.keys.session_line(key),
                      self.keys.session_tasks(key), self.keys.sessions(key.tenant, key.agent),
                      self.keys.session_bytes(key.tenant, key.agent)],
                args=[key.name, self.keys.task(""), read.current, read.view.waiting])
        return got == 1

    async def why_waiting(self, task_id: str, rec: dict[bytes, bytes]) -> str | None:
        """Why a queued task waits in its session's line, in a node's words."""
        name, tenant = rec.get(b"session"), rec.get(b"stenant")
        if name is None or tenant is None:
            return None
        key = SessionKey(tenant.decode(), rec[b"agent"].decode(), name.decode())
        _, _, status, (cur,) = await session_read(self.scripts, self.keys, key, ("cur",))
        place = await read(lambda: self.redis.lpos(self.keys.session_line(key), task_id))
        if not cur or place is None:
            return None
        return turn_waits(key.name, cur.decode(), status in ON_WORKER, place)

    # -- removal ------------------------------------------------------------------------------
    async def end_agent(self, agent: str, tenant: str) -> None:
        """This node's agent `agent` of `tenant` was removed: the cluster's sessions of it
        end, unless another live node still runs it (the sessions are its too)."""
        try:
            nodes = await self.membership.nodes()
        except (RedisError, OSError) as exc:
            self._not_ended(agent, tenant, exc)
            return
        if not any(n.node != self.membership.node and n.runs(tenant, agent) for n in nodes):
            await self.end_cluster_agents({agent: tenant})

    async def owners(self, names: list[str]) -> dict[str, str]:
        """The tenant of the cluster's agent of each name (`default` when none)."""
        tables = await self.redis.hmget(self.keys.cluster_agents, names)
        tenants = [msgspec.json.decode(t).get("tenant") if t else None for t in tables]
        return {n: t if isinstance(t, str) else DEFAULT_TENANT
                for n, t in zip(names, tenants, strict=True)}

    async def end_cluster_agents(self, owners: dict[str, str]) -> None:
        """Redis away, they are left to expire (session_ttl): no other tenant's agent can
        address them."""
        for agent, tenant in owners.items():
            live = self.keys.sessions(tenant, agent)
            try:
                names = [n.decode() for n in await self.redis.zrange(live, 0, -1)]
                pipe = self.redis.pipeline(transaction=True)
                for name in names:
                    key = SessionKey(tenant, agent, name)
                    record = session_record(*key)  # (its labels go with it, as END's do)
                    pipe.delete(self.keys.session(key), self.keys.session_line(key),
                                self.keys.session_tasks(key), self.keys.labels(record),
                                self.keys.labels(started_record(record)))
                pipe.delete(live, self.keys.session_bytes(tenant, agent))
                await pipe.execute()
            except (RedisError, OSError) as exc:
                self._not_ended(agent, tenant, exc)

    def _not_ended(self, agent: str, tenant: str, exc: Exception) -> None:
        self.report(f"cluster: agent {agent} of tenant {tenant} was removed, but its "
                    f"sessions in Redis could not be ended ({exc}): they expire after "
                    "their session_ttl")


async def session_read(scripts: Scripts, keys: Keys, key: SessionKey,
                       fields: tuple[str, ...] = _FIELDS) -> tuple[int, bool, bytes, list[Any]]:
    """The session's line's length, whether its current turn is marked ended, that turn's
    status (b'': none, or its record gone), and the hash's `fields` (SESSION_READ)."""
    call, keys_of, args = read_call(scripts, keys, key, fields)
    waiting, marked, status, *got = await read(lambda: call(keys=keys_of, args=args))
    return waiting, marked == 1, status, got


def read_call(scripts: Scripts, keys: Keys, key: SessionKey,
              fields: tuple[str, ...] = _FIELDS) -> Call:
    """SESSION_READ of the session (`session_read` decodes its answer)."""
    return (scripts.session_read, [keys.session(key), keys.session_line(key),
                                   keys.turns_ended], [keys.task(""), *fields])


async def turn_args(scripts: Scripts, keys: Keys, key: SessionKey) -> list[Any]:
    """A turn's move as the rule decides it (turns.py), and the session's turns it was
    decided on (its current turn, '-' when no session, and its line's length), which
    SUBMIT keeps only while they are so."""
    # ('cur' alone: a submit does not fetch the state, which a view sizes)
    waiting, marked, status, (cur,) = await session_read(scripts, keys, key, ("cur",))
    # (a current turn that ended holds the place no more, its move yet to be made: the
    # turn starts, and that move finds nothing to do; one of a line waits behind it. Its
    # record says it ended: a mark no end wrote, a Redis writer's, starts no turn beside
    # a running one)
    held = bool(cur) and (not marked or waiting > 0 or status not in TERMINAL)
    move = decide(state(held, waiting), TurnEvent.SUBMIT)
    assert move is not None
    return [move.value, "-" if cur is None else cur, waiting]


def _view(key: SessionKey, fields: list[bytes | None], waiting: int, marked: bool
          ) -> SessionView | None:
    """None: no such hash, or expired. A current turn that ended (`marked`: its
    session's move yet to be made) runs no more, and its session idles only once moved
    (MOVE's rest empties `cur`, as it starts the ttl the view's expiry reads)."""
    cur, last, created, tasks, state, node, ttl = fields
    if created is None:
        return None
    last_used = float(last or created)
    return SessionView(
        agent=key.agent, session=key.name, tasks=int(tasks or 0), created=float(created),
        last_used=last_used, holder=node.decode() if node else None,
        state_bytes=len(state.partition(b" ")[2]) if state else 0,
        running=cur.decode() if cur and not marked else None, waiting=int(waiting),
        expires=expires(last_used, float(ttl or 0), not cur and not waiting),
        tenant=key.tenant)

