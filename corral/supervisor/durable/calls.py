"""Durable calls driven to their ends, one driver for every kind (a planner says what
differs): bounded by a deadline, cancelled with a reason, resumed after a restart from
their rows; a call whose store failed is left running, resumed at the next start."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Generic, Protocol, TypeVar

from ...timeouts import waited, within
from .engine import StepEngine
from .record import Durable
from .store import SharedStore


class StepFailed(Exception):
    """A step that did not succeed: the call fails with this text."""


C = TypeVar("C", bound=Durable)
C_contra = TypeVar("C_contra", bound=Durable, contravariant=True)


class Planner(Protocol[C_contra]):
    async def drive(self, call: C_contra) -> None:
        """The call's steps to its end, its status set (StepFailed: it failed so)."""

    async def abandon(self, call: C_contra) -> None:
        """A call that ended otherwise than by its steps: its running steps ended."""

    def timed_out(self, call: C_contra) -> str: ...

    def ended(self, call: C_contra) -> None:
        """The call's end is kept (told to whoever follows it)."""

    def stopped(self, call: C_contra, why: str) -> None:
        """The call's driver stopped with the call running (its store failed)."""


class Calls(Generic[C]):
    def __init__(self, planner: Planner[C], steps: StepEngine,
                 shared: SharedStore | None = None) -> None:
        """`steps`: the engine the planner runs the calls' steps on, which keeps each call's
        end; `shared`: its store when several daemons share it (a cluster's)."""
        self.planner = planner
        self.steps = steps
        self.shared = shared
        self.live: dict[str, tuple[C, asyncio.Task[None]]] = {}
        self._why: dict[str, str] = {}  # call id -> why its driver was cancelled
        # no step is submitted before the journal's tasks are back (a recorded step's task is found)
        self.recovered = asyncio.Event()

    def drive(self, call: C) -> None:
        # (the loop's create_task: ensure_future's checks of what it is given cost more)
        driver = asyncio.get_running_loop().create_task(self._run(call))
        self.live[call.call_id] = (call, driver)

    async def _run(self, call: C) -> None:
        try:
            try:
                await self.recovered.wait()
                left = None if call.deadline is None else max(0.0, call.deadline - time.time())
                await within(self.planner.drive(call), left)
            except TimeoutError:
                call.status, call.error = "timed_out", self.planner.timed_out(call)
            except StepFailed as exc:
                call.status, call.error = "failed", str(exc)
            except asyncio.CancelledError:
                why = self._why.pop(call.call_id, None)
                if why is None:
                    raise  # the process stops: the call stays running, resumed at the next
                call.status, call.error = "cancelled", why
            except Exception as exc:  # the store failed: told, resumed (_stopped)
                self._stopped(call, exc)
                return
            await self._end(call)
        finally:
            self.live.pop(call.call_id, None)
            self.steps.forget(call.call_id)

    async def _end(self, call: C) -> None:
        steps = self.steps
        try:
            if call.status != "succeeded":
                await steps.let_go(call)
                await self.planner.abandon(call)
            call.ended = time.time()
            await steps.keep_end(call)  # (with its last step's end, in one commit)
            self.planner.ended(call)
        except Exception as exc:  # (as above)
            self._stopped(call, exc)

    def _stopped(self, call: C, exc: Exception) -> None:
        again = "at the next start"
        if self.shared is not None:  # let go: the beat takes it again, on whichever daemon
            self.shared.stopped(call.call_id)
            again = "by the cluster's next beat, unless another node holds it"
        self.planner.stopped(call, f"{exc}; it is resumed {again}")

    async def wait(self, call_id: str, timeout: float | None) -> None:
        live = self.live.get(call_id)
        if live is not None:
            with contextlib.suppress(TimeoutError):
                await waited(live[1], timeout)

    async def cancel(self, call_id: str, why: str) -> bool:
        """The call ended `cancelled` with `why`; False when it is not driven here."""
        live = self.live.get(call_id)
        if live is None:
            return False
        call, driver = live
        self._why[call_id] = why
        driver.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(driver)
        if driver.cancelled():  # cancelled before its driver first ran: ended here
            self._why.pop(call_id, None)
            self.live.pop(call_id, None)
            call.status, call.error = "cancelled", why
            await self._end(call)
        return True

    async def close(self) -> None:
        """The process stops: each driver stops where it is (resumed at the next start)."""
        drivers = [d for _, d in self.live.values()]
        for d in drivers:
            d.cancel()
        await asyncio.gather(*drivers, return_exceptions=True)
