"""The daemon's core: processes, lifecycle, policies.

Its names are its modules', each module imported when one of its names is first asked for
(`from corral.supervisor import State`): a process that needs one part of the engine (the
config's schema for `corral import` and `check-config`, the span records for the trace
exporter) imports that part, not the whole engine (~40 ms of CPU at each such start)."""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .config import AgentSpec as AgentSpec
    from .config import Config as Config
    from .config import ConfigError as ConfigError
    from .config import Limits as Limits
    from .config import McpServerSpec as McpServerSpec
    from .configload import load_config as load_config
    from .containment import ProcessEnded as ProcessEnded
    from .containment import ProcessStarted as ProcessStarted
    from .core import Agent as Agent
    from .core import NoSuchAgent as NoSuchAgent
    from .core import Supervisor as Supervisor
    from .core import SupervisorError as SupervisorError
    from .lifecycle import Cause as Cause
    from .lifecycle import State as State
    from .process_replica import LogBatch as LogBatch
    from .process_replica import ProcessReplica as ProcessReplica
    from .process_replica import ReplicaExit as ReplicaExit
    from .process_replica import ReplicaHost as ReplicaHost
    from .process_replica import ReplicaStatus as ReplicaStatus
    from .process_replica import Transition as Transition
    from .replica import AgentHost as AgentHost
    from .replica import Replica as Replica
    from .stats import Stats as Stats
    from .stream import Checkpoint as Checkpoint
    from .stream import ListChanged as ListChanged
    from .stream import Stall as Stall
    from .stream import Stream as Stream
    from .stream import Subscription as Subscription
    from .stream import Tick as Tick

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
}
_MODULE_OF = {name: module for module, names in MODULES.items() for name in names}
# a star import's names (without it, `import *` gives none of the lazy ones)
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
