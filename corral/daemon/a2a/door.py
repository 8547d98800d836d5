"""The A2A door (DESIGN 28, 29): each operation a call on the one Dispatcher, as the
REST API makes it, with the caller the binding authenticated; its answer in A2A's terms.
No check of its own: what the Dispatcher and the task front refuse is refused here, and
told in the protocol's errors."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import hashlib
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import msgspec
from msgspec import UNSET, UnsetType

from ... import jsonrpc
from ...askviews import AskKind
from ...jsonrpc import RpcError
from ...methods import ApprovalsResolve, TasksCancel, TasksGet, TasksList, TasksStream, TasksSubmit
from ...results import TaskAccepted
from ...supervisor.stream import Stream
from ...supervisor.tasks.askwaits import AskEnded
from ...taskoptions import NO_OPTIONS, TaskOptions
from ...taskviews import TaskInfo
from ...timeouts import cancel_all
from ..api import Dispatcher
from ..caller import Caller
from . import mapping as mp
from . import wire as w

# corral's refusals in the protocol's terms (a task not found: TaskNotFoundError)
KINDS = {
    jsonrpc.NOT_FOUND: w.TASK_NOT_FOUND, jsonrpc.INVALID_PARAMS: w.INVALID_PARAMS,
    jsonrpc.INVALID_REQUEST: w.INVALID_PARAMS, jsonrpc.UNAUTHORIZED: w.UNAUTHENTICATED,
    jsonrpc.FORBIDDEN: w.FORBIDDEN, jsonrpc.QUOTA_EXCEEDED: w.FORBIDDEN,
    jsonrpc.TOOL_NOT_ALLOWED: w.FORBIDDEN, jsonrpc.REFUSED: w.REFUSED,
    jsonrpc.CONFLICT: w.CONFLICT, jsonrpc.UNAVAILABLE: w.UNAVAILABLE,
}
# the caller's W3C trace context, its request's `traceparent` (valid) and `tracestate`
# headers, set by routes.py around the request: a task it submits is its child
SENT_CONTEXT: contextvars.ContextVar[tuple[str, str | None] | None] = contextvars.ContextVar(
    "a2a_sent_context", default=None)
PAGE = 50  # ListTasks' page unless the caller asks for another size
MAX_PAGE = 100
QUEUED_EVENTS = 256  # a stream's events waiting for its client before the follow holds
RECHECK = 1.0  # seconds between two looks at a task waited for, at most
ASK_WAIT = 30.0  # seconds a message to a running task waits for it to ask
MAX_ID = 200  # characters of a messageId in a task's idempotency key (255 at most)
YES = frozenset({"yes", "y", "approve", "approved", "ok", "true"})
UNSETTLED = frozenset({"queued", "running"})  # a task accepted so: not settled (`settled`)
ASKED, DONE = "asked", "done"  # (the stream's queue: an ask made or ended, the follow's end)
# a stream's events given at once: each (the chunk's id or None, StreamResponse)
Batch = list[tuple[str | None, Any]]


def refusal(exc: RpcError) -> w.A2aError:
    return w.A2aError(KINDS.get(exc.code, w.INTERNAL), exc.message)


def _ended(accepted: TaskAccepted, agent: str, context: str | UnsetType, sent: w.Message
           ) -> TaskInfo | None:
    """The task as its submission's outcome tells it, if it ended by then (None: not, or
    with no attempt, whose end the outcome does not time): what an A2A answer reads of
    an ended task."""
    attempts = accepted.attempts
    if attempts is UNSET or not attempts or attempts[-1].finished is None:
        return None
    first, last = attempts[0], attempts[-1]
    return TaskInfo(task_id=accepted.task_id, agent=agent, status=accepted.status, priority=0,
                    created=first.started, started=first.started, finished=last.finished,
                    tool_calls=0, progress=None, output=mp.plain(accepted.output),
                    error=None if accepted.error is UNSET else accepted.error,
                    attempts=attempts, input=sent,
                    options=NO_OPTIONS if context is UNSET else TaskOptions(session=context))


class _Events:
    """tasks.stream's Channel: its notifications queued for the A2A stream, with the
    asks of the task made or ended meanwhile; bounded, so a client that does not read
    holds the follow, never grows the daemon. One reader (`get`, `take`) at a time: a
    deque and its reader's future, not an asyncio.Queue (whose put and get were a third
    of a replay's work an event)."""

    def __init__(self) -> None:
        self.items: collections.deque[Any] = collections.deque()  # a chunk, ASKED or DONE
        self.writable = asyncio.Event()
        self.writable.set()
        self._held = False  # (writable cleared: the follow holds)
        self._reader: asyncio.Future[None] | None = None

    def notify(self, method: str, params: Any) -> None:
        if method == "tasks.output":
            self.put(params)

    def put(self, item: Any) -> None:
        items = self.items
        items.append(item)
        reader = self._reader
        if reader is not None and not reader.done():
            reader.set_result(None)
        if len(items) >= QUEUED_EVENTS:
            self._held = True
            self.writable.clear()

    async def get(self) -> Any:
        while not self.items:
            self._reader = reader = asyncio.get_running_loop().create_future()
            try:
                await reader
            finally:
                self._reader = None
        return self.take()

    def take(self) -> Any:
        """The next one queued, None if none is (without waiting)."""
        items = self.items
        if not items:
            return None
        item = items.popleft()
        if self._held and len(items) < QUEUED_EVENTS // 2:
            self._held = False
            self.writable.set()
        return item


