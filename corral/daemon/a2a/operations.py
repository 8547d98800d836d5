"""The eleven operations (spec 3.1), each from its request's params (decoded JSON) to
its answer's JSON, or a stream's events: what both bindings call, by the operation's
name. Streams: batches of (event id or None, StreamResponse) pairs."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import msgspec
from aiohttp import web
from msgspec import UNSET

from ...jsonrpc import RpcError
from ...methods import TasksGet
from ...taskviews import TaskInfo
from ..caller import Caller
from ..http.sse import Streams
from ..http.tokenstreams import TokenStreams
from . import mapping as mp
from . import wire as w
from .door import A2aDoor, Batch
from .push import LEAD, PushConfigs

Card = Callable[[], dict[str, Any]]
Events = AsyncIterator[Batch]
STREAMING = frozenset({"SendStreamingMessage", "SubscribeToTask"})


class Operations:
    def __init__(self, door: A2aDoor, push: PushConfigs, streams: Streams,
                 by_token: TokenStreams) -> None:
        self.door = door
        self.push = push
        self.streams = streams  # the open streams of each caller, bounded as REST's are
        self.by_token = by_token  # a token's, ended when it is revoked or expires
        self._watching: dict[str, asyncio.Task[None]] = {}
        self.holder = uuid.uuid4().hex  # this daemon, as it says it delivers a task's
        self._failed: set[str] = set()  # tasks whose delivery failed (said): not taken up
        self._leading: asyncio.Task[None] | None = None
        self._unread = False  # the home was not read (said once until it is again)

    def call(self, name: str, caller: Caller, agent: str, params: Any,
             card: Card) -> Awaitable[Any]:
        """The operation's call, to await (its coroutine itself: a frame less to go
        through at each of its resumes)."""
        op = self.unary.get(name)
        if op is None:
            raise w.A2aError(w.METHOD_NOT_FOUND, f"method not found: {name}")
        return op(self, caller, agent, params, card)

    async def send(self, caller: Caller, agent: str, params: Any, card: Card) -> Any:
        req = w.decode(params, w.SendRequest)
        if req.configuration is UNSET:  # (most: no push, the whole history)
            return mp.answer_of(await self.door.send(caller, agent, req), None)
        push = _push_of(req)
        info = await (self.door.send(caller, agent, req) if push is None
                      else self.pushed(caller, agent, req, push))
        return mp.answer_of(info, _history(req))

    async def pushed(self, caller: Caller, agent: str, req: w.SendRequest,
                     push: w.PushConfig) -> TaskInfo:
        """A message asking for push: its config refused before its task is submitted,
        kept after, and its task's events delivered to it (one that asks none is sent
        without this frame between: the door's own send)."""
        await self.push.check(push)
        info = await self.door.send(caller, agent, req)
        await self.push.add(info.task_id, push, kept_caller(caller))
        self.watch(caller, info.task_id)
        return info

    async def get(self, caller: Caller, agent: str, params: Any, card: Card) -> Any:
        req = w.decode(params, w.TaskRequest)
        if req.history_length is not UNSET and req.history_length < 0:
            raise w.A2aError(w.INVALID_PARAMS, "invalid params: historyLength is negative")
        info = await self.door.task(caller, agent, req.id, given=True)
        return mp.task_of(info, None if req.history_length is UNSET else req.history_length)

    async def list_tasks(self, caller: Caller, agent: str, params: Any, card: Card) -> Any:
        return await self.door.list(caller, agent, w.decode(params, w.ListTasksRequest))

    async def cancel(self, caller: Caller, agent: str, params: Any, card: Card) -> Any:
        req = w.decode(params, w.TaskRequest)
        info = await self.door.cancel(caller, agent, req.id)
        return mp.task_of(info)

    async def extended_card(self, caller: Caller, agent: str, params: Any, card: Card
                            ) -> Any:
        return card()

    # -- push configs ---------------------------------------------------------------------
    async def push_create(self, caller: Caller, agent: str, params: Any, card: Card
                          ) -> Any:
        config = w.decode(params, w.PushConfig)
        if config.task_id is UNSET:
            raise w.A2aError(w.INVALID_PARAMS, "invalid params: taskId is missing")
        info = await self.door.task(caller, agent, config.task_id)
        made = await self.push.add(info.task_id, config, kept_caller(caller))
        if mp.state_of(info) not in mp.TERMINAL:
            self.watch(caller, info.task_id)
        return w.to_json(made)

    async def push_get(self, caller: Caller, agent: str, params: Any, card: Card) -> Any:
        req = w.decode(params, w.PushConfigRequest)
        await self.door.task(caller, agent, req.task_id)
        return w.to_json(await self.push.get(req.task_id, req.id, kept_caller(caller)))

    async def push_list(self, caller: Caller, agent: str, params: Any, card: Card) -> Any:
        req = w.decode(params, w.ListPushConfigsRequest)
        await self.door.task(caller, agent, req.task_id)
        return {"configs": [w.to_json(c) for c in await self.push.of(
                    req.task_id, kept_caller(caller))],
                "nextPageToken": ""}

    async def push_delete(self, caller: Caller, agent: str, params: Any, card: Card
                          ) -> Any:
        req = w.decode(params, w.PushConfigRequest)
        await self.door.task(caller, agent, req.task_id)
        await self.push.delete(req.task_id, req.id, kept_caller(caller))
        return {}

    unary: dict[str, Callable[[Operations, Caller, str, Any, Card], Awaitable[Any]]] = {
        "SendMessage": send, "GetTask": get, "ListTasks": list_tasks, "CancelTask": cancel,
        "GetExtendedAgentCard": extended_card,
        "CreateTaskPushNotificationConfig": push_create,
        "GetTaskPushNotificationConfig": push_get,
        "ListTaskPushNotificationConfigs": push_list,
        "DeleteTaskPushNotificationConfig": push_delete,
    }

    # -- streams --------------------------------------------------------------------------
    async def stream(self, name: str, caller: Caller, agent: str, params: Any,
                     request: web.Request) -> Events:
        """The stream's events, its checks made before the first (an error then is the
        call's answer, not an event); `request` the stream's (its Last-Event-ID, and its
        connection ended with its token)."""
        full = self.streams.full(caller.who)
        if full is not None:  # before a message is submitted
            raise w.A2aError(w.UNAVAILABLE, full)
        return self._held(caller, request, await self._stream(
            name, caller, agent, params, request.headers.get("Last-Event-ID")))

    async def _held(self, caller: Caller, request: web.Request, events: Events) -> Events:
        """The events, while the stream is held: its caller's, and its token's until the
        token is revoked or expires (the stream ends then, whole)."""
        with self.streams.held(caller.who), \
                self.by_token.lasting(request, caller.token) as stop:
            if caller.token is None:  # (no one's: nothing ends it but its task or client)
                async for event in events:
                    yield event
                return
            async for event in _until(events, stop):
                yield event

    async def _stream(self, name: str, caller: Caller, agent: str, params: Any,
                      after: str | None) -> Events:
        if name == "SendStreamingMessage":
            req = w.decode(params, w.SendRequest)
            req = _immediate(req)
            push = _push_of(req)
            info = await (self.door.send(caller, agent, req) if push is None
                          else self.pushed(caller, agent, req, push))
            first = mp.submitted(info, _history(req)) if req.message.task_id is UNSET \
                else mp.task_of(info, _history(req))
            return self._told(first, self.door.events(caller, info, until_input=True))
        task = w.decode(params, w.TaskRequest)
        info = await self.door.task(caller, agent, task.id, given=True)
        if mp.state_of(info) in mp.TERMINAL:
            raise w.A2aError(w.UNSUPPORTED, f"task {task.id} has ended ({info.status}): "
                             "there is nothing to subscribe to")
        return self._told(mp.task_of(info), self.door.events(
            caller, info, until_input=False, after=after))

    @staticmethod
    async def _told(task: dict[str, Any], events: Events) -> Events:
        yield [(None, {"task": task})]
        async for event in events:
            yield event

    async def resume(self) -> None:
        """Deliver for the tasks whose configs their home keeps and no other daemon
        delivers (a daemon before this one's, a dead node's)."""
        self._leading = asyncio.get_running_loop().create_task(self._lead())

    async def _lead(self) -> None:
        """The configs kept taken up. A node's home is this daemon's alone: what it keeps
        is taken up once here, and each config made after is watched as it is made
        (`watch`), each task's delivery woken by its own status changes (its journal
        followed): nothing is looked at again. A cluster's other nodes deliver from it
        too, and one that dies says so by its leases lapsing alone (no Redis tells of a
        key's expiry unless its server is configured to): there, each lease held is
        renewed, and the tasks no node delivers looked for, at a lease's third. A home
        not read is looked at again at that period, whichever it is."""
        while True:
            try:
                await self._take_up()
                self._unread = False
                if not self.push.shared:
                    return
            except w.A2aError as exc:
                if not self._unread:
                    self.push.report(f"a2a push configs not read: {exc.message}")
                self._unread = True
            await asyncio.sleep(LEAD / 3)

    async def _take_up(self) -> None:
        """The tasks delivered here said so again (one another daemon took meanwhile
        let go), and those with configs no daemon delivers taken up."""
        for task_id, job in list(self._watching.items()):
            if not await self.push.lead(task_id, self.holder):
                job.cancel()
        kept = await self.push.tasks()
        self._failed &= set(kept)
        for task_id in kept:
            if task_id in self._watching or task_id in self.push.ending or \
                    task_id in self._failed:
                continue
            caller = await self.push.caller(task_id)
            if caller is None:
                continue
            try:
                made = msgspec.convert(caller, Caller)
            except msgspec.ValidationError as exc:
                self.push.report(f"a2a push of task {task_id} not resumed: its caller "
                                 f"is not read ({exc})")
                self._failed.add(task_id)
                continue
            self._start(made, task_id)

    def watch(self, caller: Caller, task_id: str) -> None:
        """Deliver the task's events to its push configs until it ends (unless another
        daemon of the cluster does)."""
        self._failed.discard(task_id)
        self.push.ending.discard(task_id)
        self._start(caller, task_id)

    def _start(self, caller: Caller, task_id: str) -> None:
        if task_id in self._watching:
            return
        job = asyncio.get_running_loop().create_task(self._deliver(caller, task_id))
        self._watching[task_id] = job
        job.add_done_callback(lambda _: self._watching.pop(task_id, None))

    async def _deliver(self, caller: Caller, task_id: str) -> None:
        try:
            if not await self.push.lead(task_id, self.holder):
                return  # (another daemon delivers: it reads this one's configs too)
            info = await self.door.dispatcher.call(caller, TasksGet.declared.name,
                                                   {"task_id": task_id})
            async for batch in self.door.events(caller, info, until_input=False):
                for _, event in batch:
                    status = event.get("statusUpdate")
                    final = isinstance(status, dict) and \
                        status.get("status", {}).get("state") in mp.TERMINAL
                    await self.push.deliver(task_id, event, final, self._refusal)
        except (w.A2aError, RpcError) as exc:
            self._failed.add(task_id)
            self.push.report(f"a2a push of task {task_id}: {exc.message}")

    def _refusal(self, maker: dict[str, Any]) -> str | None:
        """Why a config's maker would not make it now (None: they would): the token it
        was made under revoked, or past its expiry, as its streams end then (decision
        1890). Each config is its maker's: every one of a task's saw the task when it
        was made, and a token's tenant, agents and scopes are its identity's. A token
        made later under its name is another; tokens are a node's own, so a config made
        under another node's is not this one's to post to."""
        name = maker.get("token")
        if name is None:
            return None
        token = self.by_token.tokens.named(name)
        if token is None or token.created != maker.get("since", token.created):
            return (f"its maker's token {name} is no longer this daemon's (revoked, or "
                    "another node's)")
        if token.expired(time.time()):
            return f"its maker's token {name} has expired"
        return None

    async def close(self) -> None:
        for job in [*self._watching.values(), *([self._leading] if self._leading else [])]:
            job.cancel()
        self.door.asked.close()
        await self.push.close()


