"""The daemon's core: processes, lifecycle, policies.

Its names are its modules', each module imported when one of its names is first asked for
(`from corral.supervisor import State`): a process that needs one part of the engine (the
config's schema for `corral import` and `check-config`, the span records for the trace
exporter) imports that part, not the whole engine (~40 ms of CPU at each such start)."""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .config import AgentSpec, Config, ConfigError, Limits, McpServerSpec
    from .configload import load_config
    from .containment import ProcessEnded, ProcessStarted
    from .core import Agent, NoSuchAgent, Supervisor, SupervisorError
    from .lifecycle import Cause, State
    from .process_replica import (
        LogBatch,
        ProcessReplica,
        ReplicaExit,
        ReplicaHost,
        ReplicaStatus,
        Transition,
    )
    from .replica import AgentHost, Replica
    from .stats import Stats
    from .stream import Checkpoint, ListChanged, Stall, Stream, Subscription, Tick
    from .tasks import (
        Task,
        TaskInfo,
        TaskJournal,
        TaskRecord,
        TaskResult,
        TaskStatus,
        TaskSummary,
    )

# each name's module
MODULES: dict[str, tuple[str, ...]] = {
    "config": ("AgentSpec", "Config", "ConfigError", "Limits", "McpServerSpec"),
    "configload": ("load_config",),
    "containment": ("ProcessEnded", "ProcessStarted"),
    "core": ("Agent", "NoSuchAgent", "Supervisor", "SupervisorError"),
    "lifecycle": ("Cause", "State"),
    "process_replica": ("LogBatch", "ProcessReplica", "ReplicaExit", "ReplicaHost",
                        "ReplicaStatus", "Transition"),
    "replica": ("AgentHost", "Replica"),
    "stats": ("Stats",),
    "stream": ("Checkpoint", "ListChanged", "Stall", "Stream", "Subscription", "Tick"),
    "tasks": ("Task", "TaskInfo", "TaskJournal", "TaskRecord", "TaskResult", "TaskStatus",
              "TaskSummary"),
}
_MODULE_OF = {name: module for module, names in MODULES.items() for name in names}

# (a list mypy reads: the names it may be asked for)
__all__ = [
    "Agent",
    "AgentHost",
    "AgentSpec",
    "Cause",
    "Checkpoint",
    "Config",
    "ConfigError",
    "Limits",
    "ListChanged",
    "LogBatch",
    "McpServerSpec",
    "NoSuchAgent",
    "ProcessEnded",
    "ProcessReplica",
    "ProcessStarted",
    "Replica",
    "ReplicaExit",
    "ReplicaHost",
    "ReplicaStatus",
    "Stall",
    "State",
    "Stats",
    "Stream",
    "Subscription",
    "Supervisor",
    "SupervisorError",
    "Task",
    "TaskInfo",
    "TaskJournal",
    "TaskRecord",
    "TaskResult",
    "TaskStatus",
    "TaskSummary",
    "Tick",
    "Transition",
    "load_config",
]


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
