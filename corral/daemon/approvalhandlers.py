"""The inbox's methods' handlers (corral.methods.approvals, docs/approvals.md): the pending
asks listed, one read, one decided. They take the engine's inbox alone. Who sees and
decides an ask is the visibility rules' (an ask is its task's tenant's and agent's:
visibility.sees_task), checked before a decision reaches the inbox."""

from __future__ import annotations

from typing import Any

from .. import jsonrpc
from .. import methods as m
from ..askviews import Ask, AskEnd, AskKind
from ..jsonrpc import RpcError
from ..supervisor.followers import Follower
from ..supervisor.tasks.inbox import AskEnded, Decision, Inbox
from .api import Commands
from .caller import Caller, Channel
from .flowcontrol import drain
from .services import Services

WATCH_QUEUE = 1000  # asks a watcher may be behind by before it is told it missed some
WATCH_BATCH = 100  # sent in one turn of the loop


def inbox_of(d: Services) -> Inbox:
    return d.task_engine.inbox


COMMANDS: Commands[Services, Inbox] = Commands(inbox_of)
implements = COMMANDS.implements


@implements(m.ApprovalsList)
async def approvals_list(inbox: Inbox, p: m.ApprovalsList, caller: Caller, c: Channel
                         ) -> m.AskList:
    return m.AskList(asks=inbox.pending())


@implements(m.ApprovalsWatch)
async def approvals_watch(inbox: Inbox, p: m.ApprovalsWatch, caller: Caller, c: Channel
                          ) -> None:
    # bounded: a reader that does not read is told what it missed, never grows the daemon
    follower: Follower[Ask] = Follower(WATCH_QUEUE)

    def told(e: AskEnded) -> None:
        follower.push(e.ask)

    sub = inbox.stream.subscribe(told, AskEnded)
    for ask in inbox.pending():
        follower.push(ask)

    def send_some() -> None:
        for _ in range(min(WATCH_BATCH, len(follower.queue))):
            c.notify("approvals.ask", follower.pop())

    try:
        await drain(c, follower, "approvals.missed", send_some)
    finally:
        inbox.stream.unsubscribe(sub)


@implements(m.ApprovalsGet)
async def approvals_get(inbox: Inbox, p: m.ApprovalsGet, caller: Caller, c: Channel
                        ) -> Ask:
    ask = inbox.get(p.id)
    if ask is None:
        raise jsonrpc.not_found("ask", p.id)
    return ask


@implements(m.ApprovalsResolve)
async def approvals_resolve(inbox: Inbox, p: m.ApprovalsResolve, caller: Caller,
                            c: Channel) -> Ask:
    ask = inbox.get(p.id)
    if ask is None:
        raise jsonrpc.not_found("ask", p.id)
    return await inbox.decide(Decision(p.id, AskEnd(p.decision), caller.who,
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
