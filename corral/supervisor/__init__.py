"""The daemon's core: processes, lifecycle, policies."""

from .config import AgentSpec, Config, ConfigError, Limits, McpServerSpec, load_config
from .core import Agent, Stats, Supervisor, SupervisorError
from .lifecycle import State
from .replica import Event, Replica, ReplicaStatus
from .tasks import (
    Task,
    TaskInfo,
    TaskJournal,
    TaskRecord,
    TaskResult,
    TaskStatus,
    TaskSummary,
)

__all__ = [
    "Agent",
    "AgentSpec",
    "Config",
    "ConfigError",
    "Event",
    "Limits",
    "McpServerSpec",
    "Replica",
    "ReplicaStatus",
    "State",
    "Stats",
    "Supervisor",
    "SupervisorError",
    "Task",
    "TaskInfo",
    "TaskJournal",
    "TaskRecord",
    "TaskResult",
    "TaskStatus",
    "TaskSummary",
    "load_config",
]
