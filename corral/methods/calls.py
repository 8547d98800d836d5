# ruff: noqa: F405 - the results are corral.results', named by the methods
"""A team's calls, a namespace of their own (`teams.call`, `calls.*`): a call of a team is
a durable call of the engine (supervisor/durable/), shown as a task of the team. The
task methods naming a team (`tasks.submit`/`run`/`get`/`list`/`cancel` with the team as
the agent) stay its aliases, for the scripts written against them."""

from __future__ import annotations

from typing import Annotated

import msgspec

from ..results import *  # noqa: F403
from .declaration import Params, method, rest
from .tasks import MAX_WAIT


@method("calls.get", result=TaskInfo, scope="tasks:read", seen="call", routes=(
    rest("GET", "/calls/{call_id}", "One call of a team: its status, steps, output",
         query=("wait",)),
))
class CallsGet(Params):
    """One call of a team, as a task of the team: its status, its steps (each naming its
    task), output or error; with wait, held until it ends."""

    call_id: str
    wait: bool = False


@method("teams.call", result=TaskAccepted, scope="tasks:run", needs={"wait": CallsGet},
        seen="team", cli="teams call", routes=(
    rest("POST", "/teams/{name}/calls", "Call a team: 202 and the call's Location at "
         "once; with `wait`, its outcome if it ends within that many seconds, else 202",
         query=("wait",), body=("input",), idempotent=True,
         location="/calls/{task_id}", done_when="attempts"),
))
class TeamsCall(Params):
    """Call a team with this input: the call's id at once (a task id: the call is shown
    as a task of the team), while it runs on; with wait, hold the answer up to that many
    seconds for its outcome (the tasks:read scope too)."""

    name: str
    input: msgspec.Raw = msgspec.field(default_factory=lambda: msgspec.Raw(b"null"))
    wait: Annotated[float, msgspec.Meta(ge=0, le=MAX_WAIT)] | None = None
    # W3C trace context of the caller: the call's steps' tasks are children of it (with
    # [tracing]; docs/tracing.md)
    traceparent: str | None = None
    tracestate: str | None = None


@method("calls.list", result=TaskList, scope="tasks:read", seen="team",
        cli="teams calls", routes=(
    rest("GET", "/teams/{name}/calls", "A team's calls, newest last, a page at a time",
         query=("status", "since", "limit", "before"), cursor="before"),
))
class CallsList(Params):
    """A team's calls as tasks of the team, newest last, a page of `limit` at a time:
    `next`, when there are older calls, is the `before` that lists them."""

    name: str
    limit: int = 100
    status: str | None = None
    since: float | None = None  # seconds ago
    before: str | None = None  # a call id: only the calls made before it


@method("calls.cancel", result=TaskInfo, scope="tasks:run", mutating=True, seen="call", routes=(
    rest("POST", "/calls/{call_id}/cancel", "Cancel a team's call and its running "
         "steps' tasks"),
))
class CallsCancel(Params):
    """Cancel a call of a team: its steps' queued and running tasks are cancelled."""

    call_id: str
