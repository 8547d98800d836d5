"""A blocking SendMessage waits for its task to end or to ask (daemon/a2a/door.py
`settled`): each look waits a while for the task's end, then cancels that wait and looks
again. Python 3.11's `asyncio.wait_for` loses a cancellation that comes as what it waits
on finishes, and redis-py sends every command of a cluster's read through it: the wait
for the end then ran on, and the door awaited it. A task waiting for input never ends,
so the caller's SendMessage waited until its client gave up (tests/contract/test_push.py
[cluster], about one run in thirty beside a busy loop per core). Here the Dispatcher's
wait for the end loses the first cancellation it is given, as that wait did."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import msgspec

from corral.askviews import Ask
from corral.daemon.a2a import mapping as mp
from corral.daemon.a2a.door import ASKED, DONE, QUEUED_EVENTS, RECHECK, A2aDoor, _AskWatch, _Events
from corral.daemon.api import Dispatcher
from corral.daemon.caller import Caller
from corral.supervisor.stream import Stream
from corral.supervisor.tasks.askwaits import AskEnded
from corral.taskviews import TaskInfo

TASK = "01a2247e-e6f4-7220-8f43-0c9d06f724ce"
ASK = {"kind": "question", "tenant": "default", "task_id": TASK, "attempt": 1,
       "agent": "tck", "key": "ask:1", "subject": {"prompt": "TCK: input required"},
       "id": "ask-5f688f5be0c713e3", "created": 1.0}


def task(status: str, asks: list[dict[str, Any]] | None = None) -> TaskInfo:
    record: dict[str, Any] = {
        "task_id": TASK, "agent": "tck", "status": status, "priority": 0, "created": 1.0,
        "started": 1.0, "finished": None, "tool_calls": 0, "progress": None,
        "output": None, "error": None, "attempts": []}
    if asks is not None:
        record["asks"] = asks
    return msgspec.convert(record, TaskInfo)


class LosesACancellation:
    """tasks.get as a cluster node answers it: a look answers the task running, then
    suspended with its question once it was looked at; a wait for its end (`wait`) loses
    the first cancellation it is given and then waits on for an end that never comes."""

    def __init__(self) -> None:
        self.looks = 0
        self.lost = 0  # cancellations the waits for the end went on past
        self.waits: set[asyncio.Task[Any]] = set()

    async def call(self, caller: Caller, method: str, params: dict[str, Any],
                   channel: Any = None) -> TaskInfo:
        assert method == "tasks.get", method
        if not params["wait"]:
            self.looks += 1
            return task("running") if self.looks == 1 else task("suspended", [ASK])
        current = asyncio.current_task()
        assert current is not None
        self.waits.add(current)
        try:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.lost += 1  # (as wait_for returns what finished, the cancel unseen)
            await asyncio.Event().wait()
        finally:
            self.waits.discard(current)
        raise AssertionError("the task never ends")


async def test_a_blocking_send_says_input_required_though_a_wait_lost_its_cancel() -> None:
    dispatcher = LosesACancellation()
    door = A2aDoor(cast(Dispatcher[Any], dispatcher), Stream())
    caller = Caller(via="http", name="anonymous")
    bound = asyncio.timeout(RECHECK * 10)
    info = None
    try:
        async with bound:
            info = await door.settled(caller, "tck", TASK, given=None)
    except TimeoutError:
        pass
    finally:
        left = set(dispatcher.waits)
        for wait in left:
            wait.cancel()
    # (the door's send cut short by the bound may not say so: it returned all the same)
    assert info is not None and not bound.expired(), (
        f"the blocking send still waited after {RECHECK * 10:g} s: its wait for the "
        f"task's end lost {dispatcher.lost} cancellation and was awaited")
    assert mp.state_of(info) == mp.INPUT_REQUIRED
    assert (dispatcher.looks, dispatcher.lost) == (2, 1)
    # every wait for the end it began has ended, the one that lost a cancellation too
    assert left == set()


def test_messages_listening_at_once_each_hear_the_asks_and_none_is_left_listening() -> None:
    """The asks heard while a blocking message's submission is answered: each message's
    set is its own. Taken back by equality (`list.remove`), the later message's answer,
    coming first, took the earlier one's empty set in its place: the earlier heard no ask
    after it (its task's question then unseen), and its own took back raised ValueError
    (its SendMessage failed), while the set left stayed listening for good, gathering
    every asked task's id (review's attacker's pass)."""
    stream = Stream()
    watch = _AskWatch(stream)
    earlier, later = watch.listen(), watch.listen()
    watch.unlisten(later)  # (its submission answered first)
    stream.emit(AskEnded(msgspec.convert(ASK, Ask)))
    assert (earlier, later) == ({TASK}, set())
    watch.unlisten(earlier)
    stream.emit(AskEnded(msgspec.convert({**ASK, "task_id": "another"}, Ask)))
    assert (earlier, later) == ({TASK}, set())


async def test_a_streams_queue_holds_its_follow_when_full_until_half_is_read() -> None:
    """A stream's queue (door.py `_Events`) of chunks its client has not read: at
    QUEUED_EVENTS it clears `writable` (tasks.stream's follow waits on it), and sets it
    again once fewer than half are left, not before; the chunks, an ask and the follow's
    end come out in the order they went in. Fails with the queue growing past its bound
    unheld, or the follow let go at the first read."""
    events = _Events()
    chunks = [object() for _ in range(QUEUED_EVENTS)]
    for i, chunk in enumerate(chunks):
        assert events.writable.is_set(), i
        events.notify("tasks.output", chunk)
    events.notify("tasks.other", "not queued")
    assert not events.writable.is_set() and len(events.items) == QUEUED_EVENTS
    events.put(ASKED)
    events.put(DONE)
    got = [await events.get()]
    while len(events.items) >= QUEUED_EVENTS // 2:
        assert not events.writable.is_set(), len(events.items)
        got.append(events.take())
    assert events.writable.is_set()
    while (item := events.take()) is not None:
        got.append(item)
    assert got == [*chunks, ASKED, DONE]
