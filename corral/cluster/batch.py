"""Calls of one script made in the same turn of the event loop go to Redis together, as
one pipeline: one write and one read for a burst of submits (a client with many tasks in
flight sends them in one read of the control socket), not one round trip each."""

from __future__ import annotations

import asyncio
from typing import Any

from redis.exceptions import RedisError

from .scripts import Call, Scripts

BATCH = 512  # calls in one pipeline at most
Planned = tuple[Call, list[int]]  # a script call, and the places of the calls it answers


class Batcher:
    def __init__(self, scripts: Scripts, script: Any) -> None:
        self.scripts = scripts
        self.script = script
        self._calls: list[tuple[list[Any], list[Any], asyncio.Future[Any]]] = []
        self._scheduled = False
        self._sending: set[asyncio.Future[None]] = set()

    async def __call__(self, keys: list[Any], args: list[Any]) -> Any:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        self._calls.append((keys, args, fut))
        if not self._scheduled:
            # after what this turn has already made ready: the rest of the burst
            self._scheduled = True
            loop.call_soon(self._flush)
        return await fut

    def _flush(self) -> None:
        self._scheduled = False
        calls, self._calls = self._calls, []
        for i in range(0, len(calls), BATCH):
            # held until done: a task the loop only references weakly may be collected
            sending = asyncio.ensure_future(self._send(calls[i:i + BATCH]))
            self._sending.add(sending)
            sending.add_done_callback(self._sending.discard)

    async def _send(self, calls: list[tuple[list[Any], list[Any], asyncio.Future[Any]]]
                    ) -> None:
        planned = self.plan([(keys, args) for keys, args, _ in calls])
        try:
            results = await self.scripts.run([call for call, _ in planned])
        except (RedisError, OSError) as exc:
            for _, _, fut in calls:
                if not fut.done():
                    fut.set_exception(exc)
            return
        finally:
            self.sent(planned)
        for (call, which), result in zip(planned, results, strict=True):
            answers = ([result] * len(which) if isinstance(result, Exception)
                       else self.answers(call, result))
            for i, answer in zip(which, answers, strict=True):
                fut = calls[i][2]
                if fut.done():
                    continue  # its caller went away
                if isinstance(answer, Exception):
                    fut.set_exception(answer)
                else:
                    fut.set_result(answer)

    # -- what a kind of batch changes (submitclaim.py) --------------------------------
    def plan(self, calls: list[tuple[list[Any], list[Any]]]) -> list[Planned]:
        """The script calls to make of one batch's, in order, each with the places in
        the batch of the calls it answers."""
        return [((self.script, keys, args), [i]) for i, (keys, args) in enumerate(calls)]

    def sent(self, planned: list[Planned]) -> None:
        """The batch's calls have been answered, or failed."""

    def answers(self, call: Call, result: Any) -> list[Any]:
        """What the callers a call answers get of its answer, in their order."""
        return [result]
