"""The inbox's methods' handlers (corral.methods.approvals): the pending asks listed, one
read, one decided, from one source over this daemon's inbox and the cluster's (AskBook).
Who sees and decides an ask is the visibility rules', checked before a decision reaches
the inbox."""

from __future__ import annotations

from typing import Any

from .. import jsonrpc
from .. import methods as m
from ..askviews import Ask, AskEnd, AskKind
from ..jsonrpc import RpcError
from ..supervisor.followers import Follower
from ..supervisor.tasks.inbox import AskEnded, Decision, decide
from .api import Commands
from .caller import Caller, Channel
from .deciders import AskBook, may_decide
from .flowcontrol import drain
from .services import Services

WATCH_QUEUE = 1000  # asks a watcher may be behind by before it is told it missed some
WATCH_BATCH = 100  # sent in one turn of the loop


def asks_of(d: Services) -> AskBook:
    return AskBook(d.task_engine.inbox, d.cluster.ask_shelves)


COMMANDS: Commands[Services, AskBook] = Commands(asks_of)
implements = COMMANDS.implements


@implements(m.ApprovalsList)
async def approvals_list(book: AskBook, p: m.ApprovalsList, caller: Caller, c: Channel
                         ) -> m.AskList:
    return m.AskList(asks=await book.pending(caller.tenant))


@implements(m.ApprovalsWatch)
async def approvals_watch(book: AskBook, p: m.ApprovalsWatch, caller: Caller,
                          c: Channel) -> None:
    # every pending ask, then those made and ended on this node: a cluster task's ask
    # is told on the node that asked it and on the one that ended it
    inbox = book.here
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
        for ask in await book.pending(caller.tenant):
            follower.push(ask)
        await drain(c, follower, "approvals.missed", send_some)
    finally:
        inbox.stream.unsubscribe(sub)


@implements(m.ApprovalsGet)
async def approvals_get(book: AskBook, p: m.ApprovalsGet, caller: Caller, c: Channel
                        ) -> Ask:
    ask = await book.read(p.id)
    if ask is None:
        raise jsonrpc.not_found("ask", p.id)
    return ask


@implements(m.ApprovalsResolve)
async def approvals_resolve(book: AskBook, p: m.ApprovalsResolve, caller: Caller,
                            c: Channel) -> Ask:
    ask = await book.read(p.id)
    if ask is None:
        raise jsonrpc.not_found("ask", p.id)
    may_decide(caller, ask)
    return await decide(book, Decision(p.id, AskEnd(p.decision), caller.who,
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