class _AskWatch:
    """The asks made or ended on this node, told to the waits on their task: one
    subscription for the door (one a wait copied the stream's subscribers at each
    message), and the tasks asked about while a submission is answered (its task's id
    not yet known to its wait)."""

    def __init__(self, stream: Stream) -> None:
        self.stream = stream
        self._waits: dict[str, list[asyncio.Future[None]]] = {}
        # each listening message's own set, by its identity (two empty sets are equal)
        self._heard: dict[int, set[str]] = {}
        self._sub = stream.subscribe(self._told, AskEnded)

    def _told(self, e: AskEnded) -> None:
        task_id = e.ask.task_id
        for asked in self._waits.get(task_id, ()):
            if not asked.done():
                asked.set_result(None)
        for heard in self._heard.values():
            heard.add(task_id)

    def listen(self) -> set[str]:
        """The ids of the tasks asked about from now, until `unlisten` (in a try's finally,
        not a generator's context manager: it is entered at every message)."""
        heard: set[str] = set()
        self._heard[id(heard)] = heard
        return heard

    def unlisten(self, heard: set[str]) -> None:
        del self._heard[id(heard)]

    def next(self, task_id: str) -> asyncio.Future[None]:
        """Done at the task's next ask made or ended; `drop` it once waited for."""
        asked = asyncio.get_running_loop().create_future()
        self._waits.setdefault(task_id, []).append(asked)
        return asked

    def drop(self, task_id: str, asked: asyncio.Future[None]) -> None:
        waits = self._waits.get(task_id)
        if waits is not None:
            waits.remove(asked)
            if not waits:
                del self._waits[task_id]

    def close(self) -> None:
        self.stream.unsubscribe(self._sub)


