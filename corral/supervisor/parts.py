"""The engine's parts, as the services around it are given them: each service takes the
parts it works on, never the Supervisor that composed them."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec

if TYPE_CHECKING:
    from .agents import Agents
    from .containment import Containment
    from .elastic import Elastic
    from .events import EventBus
    from .health import HealthBoard
    from .quotas import Tenancy
    from .refusals import BoundaryRefusals
    from .stats import HeartbeatWork, Stats
    from .stream import Stream
    from .tasks import TaskManager
    from .tools import Tools
    from .tuning import Tuning
    from .zygote import Zygotes


class Parts(msgspec.Struct, frozen=True, kw_only=True):
    agents: Agents  # add, remove, scale, pause, status; the agents by name
    tools: Tools  # the MCP tool-server pool, its checks and each agent's view of it
    quotas: Tenancy  # the tenants and their quotas
    elastic: Elastic  # autoscaling, sleep and wake
    bus: EventBus  # the event bus (`corral events`, workers' events/*)
    tasks: TaskManager  # the engine's tasks: queue, dispatch, outcomes, budgets
    stream: Stream  # every event, to subscribers that cannot break it
    containment: Containment
    health: HealthBoard
    tuning: Tuning  # what a reload changes: the heartbeat, the sandbox, the SDK
    # agent state checkpoints by (agent, replica): (wall time, state)
    checkpoints: dict[tuple[str, int], tuple[float, Any]]
    zygotes: Zygotes
    heartbeat: HeartbeatWork  # what the heartbeat loop has done
    runtime_stats: Callable[[], Stats]
    refusals: BoundaryRefusals  # the boundary's refusals, recorded (events, audit, /metrics)
