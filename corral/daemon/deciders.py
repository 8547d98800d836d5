"""The approval link of a decision (DESIGN 28): who may end an ask. A question is
answered by any caller that sees its task (the A2A caller's next message, a token's
holder, a person at `corral approvals`); an approval is a person's, and an anonymous
caller is no one: asked nothing, it decides nothing (issue 88: it paid what an operator's
task held for a person)."""

from __future__ import annotations

from .. import jsonrpc
from ..askviews import Ask, AskKind
from ..jsonrpc import RpcError
from .caller import Caller


def may_decide(caller: Caller, ask: Ask) -> None:
    """Raises FORBIDDEN when the caller may not end the ask."""
    if ask.kind is AskKind.APPROVAL and caller.anonymous:
        raise RpcError(jsonrpc.FORBIDDEN, f"task {ask.task_id} waits for a person's "
                       "approval, which an anonymous caller does not give: a token's "
                       "holder or `corral approvals` gives it")
