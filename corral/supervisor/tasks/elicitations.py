"""An MCP server's elicitation during a task's tool call, asked of a person
(docs/approvals.md, "Questions an MCP server asks").

The decision is a step of the task before the server has it, keyed by the call and by how
many elicitations of that call came before: a retried attempt asked the same is answered
from the journal or its earlier attempt's ask, and a person is never asked twice.
"""

from __future__ import annotations

import itertools
import logging
from typing import TYPE_CHECKING, Any, Protocol

from ...askviews import AskEnd, AskKind, AskRequest
from ...jsonrpc import RpcError
from ...mcp.client import Asker
from ...mcp.pool import split
from ...workerproto import MAX_PROMPT_CHARS
from .inbox import ELICITED
from .model import TaskFinished
from .personwait import PersonWait, held, waiting
from .questions import STEP, check_schema
from .steps import CallOrdinals

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from ...askviews import Ask
    from ..stream import Stream
    from .call import Call
    from .model import Task
    from .steps import TaskSteps

log = logging.getLogger("corral.elicitations")

PREFIX = ELICITED  # an elicitation's key in the inbox (a question's is "ask:KEY")
DECLINE = {"action": "decline"}
CANCEL = {"action": "cancel"}


class ElicitingEngine(Protocol):
    """What elicitations need of the TaskManager."""

    stream: Stream
    steps: TaskSteps


class Elicitations:
    """Askers for the engine's tasks' tool calls."""

    def __init__(self, engine: ElicitingEngine,
                 ask_person: Callable[[AskRequest], Awaitable[Ask]]) -> None:
        self.engine = engine
        self._ask_person = ask_person
        self.asked = 0  # elicitations put to a person
        self.replayed = 0  # answered from the journal or an earlier attempt's ask
        self._calls = CallOrdinals()
        # told of a task's end while a task's calls are counted here
        self._ends = engine.stream.subscribe(self._finished, TaskFinished, listening=False)

    def _finished(self, e: TaskFinished) -> None:
        self._calls.forget(e.task.id)
        if not self._calls:
            self.engine.stream.listen(self._ends, False)

    def asker(self, call: Call, timeout: float | None) -> Asker | None:
        """Who answers the call's elicitation: a person, when it is a task's."""
        task = call.task
        if task is None:
            return None
        base = f"{PREFIX}{self._calls.key(task, call.name, call.arguments)}"
        self.engine.stream.listen(self._ends)
        asked = itertools.count(1)
        # the call's timer (the gateway's), here where the call is made: the server's
        # elicitation is asked from its connection's reader, another context
        timing = held()

        async def ask(params: dict[str, Any]) -> dict[str, Any]:
            return await self._ask(task, call, f"{base}:{next(asked)}", params, timeout,
                                   timing)
        return ask

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
        await steps.put(task, call.replica, STEP + key, result)
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