class A2aDoor:
    def __init__(self, dispatcher: Dispatcher[Any], stream: Stream) -> None:
        self.dispatcher = dispatcher
        self.stream = stream  # the asks made and ended (input-required and its end)
        self.asked = _AskWatch(stream)

    async def call(self, caller: Caller, method: str, params: dict[str, Any],
                   channel: Any = None) -> Any:
        try:
            return await self.dispatcher.call(caller, method, params, channel)
        except RpcError as exc:
            raise refusal(exc) from None

    async def task(self, caller: Caller, agent: str, task_id: str, *, wait: bool = False,
                   given: bool = False) -> TaskInfo:
        """The caller's task of `agent` (one of another agent: not found, as none)."""
        info: TaskInfo = await self.call(caller, TasksGet.declared.name, {
            "task_id": task_id, "wait": wait, "input": given})
        if info.agent != agent:
            raise w.A2aError(w.TASK_NOT_FOUND, f"no such task: {task_id}")
        info.output = mp.plain(info.output)  # (read once: its answer maps it several times)
        return info

    # -- SendMessage ----------------------------------------------------------------------
    async def send(self, caller: Caller, agent: str, req: w.SendRequest) -> TaskInfo:
        """A new task of the message (or the answer to the task's question); its state
        once settled unless returnImmediately."""
        message = req.message
        config = req.configuration
        immediately = config is not UNSET and config.return_immediately is True
        if message.task_id is not UNSET:
            info = await self.answer(caller, agent, message)
            return info if immediately else await self.settled(caller, agent, info.task_id,
                                                               info.input)
        # a message sent again in its context (its id, its content) is the same
        # message, answered by the task it made: the task's idempotency key. One
        # that names no context begins a new one, each time: the task's own id, a
        # session only once a later message names it (so that contexts no one
        # continues hold no session: decision 1122)
        # the task's input is this message (a replay's, by its key, the same one): its
        # history is given from here, not read back from the journal at each look
        encoded = msgspec.json.encode(message)
        sent = msgspec.Raw(encoded)
        submit: dict[str, Any] = {"agent": agent, "input": sent}
        if message.context_id is not UNSET:
            digest = hashlib.sha256(encoded).hexdigest()[:16]
            submit["idempotency_key"] = f"{message.message_id[:MAX_ID]}#{digest}"
            submit["session"] = message.context_id
        context = SENT_CONTEXT.get()
        if context is not None:  # (its span's parent: daemon/submitspan.py)
            submit["traceparent"], submit["tracestate"] = context
        # (returned at once too: the answer is the task, read with tasks:read, decision 1791)
        submit["wait"] = 0  # its outcome with its acceptance, if it has ended by then
        # (the labels it is handed, an anonymous caller's own, are the chain's: handing.py)
        heard = self.asked.listen()
        try:  # (`call`'s, written out: its frame was one more at each resume of the submission)
            accepted = await self.dispatcher.call(caller, TasksSubmit.declared.name, submit)
        except RpcError as exc:
            raise refusal(exc) from None
        finally:
            self.asked.unlisten(heard)
        if not immediately:
            # (its input the message as read: its answer's history, not decoded again)
            ended = _ended(accepted, agent, message.context_id, message)
            if ended is not None:  # (not looked up again: its outcome is the call's answer)
                return ended
            # one queued or running that has asked nothing is waited for, not looked at
            return await self.settled(caller, agent, accepted.task_id, message, unsettled=(
                accepted.status in UNSETTLED and accepted.task_id not in heard))
        info = await self.task(caller, agent, accepted.task_id)
        info.input = message
        return info

    async def answer(self, caller: Caller, agent: str, message: w.Message) -> TaskInfo:
        """A message to a task: the answer to what it asks (a question's answer is the
        message; an approval is granted by a yes)."""
        assert isinstance(message.task_id, str)
        info = await self.task(caller, agent, message.task_id)
        if message.context_id is not UNSET and message.context_id != mp.context_of(info):
            raise w.A2aError(w.INVALID_PARAMS, f"contextId {message.context_id} is not "
                             f"task {info.task_id}'s ({mp.context_of(info)})")
        if not info.asks and mp.state_of(info) not in mp.TERMINAL:
            # a task that asks again after a restart (its attempt replayed) or is about
            # to: its question is waited for, a while
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(ASK_WAIT):
                    info = await self.settled(caller, agent, info.task_id, info.input)
        if mp.state_of(info) in mp.TERMINAL:
            raise w.A2aError(w.UNSUPPORTED, f"task {info.task_id} has ended "
                             f"({info.status}): it takes no more messages")
        if not info.asks:
            raise w.A2aError(w.UNSUPPORTED, f"task {info.task_id} is {info.status}, not "
                             "waiting for input: send a new message without its taskId")
        ask = info.asks[0]
        sent = w.to_json(message)
        if ask.kind is AskKind.QUESTION:
            decision: dict[str, Any] = {"decision": "answered", "answer": sent}
        else:  # (who may approve is the chain's: deciders.py)
            text = " ".join(p.text for p in message.parts if isinstance(p.text, str))
            decision = {"decision": "approved" if text.strip().lower() in YES
                        else "denied", "reason": text or None}
        await self.call(caller, ApprovalsResolve.declared.name, {"id": ask.id, **decision})
        return await self.task(caller, agent, info.task_id, given=True)

    async def settled(self, caller: Caller, agent: str, task_id: str,
                      given: Any = UNSET, *, unsettled: bool = False) -> TaskInfo:
        """The task once it has ended or waits for input (spec 3.2.2, blocking), with its
        input `given` (UNSET: read from the journal). `unsettled`: known not to be yet,
        and to have asked nothing since that was known (not looked at first)."""
        def done(info: TaskInfo | None) -> bool:
            return info is not None and mp.state_of(info) in mp.TERMINAL | {mp.INPUT_REQUIRED}

        while True:
            asked = self.asked.next(task_id)
            try:
                if not unsettled:
                    info = await self.task(caller, agent, task_id, given=given is UNSET)
                    if done(info):
                        break
                unsettled = False
                # (looked at again after RECHECK too: a question a replayed attempt asks
                # again after a restart is the ask its first attempt made, held again
                # without a word on the stream)
                ended = await self.changed(caller, agent, task_id, asked)
            finally:
                self.asked.drop(task_id, asked)
            if ended is not None and done(ended) and given is not UNSET:
                info = ended  # the task as its wait ended: not looked up again
                break
        if given is not UNSET:
            info.input = given
        return info

    # -- ListTasks, CancelTask ------------------------------------------------------------
    async def list(self, caller: Caller, agent: str, req: w.ListTasksRequest
                   ) -> dict[str, Any]:
        size = PAGE if req.page_size is UNSET else req.page_size
        if not 1 <= size <= MAX_PAGE:
            raise w.A2aError(w.INVALID_PARAMS, f"invalid params: pageSize {size} is not "
                             f"1 to {MAX_PAGE}")
        params: dict[str, Any] = {"agent": agent, "limit": size}
        if req.page_token:
            params["before"] = req.page_token
        if req.status is not UNSET and req.status:
            status = mp.STATUSES.get(req.status)
            if status is None:
                raise w.A2aError(w.INVALID_PARAMS, f"invalid params: no such state: "
                                 f"{req.status}")
            params["status"] = status
        history = None if req.history_length is UNSET else req.history_length
        if history is not None and history < 0:
            raise w.A2aError(w.INVALID_PARAMS, "invalid params: historyLength is negative")
        page = await self.call(caller, TasksList.declared.name, params)
        tasks = []
        for summary in reversed(page.tasks):  # newest first, as A2A lists them
            if req.context_id and (summary.options.session or summary.task_id) \
                    != req.context_id:
                continue
            try:
                info = await self.task(caller, agent, summary.task_id, given=True)
            except w.A2aError as exc:
                if exc.kind == w.TASK_NOT_FOUND:  # not the caller's (records.py `started`)
                    continue
                raise
            tasks.append(mp.task_of(info, history if history is not None else 0,
                                    artifacts=req.include_artifacts is True))
        following = page.next if isinstance(page.next, str) else ""
        return {"tasks": tasks, "nextPageToken": following, "pageSize": size,
                "totalSize": len(tasks)}

    async def cancel(self, caller: Caller, agent: str, task_id: str) -> TaskInfo:
        info = await self.task(caller, agent, task_id)
        if mp.state_of(info) in mp.TERMINAL:
            raise w.A2aError(w.NOT_CANCELABLE, f"task {task_id} has ended ({info.status})")
        try:
            cancelled: TaskInfo = await self.dispatcher.call(
                caller, TasksCancel.declared.name, {"task_id": task_id})
        except RpcError as exc:
            if exc.code == jsonrpc.CONFLICT:  # it ended meanwhile
                raise w.A2aError(w.NOT_CANCELABLE, exc.message) from None
            raise refusal(exc) from None
        cancelled.output = mp.plain(cancelled.output)
        return cancelled

    # -- streams --------------------------------------------------------------------------
    async def events(self, caller: Caller, info: TaskInfo, *, until_input: bool,
                     after: str | None = None) -> AsyncIterator[Batch]:
        """The task's events after the snapshot `info`: each chunk of its live output
        from the journal (after `after`, a chunk's id), then as they come, with the asks
        (input-required); its end last. Each is (the chunk's id or None, StreamResponse),
        given in batches: the chunks queued at once are one (a replay's are hundreds,
        written to the client at once). `until_input`: the stream ends at
        input-required too (SendStreamingMessage)."""
        task_id, agent = info.task_id, info.agent
        events = _Events()

        def told(e: AskEnded) -> None:
            if e.ask.task_id == task_id:
                events.put(ASKED)

        sub = self.stream.subscribe(told, AskEnded)
        said = mp.state_of(info)
        streamed: set[str] = set()
        first = after is None
        ids = {"taskId": task_id, "contextId": mp.context_of(info)}  # (its events')
        run: asyncio.Future[Any] | None = None
        try:
            while True:
                params = {"task_id": task_id} | ({} if after is None
                                                 else {"last_event_id": after})
                run = asyncio.ensure_future(self.call(caller, TasksStream.declared.name, params,
                                                      events))
                run.add_done_callback(lambda _: events.put(DONE))
                while True:
                    item = await events.get()
                    chunks: Batch = []
                    while item is not None and not isinstance(item, str):  # (a chunk)
                        event = mp.chunk_event(ids, item.data, first)
                        first, after = False, item.id
                        made = event.get("artifactUpdate", {}).get("artifact", {})
                        if isinstance(made, dict) and "artifactId" in made:
                            streamed.add(made["artifactId"])
                        chunks.append((after, event))
                        item = events.take()
                    if chunks:
                        yield chunks
                    if item is None:
                        continue
                    if item is DONE:
                        break
                    now = await self.task(caller, agent, task_id)
                    if mp.state_of(now) == mp.INPUT_REQUIRED and said != mp.INPUT_REQUIRED:
                        said = mp.INPUT_REQUIRED
                        yield [(None, mp.status_event(now))]
                        if until_input:
                            return
                    elif mp.state_of(now) != mp.INPUT_REQUIRED:
                        said = mp.state_of(now)
                final: TaskInfo = run.result()
                final.output = mp.plain(final.output)
                state = mp.state_of(final)
                if state in mp.TERMINAL:
                    yield [(None, {"artifactUpdate": {
                        "taskId": task_id, "contextId": mp.context_of(final),
                        "artifact": made, "lastChunk": True}})
                        for made in mp.artifacts_of(final)
                        if made.get("artifactId") not in streamed] + [
                        (None, mp.status_event(final))]
                    return
                if state == mp.INPUT_REQUIRED and said != mp.INPUT_REQUIRED:
                    said = state
                    yield [(None, mp.status_event(final))]
                    if until_input:
                        return
                # not in flight here (queued, suspended for its answer): followed again
                # once it changes
                await self.changed(caller, agent, task_id, events.get())
        finally:
            self.stream.unsubscribe(sub)
            if run is not None and not run.done():
                # (asked again until it ends: a cancellation a library loses, as in
                # `changed`, would leave the follow running for a stream gone)
                with contextlib.suppress(w.A2aError):
                    await cancel_all((run,))

    async def changed(self, caller: Caller, agent: str, task_id: str,
                      asked_or_ended: Awaitable[object]) -> TaskInfo | None:
        """Until `asked_or_ended` (an ask of the task made or ended), or the task ends
        (RECHECK at most); the task as its wait for its end gave it, if it did."""
        ended = asyncio.ensure_future(self.task(caller, agent, task_id, wait=True))
        asked = asyncio.ensure_future(asked_or_ended)
        try:
            await asyncio.wait({ended, asked}, timeout=RECHECK,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            # asked again until they end: a cancellation redis-py loses (its sends'
            # wait_for) left the wait for the end running, and a task waiting for input
            # never ends, so a blocking SendMessage waited until its client gave up
            with contextlib.suppress(w.A2aError):
                await cancel_all((ended, asked))
        if ended.cancelled() or ended.exception() is not None:
            return None
        return ended.result()
