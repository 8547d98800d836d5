"""A task's questions for a person (`task/ask`; docs/protocol.md#questions): each an ask
of the inbox the task waits on, its answer a step of the task (`corral/ask:KEY`), so a
retried or resumed attempt asking under the same key is answered from the journal."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, Protocol

import msgspec

from ... import jsonrpc
from ...askviews import Ask, AskEnd, AskKind, AskRequest
from ...jsonrpc import RpcError
from ...workerproto import MAX_PROMPT_CHARS, MAX_SCHEMA_BYTES, TaskAskParams
from ..workercalls import on_request
from .model import Task
from .steps import RESERVED, TaskSteps
from .worker import WorkerMethods

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from ..replica import Replica
    from .host import TaskHost

PREFIX = "ask:"  # a question's key in the inbox
STEP = "corral/"  # before that key, the named step of its answer (a worker writes none)
assert STEP.startswith(RESERVED)


class AskingEngine(Protocol):
    """What questions need of the TaskManager."""

    sup: TaskHost
    steps: TaskSteps
    worker: WorkerMethods


def check_schema(schema: dict[str, Any]) -> None:
    """A JSON Schema an answer can be checked against, else RpcError saying why not."""
    size = len(msgspec.json.encode(schema))
    if size > MAX_SCHEMA_BYTES:
        raise RpcError(jsonrpc.INVALID_PARAMS, f"task/ask: the schema is {size} bytes of "
                                               f"JSON, more than MAX_SCHEMA_BYTES "
                                               f"({MAX_SCHEMA_BYTES})")
    import jsonschema  # only when a question has a schema

    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise RpcError(jsonrpc.INVALID_PARAMS, f"task/ask: the schema is not a JSON "
                                               f"Schema: {exc.message}") from None


class Questions:
    """The handler of `task/ask` over the engine's tasks and their homes' asks."""

    def __init__(self, engine: AskingEngine,
                 ask_person: Callable[[AskRequest], Awaitable[Ask]]) -> None:
        self.engine = engine
        self._ask_person = ask_person
        self.asked = 0  # questions put to a person
        self.replayed = 0  # answered from the journal or an earlier attempt's ask
        on_request(engine.sup.worker_methods, TaskAskParams, self.on_ask)

    def on_ask(self, r: Replica, p: TaskAskParams) -> Any:
        task = self.engine.worker.running_on(r, "task/ask", p.task_id)
        if len(p.prompt) > MAX_PROMPT_CHARS:
            raise RpcError(jsonrpc.INVALID_PARAMS, f"task/ask: the prompt is "
                                                   f"{len(p.prompt)} characters, more than "
                                                   f"MAX_PROMPT_CHARS ({MAX_PROMPT_CHARS})")
        if p.schema is not None:
            check_schema(p.schema)
        return self._ask(task, r, p)

    async def _ask(self, task: Task, r: Replica, p: TaskAskParams) -> dict[str, Any]:
        steps = self.engine.steps
        name = PREFIX + p.key
        got = await steps.get(task, STEP + name)
        if got.get("found"):
            self.replayed += 1
            return {"answer": got["result"], "replayed": True}
        subject: dict[str, Any] = {"prompt": p.prompt}
        if p.schema is not None:
            subject["schema"] = p.schema
        # asked before (an earlier attempt's question, answered since): not asked again
        earlier = None
        with contextlib.suppress(RpcError):  # (not read: asking says why, or asks)
            earlier = await task.home.asks.find(task, name)
        replayed = earlier is not None and not earlier.pending
        # the task is `waiting` until the answer (or suspended past suspend_after)
        ended = await self._ask_person(AskRequest(
            AskKind.QUESTION, task.tenant, task.id, task.attempt, task.agent, name, subject,
            p.timeout))
        if ended.end is not AskEnd.ANSWERED:
            raise _unanswered(ended)
        # the answer is the task's before the worker has it: a retry is given it back
        if not isinstance(kept := steps.put(task, r, STEP + name, ended.data), dict):
            await kept
        if replayed:
            self.replayed += 1
        else:
            self.asked += 1
        return {"answer": ended.data, "replayed": replayed, "ask": ended.id}


def _unanswered(ask: Ask) -> RpcError:
    if ask.end is AskEnd.DENIED:
        reason = ask.data.get("reason") if isinstance(ask.data, dict) else None
        return RpcError(jsonrpc.REFUSED, f"task/ask: question {ask.id} was declined by "
                                         f"{ask.by}" + (f": {reason}" if reason else ""))
    if ask.end is AskEnd.TIMED_OUT:
        waited = (ask.deadline or ask.created) - ask.created
        return RpcError(jsonrpc.REQUEST_TIMEOUT, f"task/ask: question {ask.id} had no "
                                                 f"answer within {waited:g}s")
    return RpcError(jsonrpc.REQUEST_CANCELLED, f"task/ask: question {ask.id} ended "
                                               f"{ask.end}")
