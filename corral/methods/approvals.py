# ruff: noqa: F405 - the results are corral.results', named by the methods
"""The inbox of asks: approvals and questions waiting for a person (docs/approvals.md)."""

from __future__ import annotations

from typing import Any, Literal

from ..results import *  # noqa: F403
from .declaration import Params, method, rest


@method("approvals.list", result=AskList, scope="approvals", seen="asks", cli="approvals",
        dashboard=True, routes=(
    rest("GET", "/approvals", "The pending approvals and questions the caller may decide"),
))
class ApprovalsList(Params):
    """The pending asks (approvals of tool calls, questions) of the tasks the caller
    sees, oldest first."""


# declared before approvals.get: its path is matched before /approvals/{id}
@method("approvals.watch", result=None, scope="approvals", endless=True, seen="ask_stream",
        cli="approvals watch", dashboard=True, routes=(
    rest("GET", "/approvals/stream", "The pending asks, then each ask made or ended (SSE)",
         stream="approvals.ask"),
))
class ApprovalsWatch(Params):
    """The pending asks the caller sees, then each ask made or ended as it happens, as
    `approvals.ask` notifications (an ask with no `end` is pending); `approvals.missed`
    says how many a reader too slow missed (list them again)."""


@method("approvals.get", result=Ask, scope="approvals", seen="ask", cli="approvals show",
        dashboard=True, routes=(
    rest("GET", "/approvals/{id}", "One ask, pending or ended"),
))
class ApprovalsGet(Params):
    """One ask, pending or ended (how, by whom, with what)."""

    id: str


@method("approvals.resolve", result=Ask, scope="approvals", mutating=True, seen="ask",
        dashboard=True, routes=(
    rest("POST", "/approvals/{id}/resolve", "Decide an ask: approve (with edited "
         "arguments), deny (with a reason) or answer it",
         body=("decision", "arguments", "reason", "answer")),
))
class ApprovalsResolve(Params):
    """Decide a pending ask, once: an approval `approved` (its call runs, with
    `arguments` in place of the originals when given) or `denied` (with a `reason` the
    agent is told); a question `answered` (the `answer`, valid by its schema) or
    `denied`."""

    id: str
    decision: Literal["approved", "denied", "answered"]
    arguments: dict[str, Any] | None = None
    reason: str | None = None
    answer: Any = None
