"""Calls of one script made in the same turn of the event loop go to Redis together, as
one pipeline: one write and one read for a burst of submits (a client with many tasks in
flight sends them in one read of the control socket), not one round trip each. A call
may bring others to go before it in the same pipeline (`after`: a durable call's
carried outcomes, before the submit that rides with its rows)."""

from __future__ import annotations

import asyncio
from typing import Any

from redis.exceptions import RedisError

from ..timeouts import kept
from .scripts import Call, Scripts

BATCH = 512  # calls in one pipeline at most


class Batcher:
    def __init__(self, scripts: Scripts, script: Any) -> None:
        self.scripts = scripts
        self.script = script
        self._calls: list[tuple[list[Any], list[Any], list[Call], asyncio.Future[Any]]] = []
        self._scheduled = False
        self._sending: set[asyncio.Future[None]] = set()

    async def __call__(self, keys: list[Any], args: list[Any]) -> Any:
        return (await self.after([], keys, args))[1]

    async def after(self, before: list[Call], keys: list[Any], args: list[Any]
                    ) -> tuple[list[Any], Any]:
        """The call, the calls `before` it in the same pipeline: their answers (each an
        answer or its error), and its."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        self._calls.append((keys, args, before, fut))
        if not self._scheduled:
            # after what this turn has already made ready: the rest of the burst
            self._scheduled = True
            loop.call_soon(self._flush)
        return await fut  # type: ignore[no-any-return]

    def _flush(self) -> None:
        self._scheduled = False
        calls, self._calls = self._calls, []
        for i in range(0, len(calls), BATCH):
            kept(self._sending, asyncio.ensure_future(self._send(calls[i:i + BATCH])))

    async def _send(self, calls: list[tuple[list[Any], list[Any], list[Call],
                                            asyncio.Future[Any]]]) -> None:
        batch = [(keys, args) for keys, args, _, _ in calls]
        await self.ready(batch)
        planned = self.plan(batch)
        first = [c for _, _, before, _ in calls for c in before]
        try:
            results = await self.scripts.acknowledged([*first, *planned])
        except (RedisError, OSError) as exc:
            for *_, fut in calls:
                if not fut.done():
                    fut.set_exception(exc)
            return
        finally:
            self.sent(planned)
        answers, results = results[:len(first)], results[len(first):]
        for (_, _, before, fut), call, result in zip(calls, planned, results, strict=True):
            mine, answers = answers[:len(before)], answers[len(before):]
            if not isinstance(result, Exception):
                result = self.answer(call, result)
            if fut.done():
                continue  # its caller went away
            if isinstance(result, Exception):
                fut.set_exception(result)
            else:
                fut.set_result((mine, result))

    # -- what a kind of batch changes (submitclaim.py) --------------------------------
    async def ready(self, calls: list[tuple[list[Any], list[Any]]]) -> None:
        """Until the batch may be planned."""

    def plan(self, calls: list[tuple[list[Any], list[Any]]]) -> list[Call]:
        """The script calls to make of one batch's, in order."""
        return [(self.script, keys, args) for keys, args in calls]

    def sent(self, planned: list[Call]) -> None:
        """The batch's calls have been answered, or failed."""

    def answer(self, call: Call, result: Any) -> Any:
        """What the caller gets of its call's answer."""
        return result
