"""A restart on a schedule: `restart_cron = "0 3 * * *"` on an agent restarts it at each
minute those five cron fields match (UTC; the schedules' parser, supervisor/schedule.py),
as PM2's cron_restart does: a program that leaks, or reads its files only as it starts.

The restart is graceful, as `corral restart` is: an agent speaking corral's protocol is
replaced rolling (each new process serving before the old one finishes its tasks and
goes: no task is dropped, it never serves with fewer replicas); a plain program is
stopped (its stop signal, its stop_timeout) and started again, since a second copy of it
beside the first would fight it for its port. A replica stopped by hand stays stopped,
and a restart waits for the agent's turn (Fleet.changing): never during a deploy, a
rollback or a reload of it.

Which agents have a schedule follows the fleet: every lifecycle event of an agent looks
whether its schedule is the one kept, O(1), as filewatch.py's watches do.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

from ..jsonrpc import RpcError
from ..supervisor.agents import Agents
from ..supervisor.lifecycle import RESTARTED
from ..supervisor.process_replica import Transition
from ..supervisor.schedule import Cron
from ..supervisor.startstop import start_each, stop_all
from .fleet import Fleet

Report = Callable[..., None]
REASON = f"{RESTARTED} (restart_cron)"


class ScheduledRestarts:
    def __init__(self, agents: Agents, fleet: Fleet, report: Report) -> None:
        self.agents = agents
        self.fleet = fleet
        self.report = report
        self.kept: dict[str, tuple[str, asyncio.Task[None]]] = {}
        self.closed = False

    def on_transition(self, event: Transition) -> None:
        if event.kind == "agent":
            self.sync(event.name)

    def sync_all(self) -> None:
        for name in list(self.agents):
            self.sync(name)

    def sync(self, name: str) -> None:
        """Keep the schedule the agent's spec says now (or none)."""
        agent = self.agents.get(name)
        cron = agent.spec.restart_cron if agent is not None else None
        current = self.kept.get(name)
        if current is not None and current[0] == cron:
            return
        if current is not None:
            current[1].cancel()
            del self.kept[name]
        if cron is not None and not self.closed:
            self.kept[name] = (cron, asyncio.ensure_future(self._keep(name, Cron(cron))))

    async def _keep(self, name: str, cron: Cron) -> None:
        while True:
            due = cron.next_after(time.time())
            while (left := due - time.time()) > 0:  # the wall clock's minute, not the loop's
                await asyncio.sleep(left)
            try:
                await self._restart(name, cron.text)
            except RpcError as exc:  # refused (a rollout whose new process failed): kept
                self.report(f"{name}: restart_cron {cron.text}: {exc.message}", priority=4)

    async def _restart(self, name: str, when: str) -> None:
        async with self.fleet.changing([name]):
            agent = self.agents.get(name)
            if agent is None:
                return
            running = [r for r in agent.replicas if not r.stopped_by_hand]
            if not running:
                return
            self.report(f"{name}: restarting on its schedule (restart_cron {when})")
            if agent.spec.protocol == "corral":
                await agent.roll(start_stopped=False)
                return
            await stop_all(running, REASON)
            await start_each(running)

    async def close(self) -> None:
        self.closed = True
        tasks = [t for _, t in self.kept.values()]
        self.kept.clear()
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