def kept_caller(caller: Caller) -> dict[str, Any]:
    """Who made a config, as its home keeps them."""
    return {"via": caller.via, "token": caller.token, "since": caller.since,
            "name": caller.name,
            "tenant": caller.tenant, "agents": caller.agents,
            "scopes": sorted(caller.scopes)}


def _immediate(req: w.SendRequest) -> w.SendRequest:
    """A streamed message is submitted at once: the stream tells what follows."""
    config = req.configuration if req.configuration is not UNSET else w.SendConfiguration()
    return msgspec.structs.replace(req, configuration=msgspec.structs.replace(
        config, return_immediately=True))


async def _until(events: Events, stop: asyncio.Future[None]) -> Events:
    """`events` until `stop` is done (a wait for the next one is cancelled then)."""
    while True:
        step = asyncio.ensure_future(anext(events))
        await asyncio.wait((step, stop), return_when=asyncio.FIRST_COMPLETED)
        if not step.done():
            step.cancel()
            await asyncio.wait((step,))
            return
        try:
            batch = step.result()
        except StopAsyncIteration:
            return
        yield batch


def _push_of(req: w.SendRequest) -> w.PushConfig | None:
    """The push config a message asks for its task, if any (a coroutine's call each
    message cost more than this look)."""
    config = req.configuration
    if config is UNSET or config.task_push_notification_config is UNSET:
        return None
    return config.task_push_notification_config


def _history(req: w.SendRequest) -> int | None:
    config = req.configuration
    if config is UNSET or config.history_length is UNSET:
        return None
    if config.history_length < 0:
        raise w.A2aError(w.INVALID_PARAMS, "invalid params: historyLength is negative")
    return config.history_length
