"""A restart on a schedule: `restart_cron = "0 3 * * *"` on an agent restarts it at each
minute those five cron fields match (UTC), as PM2's cron_restart does.

An agent speaking corral's protocol is replaced rolling; a plain program is stopped and
started again (a second copy beside it would fight it for its port). The minutes are the
daemon's WaitClock's (`manual_clock`: a test moves them).
"""

from __future__ import annotations

import asyncio
from typing import Any

from ..jsonrpc import RpcError
from ..supervisor.agents import Agents
from ..supervisor.lifecycle import RESTARTED
from ..supervisor.schedule import Cron
from ..supervisor.startstop import start_each, stop_all
from ..supervisor.tasks.waitclock import WaitClock
from .agentloops import AgentLoops
from .fleet import Fleet, Report

REASON = f"{RESTARTED} (restart_cron)"


class ScheduledRestarts(AgentLoops[str]):
    def __init__(self, agents: Agents, fleet: Fleet, report: Report,
                 clock: WaitClock) -> None:
        super().__init__(agents)
        self.fleet = fleet
        self.report = report
        self.clock = clock

    def key_of(self, spec: Any) -> str | None:
        return spec.restart_cron  # type: ignore[no-any-return]

    async def run_loop(self, name: str, key: str) -> None:
        cron = Cron(key)
        while True:
            due = cron.next_after(self.clock.time())
            while self.clock.time() < due:  # the clock's minute, not the loop's
                await self._until(due)
            try:
                await self._restart(name, cron.text)
            except RpcError as exc:  # refused (a rollout whose new process failed): kept
                self.report(f"{name}: restart_cron {cron.text}: {exc.message}", priority=4)

    async def _until(self, due: float) -> None:
        woken: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def wake() -> None:
            if not woken.done():
                woken.set_result(None)

        timer = self.clock.call_later(due - self.clock.time(), wake)
        try:
            await woken
        finally:
            timer.cancel()

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
