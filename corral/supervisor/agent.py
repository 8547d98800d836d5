"""An agent: a spec and its replicas, and the ways they are replaced (a rollout, a
switch to a release) and counted (scale), without a task dropped."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterable
from typing import Protocol

from .. import jsonrpc
from ..text import plural
from .config import AgentSpec
from .errors import SupervisorError, UnreadyKept
from .lifecycle import Cause
from .process_replica import ResumeFailed
from .replica import Replica
from .startorder import before
from .startstop import Starter, start_all, stop_all


class AgentOwner(Protocol):
    """What an agent needs of the engine around it (agents.Agents implements it)."""

    def new_replica(self, spec: AgentSpec, name: str, index: int) -> Replica: ...

    def roster_changed(self, name: str) -> None:
        """The agent's list of replicas changed (`Roster` on the stream)."""

    def forget(self, replicas: Iterable[Replica]) -> None:
        """Replicas gone for good leave the census."""

    async def healthy(self, new: list[Replica], spec: AgentSpec, deadline: float
                      ) -> str | None:
        """None once `new` are ready and stayed so; else why not (waits.py)."""
        ...

    def pump(self, name: str) -> None: ...

    def up(self, names: Iterable[str]) -> bool:
        """Whether the agents named are there and up, none waiting to start."""

    def serving(self, names: Iterable[str]) -> bool: ...

    async def wait_for(self, cond: Callable[[], bool], timeout: float | None) -> None: ...

    def check_room(self, want: dict[str, tuple[str, int]], fleet_what: str, tenant_what: str
                   ) -> None:
        """Refuse (SupervisorError) agents (name -> (tenant, replicas)) past the fleet's
        max_replicas or their tenants' quotas."""


