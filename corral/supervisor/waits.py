"""Waiting for the fleet: for a condition, an event, a replica's state, a rollout's new
processes to be healthy. Each wait is looked at after every transition and readiness
change (states, task counts and readiness only change with one), never polled."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Callable, Iterable

from ..timeouts import within
from .config import AgentSpec
from .lifecycle import TRANSIENT, State
from .process_replica import ProcessReplica, Transition
from .replica import Replica


class Waits:
    def __init__(self, census: Counter[State]) -> None:
        self.census = census  # the agents' replicas by state (core.Supervisor's)
        self._waiters: list[tuple[Callable[[Transition], bool], asyncio.Future[Transition]]] = []
        self._conditions: list[tuple[Callable[[], bool], asyncio.Future[None]]] = []

    def transitioned(self, event: Transition) -> None:
        for pred, fut in self._waiters:
            if not fut.done() and pred(event):
                fut.set_result(event)
        self._waiters = [(pred, fut) for pred, fut in self._waiters if not fut.done()]
        self.look()

    def look(self) -> None:
        """Wake the waits whose condition holds now."""
        for cond, fut in self._conditions:
            if not fut.done() and cond():
                fut.set_result(None)
        self._conditions = [(cond, fut) for cond, fut in self._conditions if not fut.done()]

    async def healthy(self, new: list[Replica], spec: AgentSpec, deadline: float
                      ) -> str | None:
        """None once every process of `new` is Ready, passes its readiness check, and has
        stayed so for `spec.min_healthy_time` seconds, all within `deadline` seconds; else
        why not."""
        give_up = time.monotonic() + deadline

        def broke() -> Replica | None:
            # an exit, even one its policy would restart, fails the rollout at once
            return next((r for r in new if r.last_exit is not None
                         or r.machine.down), None)

        try:
            await self.wait_for(lambda: broke() is not None or all(
                r.serving and r.health_ready for r in new), deadline)
        except TimeoutError:
            late = next(r for r in new if not (r.serving and r.health_ready))
            if late.serving and late.health is not None:
                return (f"not ready within {deadline:g} s: "
                        f"{late.health.reason or 'unready'}")
            return f"not Ready within {deadline:g} s ({late.state}: {late.reason})"
        r = broke()
        if r is None and spec.min_healthy_time:
            with contextlib.suppress(TimeoutError):
                await self.wait_for(lambda: any(not (r.serving and r.health_ready)
                                                for r in new), spec.min_healthy_time)
            r = next((r for r in new if not (r.serving and r.health_ready)), None)
            if r is None and time.monotonic() > give_up:
                return (f"not Ready for min_healthy_time ({spec.min_healthy_time:g} s) "
                        f"within {deadline:g} s")
        if r is not None:
            if r.serving and r.health is not None:
                return r.health.reason or "unready"
            return r.last_exit or r.reason
        return None

    async def wait_for(self, cond: Callable[[], bool], timeout: float | None) -> None:
        """Wait until `cond()` holds; TimeoutError after `timeout` (None: no bound)."""
        if cond():
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._conditions.append((cond, fut))
        try:
            await within(fut, timeout)
        finally:
            if not fut.done():
                fut.cancel()

    async def wait_event(self, pred: Callable[[Transition], bool], timeout: float) -> Transition:
        fut: asyncio.Future[Transition] = asyncio.get_running_loop().create_future()
        self._waiters.append((pred, fut))
        try:
            return await within(fut, timeout)
        finally:
            if not fut.done():
                fut.cancel()

    async def wait_replica(self, r: ProcessReplica, states: State | Iterable[State],
                           timeout: float) -> None:
        """Wait until `r` (an agent's replica or an MCP instance) is in one of `states`."""
        wanted = {states} if isinstance(states, State) else set(states)
        if r.state in wanted:
            return
        values = {s.value for s in wanted}
        try:
            await self.wait_event(
                lambda e: e.kind == r.kind and e.name == r.name and e.replica == r.index
                and e.state in values,
                timeout,
            )
        except TimeoutError:
            # a bare TimeoutError leaves the caller guessing; what the replica is doing
            # and why it last exited (e.g. the agent's import error) is the answer
            msg = (f"{r.label} did not reach {' or '.join(sorted(values))} within {timeout:g} "
                   f"s: it is {r.state.value}: {r.reason}")
            if r.last_exit and r.last_exit not in r.reason:
                msg += f"; last exit: {r.last_exit}"
            raise TimeoutError(msg) from None

    async def wait_all_serving(self, timeout: float = 30.0) -> None:
        """Wait until every replica of every agent that is meant to run is serving."""
        def settled(_: Transition | None = None) -> bool:
            return not any(self.census[s] for s in TRANSIENT)

        if not settled():
            await self.wait_event(settled, timeout)
