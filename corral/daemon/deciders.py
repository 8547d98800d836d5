"""The approval link of a decision (DESIGN 28): where an ask is read and ended (AskBook),
and who may end it. A question is answered by any caller that sees its task (the A2A
caller's next message, a token's holder, a person at `corral approvals`); an approval is
a person's, and an anonymous caller is no one: asked nothing, it decides nothing (issue
88: it paid what an operator's task held for a person)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

from .. import jsonrpc
from ..askviews import Ask, AskEnd, AskKind
from ..jsonrpc import RpcError
from ..supervisor.tasks.inbox import AskRecords, Inbox
from .caller import Caller

if TYPE_CHECKING:
    from ..cluster.clusterasks import ClusterAsks


class AskBook(NamedTuple):
    """The asks a person is shown and decides, one source over both homes: this
    engine's inbox (its own tasks'), then its cluster's, if it is a node (`ClusterPeer`'s
    `ask_shelves`). An ask is read, and ended, where it is kept (an AskRecords, for
    `decide`)."""

    here: Inbox
    cluster: tuple[ClusterAsks, ...]

    async def pending(self, tenant: str | None) -> list[Ask]:
        """Every pending ask (a cluster's of `tenant`), oldest first."""
        asks = self.here.pending()
        for shelf in self.cluster:
            asks += await shelf.pending(tenant)
        return sorted(asks, key=lambda a: (a.created, a.id))

    async def read(self, ask_id: str) -> Ask | None:
        ask = self.here.get(ask_id)
        for shelf in self.cluster:
            ask = ask or await shelf.read(ask_id)
        return ask

    async def end(self, ask: Ask, end: AskEnd, by: str, data: Any = None) -> Ask:
        kept: AskRecords | None = self.here if self.here.get(ask.id) is not None else \
            next(iter(self.cluster), None)
        if kept is None:
            raise jsonrpc.not_found("ask", ask.id)
        return await kept.end(ask, end, by, data)


def may_decide(caller: Caller, ask: Ask) -> None:
    """Raises FORBIDDEN when the caller may not end the ask."""
    if ask.kind is AskKind.APPROVAL and caller.anonymous:
        raise RpcError(jsonrpc.FORBIDDEN, f"task {ask.task_id} waits for a person's "
                       "approval, which an anonymous caller does not give: a token's "
                       "holder or `corral approvals` gives it")
