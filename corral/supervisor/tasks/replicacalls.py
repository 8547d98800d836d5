"""A replica's calls of no task (docs/security.md#calls-of-no-task): under its agent's and
tenant's policy in full, the replica's current incarnation standing in for a task (its
budget window; its asks, owned by `replica:LABEL:NONCE`, so a later incarnation never
finds an earlier one's decision by its key). Its asks are kept where every entry a
person decides at lists them: the engine's inbox, or a cluster node's Redis
(cluster/notaskasks.py, docs/approvals.md#on-a-cluster).
"""

from __future__ import annotations

import asyncio
import secrets
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from ... import jsonrpc
from ...askviews import Ask, AskKind, AskRequest
from ...jsonrpc import RpcError
from ...text import plural
from ...timeouts import kept
from .inbox import Inbox, check_subject, too_many_asks

if TYPE_CHECKING:
    from ..process_replica import ReplicaExit
    from ..replica import Replica
    from ..stream import Stream
    from .call import Call

OWNER_PREFIX = "replica:"
# a withdrawn ask's reason when the call it held ended first
CALLER_GONE = "its caller went away before a decision: the call is not made"


def is_replica_owner(task_id: str) -> bool:
    """Whether an ask's `task_id` names a replica's incarnation, not a task."""
    return task_id.startswith(OWNER_PREFIX)


class _Window:
    """One incarnation's calls of no task: its ask owner id and what it has used."""

    __slots__ = ("asks", "owner", "spawned_at", "tool_calls")

    def __init__(self, label: str, spawned_at: float | None) -> None:
        self.spawned_at = spawned_at
        self.owner = f"{OWNER_PREFIX}{label}:{secrets.token_hex(4)}"
        self.tool_calls = 0
        self.asks = 0


class ReplicaAsk(NamedTuple):
    """What a held call of no task asks (`subject`: as a task's ask of the same call)."""

    kind: AskKind
    what: str  # "tool" or "model": its key's prefix
    subject: dict[str, Any]
    timeout: float | None


class NoTaskAsks(Protocol):
    """Where the asks of calls of no task are kept and waited on, by their owner: the
    engine's inbox (inbox.Inbox), or a cluster node's Redis (cluster/notaskasks.py)."""

    @property
    def max_asks_per_task(self) -> int:
        """The asks one owner (an incarnation) makes over its life."""

    async def ask(self, req: AskRequest) -> Ask:
        """A new ask, kept before this returns (RpcError: not kept, past a bound)."""

    async def wait(self, ask: Ask) -> Ask:
        """The ask as it ended, wherever it was decided."""

    def asking(self, owner: str) -> bool:
        """Whether an ask of `owner` made here may be pending."""

    def withdraw(self, task_id: str, ask_id: str | None = None, why: str | None = None
                 ) -> asyncio.Future[list[Ask]]:
        """The pending asks of the owner `task_id` (`ask_id`: that one alone) withdrawn,
        `why` their data's reason, told once awaited."""


