"""The `Call` (DESIGN section 28): one value for a tool call (or a skill read) whatever
door it came by — who makes it (its replica, and so its agent and tenant; its task or
none; or a gateway client that is no agent's, its `GatewayClient`), what it names, its
arguments, its key and its door. A door reads its wire into a Call, the chain
(chain.py) runs it, and the door writes the outcome back in its wire.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from ...mcp.logrelay import LogRelay
    from ...mcp.relay import InputRelay
    from ..config import TenantSpec
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


class GatewayClient(NamedTuple):
    """A gateway client that is no agent's replica — the operator at the local socket,
    `corral mcp serve --agent`, a token's holder, an anonymous caller: who it is (`name`,
    its `tenant`), what it may call (`allow`, None: every tool; `sees`: whether its tenant
    sees a SERVER__TOOL's server, judged at each call), the owner the pool's per-agent
    servers know its calls by, and its process (uid, pid) where its socket says; `spec`:
    its tenant's [tenants.NAME] as the call is read (its rules, default_deny and
    `approve`), None for none; `agent`: the agent whose rules judge it as theirs
    (`--agent NAME`'s), "" for every other client, which a rule naming agents does not
    match (decision 1641)."""

    name: str
    owner: str | None
    tenant: str | None
    allow: list[str] | None
    sees: Callable[[str], bool]
    who: tuple[int, int] = (-1, -1)
    spec: TenantSpec | None = None
    agent: str = ""


class Call(NamedTuple):
    """A tool call on its way through the chain: its caller an agent's `replica`, or a
    gateway `client` that is no agent's (`replica` None: of no task, ever); `task` None
    when it is of no task (the chain takes it for its replica's one running task, if it
    runs one); `key` its idempotency key (None: no other attempt makes it); `spawn`: a
    `task/spawn` judged as a call of `corral__AGENT` (spawn.py), `key` the spawn's (its
    ask's by it); `meta`: the caller's `_meta` (its trace context); `door`: which door it
    came by; `model`: a model call's request as the model gateway read it (`name` its
    model's); `skill`: a skill read's method (`skills/get`, `resources/read` of a skill's
    file, `resources/directory/read`), `name` the skill's SERVER__SKILL (decision 1691)."""

    replica: Replica | None
    name: str
    arguments: dict[str, Any]
    task: Task | None
    key: str | None = None
    spawn: bool = False
    meta: dict[str, Any] | None = None
    door: str = WORKER
    wire: DoorWire | None = None
    model: ModelCall | None = None
    client: GatewayClient | None = None
    skill: str | None = None

    @property
    def agent(self) -> Replica:
        """The agent's replica that makes it: a task's call's, a model call's, a call of
        no task at the worker link (a client makes none of them: its call never reaches
        what reads this)."""
        assert self.replica is not None, f"{self.caller}: a client's call has no replica"
        return self.replica

    @property
    def caller(self) -> str:
        """Who makes it, as its audit row, its span and a refusal name it: its replica's
        label (NAME#N), or the client's name."""
        if self.replica is not None:
            label: str = self.replica.label
            return label
        assert self.client is not None  # (one or the other: the door's read says)
        return self.client.name

    @property
    def tenant(self) -> str | None:
        """The caller's tenant (None: the default's, or the operator's)."""
        if self.replica is not None:
            tenant: str | None = getattr(self.replica.spec, "tenant", None)
            return tenant
        assert self.client is not None
        return self.client.tenant
