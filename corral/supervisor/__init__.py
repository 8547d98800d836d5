"""The daemon's core: processes, lifecycle, policies."""

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
