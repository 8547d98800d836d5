"""Schedules fired (`[schedules.NAME]`, docs/workflows.md): one loop timer per schedule, at
its next fire time. Each one's last fire time is written to its ledger (the state database,
or with [cluster] Redis behind a fenced lease: corral/cluster/schedules.py) *before* the
task is submitted: a fire happens at most once, whatever dies when.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any, NamedTuple, Protocol

import msgspec

from .. import jsonrpc
from .. import methods as m
from ..jsonrpc import RpcError
from ..supervisor.config import Config
from ..supervisor.schedule import Schedule, ScheduleSpec, compile_schedule
from ..supervisor.schedule import ScheduleRow as Row
from ..supervisor.stream import Stream
from ..text import plural
from ..timeouts import cancel_all, kept
from .caller import Discard
from .sqlwrites import statement
from .store import StateStore


class ScheduleFired(NamedTuple):
    """A schedule fired at `at` (its fire time), starting `started` (a task or run id;
    None when the start was refused: `error`)."""

    name: str
    at: float
    started: str | None
    error: str | None = None


class Ledger(Protocol):
    """Where schedules' rows are kept, and who may fire them."""

    def watch(self, names: list[str]) -> None:
        """The schedules there are now (a cluster's ledger keeps their leases)."""

    async def ready(self) -> None:
        """Return once this node may fire (a cluster node: once it is a member)."""

    async def close(self) -> None: ...

    async def load(self, name: str) -> Row | None: ...

    async def save(self, name: str, row: Row, *, fire: bool = False,
                   new: bool = False) -> bool:
        """Keep the row: a schedule's first (`new`: kept only where none is), a fire (a
        fire time later than the row's), else a change (a pause, a skip, what a fire
        started). False when this node may not: another node holds the schedule's lease,
        or has fired that time."""

    def holds(self, name: str) -> bool: ...


