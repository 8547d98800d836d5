"""A corral task as an A2A Task (spec 4.1): its state, its output as artifacts, its
input and answers as history, a chunk of its live output as a stream's event."""

from __future__ import annotations

from typing import Any

import msgspec
from msgspec import UNSET

from ...askviews import Ask, AskKind
from ...taskviews import TaskInfo
from ...text import iso_time
from . import wire as w

SUBMITTED, WORKING = "TASK_STATE_SUBMITTED", "TASK_STATE_WORKING"
COMPLETED, FAILED = "TASK_STATE_COMPLETED", "TASK_STATE_FAILED"
CANCELED, INPUT_REQUIRED = "TASK_STATE_CANCELED", "TASK_STATE_INPUT_REQUIRED"
REJECTED = "TASK_STATE_REJECTED"
TERMINAL = frozenset({COMPLETED, FAILED, CANCELED, REJECTED})
# a corral task's status as an A2A state: waiting (or suspended) is held for a person, an
# answer to its question or a decision on its approval
STATES = {"queued": SUBMITTED, "running": WORKING, "waiting": INPUT_REQUIRED,
          "suspended": INPUT_REQUIRED, "succeeded": COMPLETED, "failed": FAILED,
          "timed_out": FAILED, "cancelled": CANCELED, "lost": FAILED}
STATUSES = {v: k for k, v in STATES.items() if k not in ("suspended", "timed_out", "lost")}
# an agent's output that speaks A2A itself: {"a2a": {"artifacts": [...], "message": {...}}}
# (its status message), or {"a2a": {"reply": {...}}}: a Message in answer, not the Task
A2A_OUTPUT = "a2a"
OUTPUT_ARTIFACT = "output"  # the artifact a plain agent's output is
STREAM_ARTIFACT = "stream"  # the artifact a plain agent's live output is
# a chunk of live output that is one A2A event: the agent's own status or artifact update
EVENT_KEYS = ("statusUpdate", "artifactUpdate")


def plain(value: Any) -> Any:
    """A value of a task as JSON (its output and input may be kept as their bytes): the
    door's TaskInfos' output is read so once, as each is given to it, for the maps below."""
    return msgspec.json.decode(value) if isinstance(value, msgspec.Raw) else value


def state_of(info: TaskInfo) -> str:
    state = STATES.get(info.status, WORKING)
    if state == INPUT_REQUIRED and not info.asks:
        return WORKING  # its answer given, not yet taken up
    if state == FAILED and info.error is not None and isinstance(info.error.data, dict) \
            and info.error.data.get("state") == REJECTED:
        return REJECTED  # the agent refused it: TaskError(..., data={"state": REJECTED})
    return state


def agent_message(info: TaskInfo, text: str, message_id: str) -> dict[str, Any]:
    return {"messageId": message_id, "role": "ROLE_AGENT", "parts": [{"text": text}],
            "taskId": info.task_id, "contextId": context_of(info)}


def context_of(info: TaskInfo) -> str:
    return info.options.session or info.task_id


def asked(info: TaskInfo, ask: Ask) -> dict[str, Any]:
    """What the agent asks, as its message of an input-required status."""
    s = ask.subject
    if ask.kind is AskKind.QUESTION:
        text = str(s.get("prompt", ""))
    else:
        args = msgspec.json.encode(s.get("arguments", {})).decode()
        text = f"approve {s.get('tool') or s.get('model')} {args}? (answer yes or no)"
    return agent_message(info, text, ask.id)


def own(info: TaskInfo) -> dict[str, Any]:
    """The `a2a` member of the task's output ({} when it has none)."""
    if STATES.get(info.status) != COMPLETED:
        return {}
    output = info.output
    out = output.get(A2A_OUTPUT) if isinstance(output, dict) else None
    return out if isinstance(out, dict) else {}


def answer_of(info: TaskInfo, history: int | None) -> dict[str, Any]:
    """A message's answer: the Message the agent answered in place of its task, if it
    did, else the task."""
    mine = own(info)
    reply = mine.get("reply")
    if isinstance(reply, dict):
        return {"message": {**reply, "contextId": context_of(info)}}
    return {"task": task_of(info, history, mine=mine)}


