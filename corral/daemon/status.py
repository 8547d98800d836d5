"""What the daemon says of itself: the status line (sd_notify STATUS=, `corral status`),
READY=1 once every autostart agent is up, WATCHDOG=1 at each heartbeat, and the notices
of what is wrong with it or going on in it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..supervisor.lifecycle import UNSETTLED, State
from ..supervisor.parts import Parts
from ..supervisor.process_replica import Transition
from ..supervisor.stream import Tick
from ..text import plural
from .daemonhandlers import fleet_line
from .drain import Drain
from .extras import Extras
from .logs import LogHub
from .notify import Notifier

if TYPE_CHECKING:
    from ..cluster.node import ClusterNode


class Status:
    def __init__(self, notifier: Notifier, parts: Parts, extras: Extras, hub: LogHub,
                 cluster: ClusterNode | None) -> None:
        self.notifier = notifier
        self.agents, self.tools = parts.agents, parts.tools
        self.extras = extras
        self.hub = hub
        self.cluster = cluster
        self.drain: Drain | None = None  # a stop's drain, while it runs (the arbiter's)
        self.ready_sent = False
        self._faults: tuple[str | None, str | None] = (None, None)  # told by STATUS=
        parts.stream.subscribe(self.on_tick, Tick)
        parts.stream.subscribe(self.on_transition, Transition)
        notifier.track_status(self.line)

    def on_tick(self, _: Tick) -> None:
        """Every heartbeat: WATCHDOG=1, and the STATUS line again when what no lifecycle
        event tells has changed (a drain's countdown, the cluster's Redis)."""
        self.notifier.watchdog()
        faults = (self.draining(), self.redis_error())
        if faults != self._faults:
            self._faults = faults
            self.notifier.status_changed()

    def redis_error(self) -> str | None:
        """Why the cluster's Redis does not answer (the node's loops try again every
        beat), or None."""
        return self.cluster.membership.error if self.cluster is not None else None

    def on_transition(self, event: Transition) -> None:
        """O(1) per lifecycle event: the STATUS line is marked stale (sent at most every
        100 ms), and READY=1 goes out once every autostart agent is up."""
        self.notifier.status_changed()
        if not self.ready_sent:
            self.check_ready()

    def check_ready(self) -> None:
        """READY=1 once every autostart agent has answered initialize (or given up)."""
        if any(self.agents.census[s] for s in UNSETTLED):
            return
        # eager tool servers are few; looked at only once the agents are settled
        for entry in self.tools.servers.values():
            if entry.spec.start == "eager" and not all(i.machine.settled for i in entry.all()):
                return
        self.ready_sent = True
        self.notifier.ready(self.line())
        self.hub.daemon(f"ready: {self.line()}")

    def line(self) -> str:
        """From the supervisor's census: O(1), whatever the size of the fleet; a drain
        under way first, an extra not serving last."""
        line = self.fleet()
        if self.drain is not None:
            line = f"{self.drain.progress()}; {line}"
        if self.extras.failing():
            line += "; " + "; ".join(f"{e.title} not serving ({e.error})"
                                     for e in self.extras.extras if not e.serving)
        redis = self.redis_error()
        if redis is not None:
            line += f"; cluster Redis not answering ({redis})"
        return line

    def notices(self) -> list[str]:
        """What is wrong with the daemon itself, or going on in it: for `corral status`."""
        out = [self.drain.progress()] if self.drain is not None else []
        out += self.extras.problems()
        redis = self.redis_error()
        if redis is not None:
            out.append(f"cluster: Redis does not answer ({redis}); tried again every "
                       "beat, the local agents run on")
        return out

    def draining(self) -> str | None:
        return self.drain.progress() if self.drain is not None else None

    def fleet(self) -> str:
        agents, tools = self.agents, self.tools
        line = fleet_line(len(agents), agents.census)
        failed = agents.census[State.FAILED]
        if tools.servers:
            # tool-server instances are few next to agents, and this line is computed at
            # most every 100 ms (notify.py), so they are counted here
            mcp = list(tools.instances())
            serving = sum(1 for r in mcp if r.machine.takes_work)
            failed += sum(1 for r in mcp if r.machine.failed)
            line += (f", {plural(len(tools.servers), 'MCP server')} ({serving}/"
                     f"{plural(len(mcp), 'instance')} serving)")
        return f"{line}, {failed} failed"
