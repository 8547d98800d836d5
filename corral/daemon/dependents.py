"""What follows an agent's failure for good (its restarts given up): the agents that
require it (`requires`) are stopped, and when it is `fatal` the daemon stops, exit status
1, as a container's supervisor should when its main program is gone (supervisord's users
plant an event listener that kills it)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..supervisor.lifecycle import RESTARTED, State
from ..supervisor.process_replica import Transition
from ..timeouts import kept

if TYPE_CHECKING:
    from ..supervisor.agents import Agents
    from ..supervisor.core import Agent


class Dependents:
    def __init__(self, agents: Agents, report: Callable[[str], None],
                 fail_daemon: Callable[[str], None]) -> None:
        self.agents = agents
        self.report = report  # a line of the daemon's log
        self.fail_daemon = fail_daemon  # stops the daemon, saying why (exit status 1)
        self.stopping: set[asyncio.Task[None]] = set()
        self.closed = False

    def on_transition(self, event: Transition) -> None:
        if not self.closed and event.kind == "agent" and event.reason != RESTARTED:
            self._stopped(event.name)
        if (self.closed or event.kind != "agent" or event.state is not State.FAILED
                or not self.agents.failed([event.name])):
            return
        failed = self.agents.get(event.name)
        if failed is not None and failed.spec.fatal:
            self.fail_daemon(f"agent {event.name} failed for good and is fatal = true: "
                             f"stopping the daemon ({event.reason})")
        for agent in list(self.agents.values()):
            if event.name in agent.spec.requires:
                if agent.waiting is not None:  # never started: no transition says it
                    self.report(f"agent {agent.name} is not started: it requires "
                                f"{event.name}, which failed (`corral start {agent.name}` "
                                "once it is up)")
                self._stop(agent, f"requires {event.name}, which failed")

    def _stopped(self, name: str) -> None:
        """An agent stopped by hand stops those that require it, as systemd's Requires=
        does (they stay stopped when it is started again: `corral start` them)."""
        if not self.agents.stopped_by_hand([name]):
            return
        for agent in list(self.agents.values()):
            if name in agent.spec.requires and not self.agents.stopped_by_hand([agent.name]):
                self.report(f"agent {agent.name} is stopped: it requires {name}, which "
                            f"was stopped (`corral start {name} {agent.name}` starts both)")
                self._stop(agent, f"requires {name}, which was stopped")

    def _stop(self, agent: Agent, why: str) -> None:
        kept(self.stopping, asyncio.ensure_future(agent.stop(why)))

    async def close(self) -> None:
        self.closed = True
        for t in list(self.stopping):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
