"""What the engine tells, written where the daemon's logs are: a worker's output, its
lifecycle transitions, health checks, autoscaling decisions and the engine's own
warnings, into the log hub (`corral logs`) and, when it is on, the systemd journal."""

from __future__ import annotations

import asyncio

from ..jsonrpc import LineBlock
from ..supervisor.elastic import Scaling
from ..supervisor.health import AgentReadiness, HealthChange
from ..supervisor.process_replica import LogBatch, Transition
from ..supervisor.stream import Stall, Stream
from ..supervisor.tenantcgroups import TenantOomKill
from .journald import JournalSender
from .logs import LogHub


class EngineLog:
    def __init__(self, hub: LogHub, sender: JournalSender | None) -> None:
        self.hub = hub
        self.sender = sender  # the systemd journal's, or None

    def subscribe(self, stream: Stream) -> None:
        """Every kind but the lifecycle's transitions, which the pump writes (`pump`:
        a queue, so that a burst of them is written a turn later, never dropped)."""
        stream.subscribe(self.on_worker_log, LogBatch)
        stream.subscribe(self.on_stall, Stall)
        stream.subscribe(self.on_tenant_oom, TenantOomKill)
        stream.subscribe(self.on_health, HealthChange)
        stream.subscribe(self.on_agent_readiness, AgentReadiness)
        stream.subscribe(self.on_scaling, Scaling)

    async def pump(self, q: asyncio.Queue[Transition]) -> None:
        while True:
            e = await q.get()
            text = f"{e.previous} -> {e.state}: {e.reason}"
            self.hub.emit(e.name, e.replica, e.pid or 0, "event", LineBlock.one(text),
                          when=e.time)
            if self.sender is not None:
                self.sender.lines(e.kind, e.name, e.replica, e.pid or 0, "event",
                                  [text.encode()])

    def on_scaling(self, s: Scaling) -> None:
        text = f"autoscale {s.direction} {s.previous} -> {s.replicas}: {s.reason}"
        self.hub.emit(s.agent, 0, 0, "event", LineBlock.one(text), when=s.time)

    def on_health(self, e: HealthChange) -> None:
        self.hub.emit(e.agent, e.replica, e.pid or 0, "event", LineBlock.one(e.text),
                      when=e.time)
        if self.sender is not None:
            self.sender.lines("agent", e.agent, e.replica, e.pid or 0, "event",
                              [e.text.encode()])

    def on_agent_readiness(self, e: AgentReadiness) -> None:
        self.hub.emit(e.agent, 0, 0, "event", LineBlock.one(e.text), when=e.time)
        self.hub.daemon(e.text, priority=6 if e.ready else 4)

    def on_tenant_oom(self, e: TenantOomKill) -> None:
        self.hub.daemon(f"tenant {e.tenant}: the kernel OOM-killed "
                        f"{e.kills} process{'es' if e.kills != 1 else ''} in its cgroup "
                        f"(max_memory_mb; {e.total} since start)", priority=4)

    def on_stall(self, e: Stall) -> None:
        self.hub.daemon(f"event loop stalled for {e.seconds:.2f} s (not counted against any "
                        f"worker's heartbeat)", priority=4)

    def on_worker_log(self, e: LogBatch) -> None:
        replica, stream, lines = e
        self.hub.emit(replica.name, replica.index, replica.pid or 0, stream, lines)
        if self.sender is not None:
            self.sender.lines(replica.kind, replica.name, replica.index, replica.pid or 0,
                              stream, lines)
