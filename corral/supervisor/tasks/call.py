"""The `Call` (DESIGN section 28): one value for a tool call whatever door it came by —
who makes it (its replica, and so its agent and tenant; its task or none), what it names,
its arguments, its key and its door. A door reads its wire into a Call, the chain
(chain.py) runs it, and the door writes the outcome back in its wire.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from ...mcp.logrelay import LogRelay
    from ...mcp.relay import InputRelay
    from ..replica import Replica
    from .model import Task
    from .modelcall import ModelCall

# the doors a tool call enters by (docs/architecture.md, "One door per call")
WORKER = "worker"  # the worker link (`tools/call`, with its task_id or none)
MCP = "/mcp"  # the HTTP gateway, every server's tools as SERVER__TOOL
MCP_SERVER = "/mcp/NAME"  # the HTTP gateway, one server seen as itself
MCP_AGENTS = "/mcp/corral"  # the HTTP gateway, corral's agents as tools
MODELS = "the model gateway"  # a model call (its `model`: the request, modelcall.py)
DOORS = (WORKER, MCP, MCP_SERVER, MCP_AGENTS, MODELS)


class DoorWire(NamedTuple):
    """What a gateway door's client is told while a call of no task runs (a task's call
    is the task's: its progress is the task's, its server's questions asked of a person),
    and `made`: the door's own way to make a call the engine makes not (an agent called
    at /mcp/corral with no task: a task submitted; a model call: its upstream's answer)."""

    on_progress: Callable[[dict[str, Any]], None] | None = None
    relay: InputRelay | None = None
    on_log: LogRelay | None = None
    caller: str | None = None
    made: Callable[[Call], Any] | None = None


class Call(NamedTuple):
    """A tool call on its way through the chain: `task` None when it is of no task
    (the chain takes it for its replica's one running task, if it runs one); `key` its
    idempotency key (None: no other attempt makes it); `spawn`: a `task/spawn` judged as a
    call of `corral__AGENT` (spawn.py), `key` the spawn's (its ask's by it); `meta`: the
    caller's `_meta` (its trace context); `door`: which door it came by; `model`: a
    model call's request as the model gateway read it (`name` its model's)."""

    replica: Replica
    name: str
    arguments: dict[str, Any]
    task: Task | None
    key: str | None = None
    spawn: bool = False
    meta: dict[str, Any] | None = None
    door: str = WORKER
    wire: DoorWire | None = None
    model: ModelCall | None = None