class Agent:
    """An agent: a spec and its replicas."""

    def __init__(self, host: AgentOwner, spec: AgentSpec) -> None:
        self.host = host
        self.spec = spec
        self.name = spec.name
        self.replicas = [host.new_replica(spec, spec.name, i) for i in range(spec.replicas)]
        # processes of a rollout not (or no longer) in `replicas`: the one starting and the
        # one finishing its tasks; the supervisor stops them too when it closes
        self.replacing: set[Replica] = set()
        # those a scale-down took out of dispatch, finishing their running tasks before
        # they stop (`corral status` shows them, draining)
        self.draining: list[Replica] = []
        self._starter: Starter | None = None  # start_all's starts still due
        # a start waiting for the agents of `after` to be up
        self.waiting: asyncio.Future[None] | None = None

    def start(self, held: frozenset[int] = frozenset()) -> None:
        """Start its replicas but those `held` (stopped by hand before a daemon's
        restart: they stay down until started by hand)."""
        if self.waiting is not None:
            return  # its start is due once `after`'s agents are up
        if self._may_start():
            self._starter = start_all(self._starting(held))
        else:
            self.waiting = asyncio.ensure_future(self._start_after(held))

    def _starting(self, held: frozenset[int]) -> list[Replica]:
        return [r for r in self.replicas if r.index not in held] if held else self.replicas

    def _may_start(self) -> bool:
        """Every agent of `after` is up, and every one of `requires` serves (one that
        fails for good stops this one: daemon/dependents.py)."""
        return self.host.up(before(self.spec)) and self.host.serving(self.spec.requires)

    async def _start_after(self, held: frozenset[int]) -> None:
        try:
            await self.host.wait_for(self._may_start, None)
        finally:
            self.waiting = None
        self._starter = start_all(self._starting(held))

    async def stop(self, reason: str = "stopped") -> None:
        if self.waiting is not None:
            self.waiting.cancel()
            self.waiting = None
        if self._starter is not None:
            self._starter.cancel()
        await stop_all(self.replicas, reason)

    async def roll(self, spec: AgentSpec | None = None, *, replicas: list[int] | None = None,
                   start_stopped: bool = True) -> None:
        """Replace replicas one at a time (all, or those listed) with processes of `spec`
        (default: the current one), each new one serving before the old one leaves
        dispatch and drains: no task dropped. A new process not ready aborts the rollout,
        the old one kept; a failed replica has none to keep, so the agent stays on `spec`
        (what an operator fixing a broken command expects). A replica stopped by hand is
        replaced without starting, unless `start_stopped`."""
        new_spec = spec or self.spec
        unready: list[str] = []
        for i in replicas if replicas is not None else range(len(self.replicas)):
            if i < len(self.replicas):
                why = await self._replace(i, new_spec, start_stopped)
                unready += [why] if why is not None else []
        if spec is not None:
            spec.replicas = self.spec.replicas
            self.spec = spec
        if unready:  # (a rolling restart's spec is the one there was)
            kept = ": the new spec is kept, a start runs it" if spec is not None else ""
            raise UnreadyKept(jsonrpc.REFUSED, f"rollout of {self.name}: "
                              f"{'; '.join(unready)}; no old process was running (it "
                              f"had failed){kept}")

    async def _replace(self, i: int, spec: AgentSpec, start_stopped: bool) -> str | None:
        """Replica `i` replaced by a process of `spec`; why a failed one's new process
        did not become ready (None: it did, or the replica was not failed)."""
        old = self.replicas[i]
        new = self.host.new_replica(spec, self.name, i)
        if old.machine.failed or (not start_stopped and old.stopped_by_hand):
            self.replicas[i] = new
            self.host.roster_changed(self.name)
            self.host.forget([old])
            return await self._supplant(i, new, spec) if old.machine.failed else None
        self.replacing.update((old, new))
        try:
            await self._swap(i, old, new, spec)
        finally:
            self.replacing -= {old, new}
        return None

    async def _supplant(self, i: int, new: Replica, spec: AgentSpec) -> str | None:
        """A failed replica's `new` one, in its place, started as by an operator's start:
        one that does not become ready is left to its restart policy, as such a start is."""
        new.start(by_hand=True)
        why = await self.host.healthy([new], spec, spec.start_timeout + spec.stop_timeout
                                      + 5.0 + spec.min_healthy_time)
        self.host.pump(self.name)
        return None if why is None else f"replica {i}'s new process did not become ready: {why}"

    async def _swap(self, i: int, old: Replica, new: Replica, spec: AgentSpec) -> None:
        new.start(by_hand=True)
        why = await self.host.healthy([new], spec, spec.start_timeout + spec.stop_timeout
                                      + 5.0 + spec.min_healthy_time)
        if why is not None:
            await new.stop("rollout aborted")
            self.host.forget([new])
            raise SupervisorError(jsonrpc.REFUSED, f"rollout of {self.name} stopped at "
                                  f"replica {i}: the new process did not become ready: "
                                  f"{why}; the old one keeps running")
        self.replicas[i] = new  # from here on, new tasks go to the new process
        self.host.roster_changed(self.name)
        self.host.pump(self.name)
        await self._retire([old], spec, "replaced by a new process")

    async def _retire(self, old: list[Replica], spec: AgentSpec, reason: str,
                      within: float | None = None) -> None:
        """Processes out of dispatch finish their running tasks (each within its task's
        deadline and grace, or `within` seconds: a scale-down's stop_timeout), then
        stop."""
        for r in old:
            if r.machine.moves(Cause.RESUME):  # paused: it finishes its tasks only if it runs
                try:
                    r.resume(f"{reason}: resumed to finish its tasks and stop")
                except ResumeFailed as exc:  # stopped frozen: SIGKILL reaches it
                    r.note(f"{exc.message}: its tasks are not finished")
        busy = [r for r in old if r.tasks_running]
        for r in busy:
            r.note(f"{reason}: finishing {r.tasks_running} running task(s) first")
        if busy:
            with contextlib.suppress(TimeoutError):
                await self.host.wait_for(
                    lambda: not any(r.tasks_running for r in busy),
                    spec.task_timeout + spec.cancel_grace if within is None else within)
        await stop_all(old, reason)
        self.host.forget(old)

    async def switch(self, spec: AgentSpec) -> None:
        """Replace every replica at once with processes of `spec` (a release): they start
        beside the old ones and take the agent's tasks together once all stayed Ready for
        `spec.min_healthy_time`; one that exits or is late stops the switch. Failed
        replicas are started too (a new release is how one is fixed)."""
        old = list(self.replicas)
        new = [self.host.new_replica(spec, self.name, i) for i in range(len(old))]
        started = [n for n, o in zip(new, old, strict=True)
                   if o.machine.failed or not o.machine.stopped_by_hand]
        self.replacing.update((*old, *new))
        try:
            for r in started:
                r.start(by_hand=True)
            why = await self.host.healthy(started, spec, spec.healthy_deadline)
            if why is not None:
                await stop_all(new, "rollout aborted")
                self.host.forget(new)
                raise SupervisorError(jsonrpc.REFUSED, f"a new process of {self.name} did "
                                      f"not become ready: {why}; the running processes "
                                      "keep serving")
            spec.replicas = len(new)
            self.spec = spec
            self.replicas = new  # from here on, new tasks go to the new processes
            self.host.roster_changed(self.name)
            self.host.pump(self.name)
            await self._retire(old, spec, "replaced by a new release")
        finally:
            self.replacing -= {*old, *new}

    async def scale(self, n: int, *, idle_only: bool = False, reason: str = "scaled down",
                    before_stop: Callable[[list[Replica]], Awaitable[None]] | None = None
                    ) -> int:
        """To `n` replicas; returns the count reached. Those that go are the last ones,
        out of dispatch at once, each stopped once its running tasks end (within its
        stop_timeout). `idle_only` (the autoscaler): only replicas with no running task
        are taken, so fewer may go than asked. `before_stop`: awaited with the replicas
        going before they are asked to stop (hibernate's checkpoint)."""
        if n < 0:
            raise SupervisorError(jsonrpc.INVALID_PARAMS, "replicas must be >= 0")
        self.host.check_room({self.name: (self.spec.tenant, n)},
                             f"{plural(n, 'replica')} of {self.name}",
                             f"scaling {self.name} to {n}")
        current = len(self.replicas)
        if n > current:
            new = [self.host.new_replica(self.spec, self.name, i) for i in range(current, n)]
            self.replicas.extend(new)
            self.host.roster_changed(self.name)
            self._starter = start_all(new)
        elif n < current:
            if idle_only:
                keep = current
                while keep > n and not self.replicas[keep - 1].tasks_running:
                    keep -= 1
                n = keep
            gone = self.replicas[n:]
            del self.replicas[n:]  # out of dispatch: no new task goes to them
            if gone:
                self.host.roster_changed(self.name)
                if before_stop is not None:
                    await before_stop(gone)
                # a replica that goes drains: its running tasks end before it is asked
                # to stop (asked at once, its worker exits and they are lost); meanwhile
                # a stop of the supervisor stops it too, as a rollout's
                self.replacing.update(gone)
                self.draining = gone
                try:
                    await self._retire(gone, self.spec, reason, self.spec.stop_timeout)
                finally:
                    self.replacing.difference_update(gone)
                    self.draining = []
        self.spec.replicas = n
        return n