class ReplicaCalls:
    """The engine's windows of replicas' calls of no task, and their asks (`asks`: the
    inbox's, a cluster node's once it joins, `asked_in`)."""

    def __init__(self, inbox: Inbox, stream: Stream) -> None:
        from ..process_replica import ReplicaExit

        self.asks: NoTaskAsks = inbox
        self.windows: dict[str, _Window] = {}  # replica label -> its incarnation's
        stream.subscribe(self._exited, ReplicaExit)
        self._withdrawing: set[asyncio.Future[Any]] = set()

    def asked_in(self, asks: NoTaskAsks) -> None:
        """A cluster node's asks of no task, from its joining on: every node's to list
        and decide (docs/approvals.md#on-a-cluster)."""
        self.asks = asks

    def window(self, r: Replica) -> _Window:
        spawned = getattr(r, "spawned_at", None)
        w = self.windows.get(r.label)
        if w is None or w.spawned_at != spawned:
            w = self.windows[r.label] = _Window(r.label, spawned)
        return w

    def owner_of(self, r: Replica) -> str:
        return self.window(r).owner

    def take_tool_call(self, r: Replica) -> None:
        """A call of no task made now counts against the incarnation's budget."""
        w = self.window(r)
        budget = getattr(r.spec, "max_tool_calls_per_task", 0)
        if w.tool_calls >= budget:
            raise RpcError(jsonrpc.TOOL_BUDGET_EXCEEDED,
                           f"tool budget exceeded: replica {r.label} has made "
                           f"{plural(w.tool_calls, 'tool call')} of no task "
                           f"(max_tool_calls_per_task {budget}, counted per incarnation "
                           f"for calls that name no task)")
        w.tool_calls += 1

    def give_back_tool_call(self, r: Replica) -> None:
        """A call counted that is not made now (held for a person)."""
        w = self.window(r)
        w.tool_calls = max(0, w.tool_calls - 1)

    async def ask(self, r: Replica, asked: ReplicaAsk) -> Ask:
        """A person is asked about the replica's call, which waits until the ask ends;
        refused past the inbox's bounds, and past max_asks_per_task of the incarnation."""
        w = self.window(r)
        bound = self.asks.max_asks_per_task
        if w.asks >= bound:
            raise RpcError(jsonrpc.QUOTA_EXCEEDED, too_many_asks(w.owner, w.asks, bound))
        req = AskRequest(asked.kind, getattr(r.spec, "tenant", None), w.owner, 0, r.name,
                         f"{asked.what}:{w.asks + 1}", asked.subject, asked.timeout)
        check_subject(req)
        w.asks += 1
        ask = await self.asks.ask(req)
        if not ask.pending:
            return ask
        if self.windows.get(r.label) is not w:  # exited while its ask was stored
            await self.asks.withdraw(w.owner)
        # parked: not one of its worker's requests in flight, whose line is read on
        peer = getattr(r, "peer", None)
        parked = peer.park(asyncio.current_task()) if peer is not None else None
        r.waiting_for_person += 1
        try:
            return await self._waited(w.owner, ask)
        finally:
            r.waiting_for_person -= 1
            if parked is not None and peer is not None:
                peer.unpark(parked)

    async def client_ask(self, call: Call, asked: ReplicaAsk) -> Ask:
        """A gateway client's call (no agent's) held for a person, asked as a replica's
        call of no task is: its owner the call's own (`replica:gateway:NAME:NONCE`, the
        prefix every owner of no task has: pruned and withdrawn at a start as theirs), there
        being no incarnation to share; the ask withdrawn if the call ends first (its client
        gone), and told its door's client as progress. The inbox's bounds hold (its
        tenant's pending asks)."""
        client = call.client
        assert client is not None  # (a client's call, no replica's)
        owner = f"{OWNER_PREFIX}gateway:{client.name}:{secrets.token_hex(4)}"
        req = AskRequest(asked.kind, client.tenant, owner, 0, client.name,
                         f"{asked.what}:1", asked.subject, asked.timeout)
        check_subject(req)
        ask = await self.asks.ask(req)
        if not ask.pending:
            return ask
        if call.wire is not None and call.wire.on_progress is not None:
            call.wire.on_progress({"progress": 0, "message": (
                f"waits for a person's decision on ask {ask.id}: `corral approvals approve "
                f"{ask.id}` (or deny)")})
        return await self._waited(owner, ask)

    async def _waited(self, owner: str, ask: Ask) -> Ask:
        """The ask's end; withdrawn when its call ends first (its caller went away: a
        gateway client's connection closed, a worker's request cancelled), which no
        decision makes after."""
        try:
            return await self.asks.wait(ask)
        except BaseException:
            kept(self._withdrawing, self.asks.withdraw(owner, ask.id, CALLER_GONE))
            raise

    def _exited(self, e: ReplicaExit) -> None:
        w = self.windows.pop(e.replica.label, None)
        if w is None or not self.asks.asking(w.owner):
            return
        kept(self._withdrawing, self.asks.withdraw(w.owner))
