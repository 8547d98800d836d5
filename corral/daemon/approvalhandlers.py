"""The inbox's methods' handlers (corral.methods.approvals): the pending asks listed, one
read, one decided, in this daemon's inbox or the cluster's. Who sees and decides an ask is
the visibility rules', checked before a decision reaches the inbox."""

from __future__ import annotations

from typing import Any, NamedTuple

from .. import jsonrpc
from .. import methods as m
from ..askviews import Ask, AskEnd, AskKind
from ..jsonrpc import RpcError
from ..supervisor.followers import Follower
from ..supervisor.tasks.inbox import AskEnded, AskRecords, Decision, Inbox, decide
from .api import Commands
from .caller import Caller, Channel
from .clusterpeer import ClusterInbox
from .deciders import may_decide
from .flowcontrol import drain
from .services import Services

WATCH_QUEUE = 1000  # asks a watcher may be behind by before it is told it missed some
WATCH_BATCH = 100  # sent in one turn of the loop


class Inboxes(NamedTuple):
    """Where asks are: this daemon's inbox (its own tasks'), and its cluster's."""

    local: Inbox
    cluster: ClusterInbox


def inboxes_of(d: Services) -> Inboxes:
    return Inboxes(d.task_engine.inbox, d.cluster.asks)


COMMANDS: Commands[Services, Inboxes] = Commands(inboxes_of)
implements = COMMANDS.implements


@implements(m.ApprovalsList)
async def approvals_list(inboxes: Inboxes, p: m.ApprovalsList, caller: Caller, c: Channel
                         ) -> m.AskList:
    asks = [*inboxes.local.pending(), *await inboxes.cluster.pending(caller.tenant)]
    return m.AskList(asks=sorted(asks, key=lambda a: (a.created, a.id)))


@implements(m.ApprovalsWatch)
async def approvals_watch(inboxes: Inboxes, p: m.ApprovalsWatch, caller: Caller,
                          c: Channel) -> None:
    # every pending ask, then those made and ended on this node: a cluster task's ask
    # is told on the node that asked it and on the one that ended it
    inbox = inboxes.local
    # bounded: a reader that does not read is told what it missed, never grows the daemon
    follower: Follower[Ask] = Follower(WATCH_QUEUE)

    def told(e: AskEnded) -> None:
        follower.push(e.ask)

    # told from now on, before the cluster's are read: one made meanwhile is told twice,
    # not never
    sub = inbox.stream.subscribe(told, AskEnded)

    def send_some() -> None:
        for _ in range(min(WATCH_BATCH, len(follower.queue))):
            c.notify("approvals.ask", follower.pop())

    try:
        theirs = await inboxes.cluster.pending(caller.tenant)
        for ask in sorted([*inbox.pending(), *theirs], key=lambda a: (a.created, a.id)):
            follower.push(ask)
        await drain(c, follower, "approvals.missed", send_some)
    finally:
        inbox.stream.unsubscribe(sub)


@implements(m.ApprovalsGet)
async def approvals_get(inboxes: Inboxes, p: m.ApprovalsGet, caller: Caller, c: Channel
                        ) -> Ask:
    ask = inboxes.local.get(p.id) or await inboxes.cluster.read(p.id)
    if ask is None:
        raise jsonrpc.not_found("ask", p.id)
    return ask


@implements(m.ApprovalsResolve)
async def approvals_resolve(inboxes: Inboxes, p: m.ApprovalsResolve, caller: Caller,
                            c: Channel) -> Ask:
    # one decision for the asks of either home, where the ask is kept
    shelf: AskRecords = inboxes.local if inboxes.local.get(p.id) is not None else \
        inboxes.cluster
    ask = await shelf.read(p.id)
    if ask is None:
        raise jsonrpc.not_found("ask", p.id)
    may_decide(caller, ask)
    return await decide(shelf, Decision(p.id, AskEnd(p.decision), caller.who,
                                        decision_data(ask, p)))


def decision_data(ask: Ask, p: m.ApprovalsResolve) -> Any:
    """What the decision carries (Ask.data), its parts checked against the ask's kind."""
    end = AskEnd(p.decision)
    if p.arguments is not None and (ask.kind is not AskKind.APPROVAL
                                    or end is not AskEnd.APPROVED):
        raise RpcError(jsonrpc.INVALID_PARAMS, "arguments are an approval's edit: give "
                                               "them with decision approved")
    if p.answer is not None and end is not AskEnd.ANSWERED:
        raise RpcError(jsonrpc.INVALID_PARAMS, "an answer is given with decision answered")
    if end is AskEnd.APPROVED:
        return None if p.arguments is None else {"arguments": p.arguments}
    if end is AskEnd.DENIED:
        return None if p.reason is None else {"reason": p.reason}
    if ask.kind is AskKind.QUESTION:
        _fits(ask, p.answer)
    return p.answer


def _fits(ask: Ask, answer: Any) -> None:
    """A question's answer is valid by its schema, else refused saying where it is not."""
    import jsonschema  # only when a question is answered

    schema = ask.subject.get("schema")
    if not isinstance(schema, dict):
        return
    cls = jsonschema.validators.validator_for(schema)
    error = jsonschema.exceptions.best_match(cls(schema).iter_errors(answer))
    if error is not None:
        where = "/".join(str(x) for x in error.absolute_path) or "the answer"
        raise RpcError(jsonrpc.INVALID_PARAMS,
                       f"the answer does not fit ask {ask.id}'s schema: {where}: "
                       f"{error.message}")