def status_of(info: TaskInfo, state: str, context: str, mine: dict[str, Any] | None = None
              ) -> dict[str, Any]:
    """The task's status, of its state and context as its caller read them (`mine`: its
    `own`, when read already)."""
    status: dict[str, Any] = {"state": state}
    if state == COMPLETED:
        if mine is None:
            mine = own(info)
        said = mine.get("message", mine.get("reply")) if mine else None
        if isinstance(said, dict):
            status["message"] = {**said, "taskId": info.task_id, "contextId": context}
    elif state == INPUT_REQUIRED and info.asks:
        status["message"] = asked(info, info.asks[0])
    elif state in (FAILED, REJECTED) and info.error is not None:
        status["message"] = agent_message(info, info.error.message, f"error-{info.task_id}")
    when = info.finished or info.started or info.created
    status["timestamp"] = None if when is None else iso_time(when, ms=True)
    return status


def artifacts_of(info: TaskInfo, mine: dict[str, Any] | None = None
                 ) -> list[dict[str, Any]]:
    """The task's output as artifacts: an A2A agent's own, else one artifact holding the
    output (text as a text part, any other JSON a data part). `mine`: its `own`, when
    read already."""
    output = info.output
    if output is None or STATES.get(info.status) != COMPLETED:
        return []
    if mine is None:
        mine = own(info)
    if mine:
        given = mine.get("artifacts")
        return [a for a in given if isinstance(a, dict)] if isinstance(given, list) else []
    part = {"text": output} if isinstance(output, str) else {"data": output}
    return [{"artifactId": OUTPUT_ARTIFACT, "name": "output", "parts": [part]}]


def history_of(info: TaskInfo, limit: int | None, state: str, context: str) -> list[Any]:
    """The message that began the task (its input, when kept) and, while it waits, the
    agent's question; the newest `limit` of them (`state`, `context`: as `status_of`)."""
    messages: list[Any] = []
    kept: Any = info.input
    if isinstance(kept, w.Message):  # (the door's, as it read it: not encoded, read back)
        messages.append(msgspec.structs.replace(kept, task_id=info.task_id,
                                                context_id=context))
    else:
        given = msgspec.json.decode(kept) if isinstance(kept, msgspec.Raw) else kept
        if isinstance(given, dict) and "messageId" in given:
            if given is kept:  # (the task's own: not changed)
                given = dict(given)
            given["taskId"], given["contextId"] = info.task_id, context
            messages.append(given)
    if state == INPUT_REQUIRED and info.asks:
        messages.append(asked(info, info.asks[0]))
    if limit is not None:
        messages = messages[len(messages) - limit:] if limit > 0 else []
    return messages


def task_of(info: TaskInfo, history: int | None = None, artifacts: bool = True, *,
            mine: dict[str, Any] | None = None) -> dict[str, Any]:
    """The task as A2A's Task (`mine`: its `own`, when read already)."""
    if mine is None:
        mine = own(info)
    # (its state and context read once: each of its parts reads them)
    state, context = state_of(info), info.options.session or info.task_id
    task: dict[str, Any] = {"id": info.task_id, "contextId": context,
                            "status": status_of(info, state, context, mine)}
    if artifacts and state == COMPLETED:
        made = artifacts_of(info, mine)
        if made:
            task["artifacts"] = made
    told = history_of(info, history, state, context)
    if told:
        task["history"] = told
    task["metadata"] = {"agent": info.agent, "corralStatus": info.status}
    return task


def submitted(info: TaskInfo, history: int | None) -> dict[str, Any]:
    """The task as it was accepted, whatever it has done since (a fast one has ended): a
    stream's first event, before the events of what it did (spec 3.1.2), its state and
    its metadata alike."""
    return task_of(msgspec.structs.replace(info, status="queued", started=None,
                                           finished=None, asks=UNSET), history)


def status_event(info: TaskInfo) -> dict[str, Any]:
    context = context_of(info)
    return {"statusUpdate": {"taskId": info.task_id, "contextId": context,
                             "status": status_of(info, state_of(info), context)}}


def chunk_event(ids: dict[str, str], data: str, first: bool) -> dict[str, Any]:
    """A chunk of live output as an event: one the agent wrote as an A2A event (a JSON
    object of one of EVENT_KEYS) as it is, with the task's ids (its `taskId` and
    `contextId`, made once a stream); any other text, a piece of the `stream` artifact."""
    if data.startswith("{"):
        try:
            given = msgspec.json.decode(data)
        except msgspec.DecodeError:
            given = None
        if isinstance(given, dict) and len(given) == 1:
            key = next(iter(given))
            body = given[key]
            if key in EVENT_KEYS and isinstance(body, dict):
                return {key: {**body, **ids}}
    return {"artifactUpdate": {**ids, "artifact": {"artifactId": STREAM_ARTIFACT,
                                                   "parts": [{"text": data}]},
                               "append": not first}}
