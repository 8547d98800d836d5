"""An MCP server's elicitation during a task's tool call, asked of a person
(docs/approvals.md, "Questions an MCP server asks").

The decision is a step of the task before the server has it, keyed by the call and by how
many elicitations of that call came before: a retried attempt asked the same is answered
from the journal or its earlier attempt's ask, and a person is never asked twice.
"""

from __future__ import annotations

import logging
import uuid
from typing import TYPE_CHECKING, Any, Protocol

from ...askviews import AskEnd, AskKind, AskRequest
from ...jsonrpc import RpcError
from ...mcp.pool import split
from ...workerproto import MAX_PROMPT_CHARS
from .inbox import ELICITED
from .personwait import PersonWait, waiting
from .questions import STEP, check_schema

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator

    from ...askviews import Ask
    from .call import Call
    from .model import Task
    from .steps import TaskSteps

log = logging.getLogger("corral.elicitations")

PREFIX = ELICITED  # an elicitation's key in the inbox (a question's is "ask:KEY")
DECLINE = {"action": "decline"}
CANCEL = {"action": "cancel"}


class ElicitingEngine(Protocol):
    """What elicitations need of the TaskManager."""

    steps: TaskSteps


class Elicitations:
    """The elicitations of the engine's tasks' tool calls, each asked of a person. A
    call's asker is `partial(ask, call, timeout, held(), itertools.count(1))`, made where
    the call is (supervisor/core.py): the call's timer (the gateway's, personwait.py) is
    its context's, and the server's elicitation is asked from its connection's reader,
    another context; nothing here runs for a call whose server never elicits."""

    def __init__(self, engine: ElicitingEngine,
                 ask_person: Callable[[AskRequest], Awaitable[Ask]]) -> None:
        self.engine = engine
        self._ask_person = ask_person
        self.asked = 0  # elicitations put to a person
        self.replayed = 0  # answered from the journal or an earlier attempt's ask

    async def ask(self, call: Call, timeout: float | None, timing: PersonWait | None,
                  asked: Iterator[int], params: dict[str, Any]) -> dict[str, Any]:
        """The answer to the `asked`-th elicitation of a task's call: keyed by the call's
        idempotency key (steps.py: its place in the attempt, a retry's same call's too),
        or, a call made once at most (no key), by none another ask shares."""
        assert call.task is not None  # (a task's call alone is given an asker)
        key = f"{call.key}:{next(asked)}" if call.key is not None else uuid.uuid4().hex
        return await self._ask(call.task, call, f"{PREFIX}{call.name}:{key}", params,
                               timeout, timing)

    async def _ask(self, task: Task, call: Call, key: str, params: dict[str, Any],
                   timeout: float | None, timing: PersonWait | None) -> dict[str, Any]:
        server = split(call.name)[0]
        refused = _unaskable(params)
        if refused is not None:
            log.warning("task %s: the elicitation of MCP server %s (tool %s) was declined "
                        "unasked: %s", task.id, server, call.name, refused)
            return DECLINE
        steps = self.engine.steps
        got = await steps.get(task, STEP + key)
        if got.get("found"):
            self.replayed += 1
            result: dict[str, Any] = got["result"]
            return result
        subject = {"prompt": params["message"], "schema": params["requestedSchema"],
                   "server": server, "tool": call.name}
        with waiting(timing):  # the person's time, not the call's (personwait.py)
            ask = await self._ask_person(AskRequest(
                AskKind.QUESTION, task.tenant, task.id, task.attempt, task.agent, key,
                subject, timeout))
        if ask.end is AskEnd.ANSWERED:
            result = {"action": "accept", "content": ask.data}
        elif ask.end is AskEnd.DENIED:
            result = DECLINE
        else:  # timed out, or withdrawn: nobody answered
            return CANCEL
        # the task's before the server has it: a retry is given it back
        if not isinstance(kept := steps.put(task, call.agent, STEP + key, result), dict):
            await kept
        self.asked += 1
        return result


def _unaskable(params: dict[str, Any]) -> str | None:
    """Why an elicitation is declined without asking anyone, else None."""
    mode = params.get("mode", "form")
    if mode != "form":
        return f"mode {mode!r}: only form elicitation is asked of a person"
    message, schema = params.get("message"), params.get("requestedSchema")
    if not isinstance(message, str) or not message:
        return "it has no message"
    if len(message) > MAX_PROMPT_CHARS:
        return (f"its message is {len(message)} characters, more than MAX_PROMPT_CHARS "
                f"({MAX_PROMPT_CHARS})")
    if not isinstance(schema, dict):
        return "it has no requestedSchema object"
    try:
        check_schema(schema)
    except RpcError as exc:
        return exc.message.removeprefix("task/ask: ")
    return None