class LocalLedger:
    """The rows in this daemon's state database; every schedule is this daemon's to fire."""

    def __init__(self, store: StateStore) -> None:
        self.store = store

    def watch(self, names: list[str]) -> None:
        pass

    async def ready(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def load(self, name: str) -> Row | None:
        got = self.store.db.execute("SELECT last_fire, fires, last_started, paused FROM "
                                    "schedules WHERE name = ?", (name,)).fetchone()
        if got is None:
            return None
        return Row(got[0], got[1], got[2], None if got[3] is None else bool(got[3]))

    async def save(self, name: str, row: Row, *, fire: bool = False,
                   new: bool = False) -> bool:
        await self.store.commit([statement(
            "INSERT OR REPLACE INTO schedules (name, last_fire, fires, last_started, paused) "
            "VALUES (?, ?, ?, ?, ?)", (name, row.last_fire, row.fires, row.last_started,
                                      None if row.paused is None else int(row.paused)))])
        return True

    def holds(self, name: str) -> bool:
        return True


Starter = Callable[[Schedule], Awaitable[str]]


class _Live(msgspec.Struct):
    sched: Schedule
    row: Row
    timer: asyncio.TimerHandle | None = None
    next_fire: float | None = None


class ScheduleService:
    def __init__(self, ledger: Ledger, start: Starter, stream: Stream,
                 report: Callable[[str], None],
                 agents_of: Callable[[ScheduleSpec], list[str]],
                 agents: Mapping[str, Any]) -> None:
        self.ledger = ledger
        self.agents_of = agents_of
        self.agents = agents  # the supervisor's, as they are now
        # each schedule's agents' tenants, as the file gives them
        self.owners: dict[str, dict[str, str]] = {}
        self._start = start
        self.stream = stream
        self.report = report
        self.specs: dict[str, ScheduleSpec] = {}
        self.live: dict[str, _Live] = {}
        self._firing: set[asyncio.Task[None]] = set()
        self._syncing: asyncio.Task[None] | None = None  # since `start`
        self._lock = asyncio.Lock()  # one change of the schedules at a time

    def configure(self, cfg: Config) -> None:
        """The config's schedules (a reload replaces them: a schedule kept keeps its
        last fire time, a new one starts from now)."""
        self.specs = dict(cfg.schedules)
        self.owners = {name: {a: cfg.agents[a].tenant for a in self.agents_of(spec)
                              if a in cfg.agents}
                       for name, spec in self.specs.items()}
        if self._syncing is not None:
            self._syncing = self._spawn(self._sync())

    def start(self) -> None:
        """Once the tasks are recovered: each schedule's missed fires settled by its
        policy, then its timer set (in the background: a cluster's task front waits for
        the node's start)."""
        self._syncing = self._spawn(self._sync())

    async def settled(self) -> None:
        if self._syncing is not None:
            await asyncio.shield(self._syncing)

    async def _sync(self) -> None:
        try:
            await self.ledger.ready()
            async with self._lock:
                await self._synced()
        except Exception as exc:  # the ledger failed: said; the next reload tries again
            self.report(f"schedules: not started: {exc}")

    async def _synced(self) -> None:
        self.ledger.watch(sorted(self.specs))
        for name in [n for n in self.live if n not in self.specs]:
            self._disarm(self.live.pop(name))
        for name, spec in self.specs.items():
            old = self.live.get(name)
            if old is not None and old.sched.spec == spec:
                continue
            if old is not None:
                self._disarm(old)
            await self._begin(compile_schedule(name, spec))

    async def _begin(self, sched: Schedule) -> None:
        now = time.time()
        row = await self.ledger.load(sched.name)
        if row is None:
            # a new schedule: its first fire is its clock's next (a node that lost the
            # race to make the row reads the winner's)
            row = Row(now)
            if not await self.ledger.save(sched.name, row, new=True):
                row = await self.ledger.load(sched.name) or row
        live = self.live[sched.name] = _Live(sched, row)
        if not self._paused(live):
            await self._missed(live, now)
        self._arm(live)

    async def _missed(self, live: _Live, now: float) -> None:
        spec = live.sched.spec
        times, count = live.sched.due(live.row.last_fire, now, spec.max_catch_up)
        if not times:
            return
        fire = {"skip": [], "once": times[-1:], "catch_up": times}[spec.missed]
        self.report(f"schedule {live.sched.name}: {plural(count, 'fire')} missed while "
                    f"the daemon was down ({spec.missed}: {len(fire)} run now)")
        if not fire:
            live.row.last_fire = times[-1]
            await self.ledger.save(live.sched.name, live.row)
        for t in fire:
            await self._fire(live, t)

    def _paused(self, live: _Live) -> bool:
        return live.row.paused if live.row.paused is not None else live.sched.spec.paused

    # -- timers ---------------------------------------------------------------------------
    def _arm(self, live: _Live) -> None:
        self._disarm(live)
        if self._paused(live):
            return
        at = live.sched.clock.next_after(live.row.last_fire)
        live.next_fire = at
        loop = asyncio.get_running_loop()
        live.timer = loop.call_at(loop.time() + max(0.0, at - time.time()), self._due,
                                  live.sched.name, context=contextvars.Context())

    @staticmethod
    def _disarm(live: _Live) -> None:
        if live.timer is not None:
            live.timer.cancel()
            live.timer = None
        live.next_fire = None

    def _due(self, name: str) -> None:
        live = self.live.get(name)
        if live is not None:
            live.timer = None
            self._spawn(self._tick(live))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        # in a context of its own: a fire is the config's, never the caller's who paused
        # or reloaded (a limited token's reach, tasks/spawn.py's REACH)
        return kept(self._firing,
                    asyncio.get_running_loop().create_task(work, context=contextvars.Context()))

    async def _tick(self, live: _Live) -> None:
        """The latest fire time due (one, however late the loop woke), then the next
        timer."""
        try:
            times, _ = live.sched.due(live.row.last_fire, time.time(), 1)
            if times and self.live.get(live.sched.name) is live:
                await self._fire(live, times[-1])
        except Exception as exc:  # the ledger failed: said, and the next fire tried
            self.report(f"schedule {live.sched.name}: not fired: {exc}")
        if self.live.get(live.sched.name) is live:
            self._arm(live)

    async def _fire(self, live: _Live, at: float) -> None:
        name = live.sched.name
        row = Row(at, live.row.fires + 1, None, live.row.paused)
        fired = await self.ledger.save(name, row, fire=True)
        # the row as the ledger has it (on a cluster, another node may have fired since)
        live.row = await self.ledger.load(name) or row
        if not fired:  # another node's to fire
            return
        try:
            self._same_agents(name)
            started: str | None = await self._start(live.sched)
            error = None
        except RpcError as exc:
            started, error = None, exc.message
            self.report(f"schedule {name}: {live.sched.target} refused the fire: {error}")
        if started is not None:
            live.row.last_started = started
            with contextlib.suppress(Exception):  # what it started is in the log too
                await self.ledger.save(name, live.row)
        if self.stream.wants(ScheduleFired):
            self.stream.emit(ScheduleFired(name, at, started, error))

    def _same_agents(self, name: str) -> None:
        """Refuses a fire into an agent of another tenant than the file gave it: its
        agent was removed and the name taken by another."""
        for agent, tenant in self.owners.get(name, {}).items():
            now = self.agents.get(agent)
            if now is not None and now.spec.tenant != tenant:
                raise RpcError(jsonrpc.NOT_FOUND, f"no such agent: {agent} (tenant "
                                                  f"{tenant}'s was removed; the name is "
                                                  f"another tenant's now)")

    def tenant(self, name: str) -> str | None:
        """Whose a schedule is: its agents' one tenant, None (the operator's) when they
        are of several or none is known."""
        tenants = set(self.owners.get(name, {}).values())
        return tenants.pop() if len(tenants) == 1 else None

    # -- the operator's -------------------------------------------------------------------
    def get(self, name: str) -> _Live:
        live = self.live.get(name)
        if live is None:
            raise jsonrpc.not_found("schedule", name)
        return live

    async def pause(self, name: str, paused: bool) -> _Live:
        live = self.get(name)
        if self._paused(live) == paused:
            raise RpcError(jsonrpc.CONFLICT, f"schedule {name} is already "
                                             f"{'paused' if paused else 'running'}")
        row = Row(live.row.last_fire if paused else max(live.row.last_fire, time.time()),
                  live.row.fires, live.row.last_started, paused)
        if not await self.ledger.save(name, row):
            raise RpcError(jsonrpc.CONFLICT, f"schedule {name} is fired by another node "
                                             "now: pause it there")
        live.row = row
        self._arm(live)
        return live

    def entries(self) -> list[m.ScheduleEntry]:
        return [self.entry(live) for _, live in sorted(self.live.items())]

    def entry(self, live: _Live) -> m.ScheduleEntry:
        spec = live.sched.spec
        here = self.ledger.holds(live.sched.name)
        return m.ScheduleEntry(
            name=live.sched.name, agent=spec.agent, workflow=spec.workflow,
            every=spec.every, cron=spec.cron, missed=spec.missed, paused=self._paused(live),
            last_fire=live.row.last_fire, next_fire=live.next_fire if here else None,
            fires=live.row.fires, last_started=live.row.last_started,
            agents=self.agents_of(spec), description=spec.description,
            tenant=self.tenant(live.sched.name))

    async def close(self) -> None:
        for live in self.live.values():
            self._disarm(live)
        with contextlib.suppress(Exception):
            await cancel_all(self._firing)
        await self.ledger.close()


def starter(tasks: Any, workflows: Any) -> Starter:
    """A fire's start: a task of the agent through the task front, or a workflow's run."""

    async def start(sched: Schedule) -> str:
        spec = sched.spec
        if spec.agent is not None:
            accepted = await tasks.submit(m.TasksSubmit(
                agent=spec.agent, input=msgspec.Raw(msgspec.json.encode(spec.input)),
                timeout=spec.timeout), Discard(), None)
            return str(accepted.task_id)
        return str((await workflows.start(spec.workflow, spec.input)).run_id)

    return start


def schedule_agents(workflows: Any) -> Callable[[ScheduleSpec], list[str]]:
    """The agents whose tasks a schedule starts: its agent, or its workflow's."""

    def agents_of(spec: ScheduleSpec) -> list[str]:
        if spec.agent is not None:
            return [spec.agent]
        wf = workflows.definitions.get(spec.workflow)
        return list(wf.agents) if wf is not None else []

    return agents_of
