"""What the command layer asks of the cluster, and what a daemon with no [cluster] answers
instead: handlers never ask whether this daemon is a node. `ClusterNode` is the one
implementation on a node; `NotANode` is the daemon's without a [cluster] table."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

from .. import jsonrpc
from ..jsonrpc import RpcError
from ..supervisor.tasks.inbox import AskRecords

if TYPE_CHECKING:
    from ..askviews import Ask, AskEnd
    from ..cluster.membership import NodeView
    from ..cluster.node import ClusterNode
    from ..results import SessionInfo, SessionView

NOT_A_NODE = "this daemon is not a node of a cluster (its config has no [cluster] table)"


class ClusterInbox(AskRecords, Protocol):
    """The asks of a person the cluster's tasks made, read and decided on any node."""

    async def pending(self, tenant: str | None = None) -> list[Ask]:
        """Every pending ask of the cluster's tasks (of one tenant's), oldest first."""


class ClusterPeer(Protocol):
    redis_warnings: list[str]

    @property
    def asks(self) -> ClusterInbox: ...

    @property
    def slots(self) -> Mapping[str, list[str | None]]:
        """The cluster agents' slots, by agent: `node/incarnation`, or "" unplaced."""

    @property
    def here(self) -> Mapping[str, list[int]]:
        """The slots this node runs, by cluster agent, in the order of its replicas."""

    def status(self) -> dict[str, Any] | None:
        """This node's view of itself (stats), None: not a node."""

    def views(self) -> list[NodeView]:
        """The nodes as this one last saw them."""

    def joined(self, why: str = "") -> ClusterNode:
        """This daemon's node, for what only a node does; refused (`why` said) if none."""

    async def node_for(self, name: str) -> ClusterNode | None:
        """This node, when `name` is the cluster's agent (not one of this node's own)."""

    async def remove_agents(self, names: list[str]) -> list[str]:
        """The cluster agents among `names`, removed."""

    async def sessions(self, agent: str | None) -> list[SessionView]:
        """The cluster's live sessions (of `agent`), every tenant's; none off a cluster."""

    async def session(self, tenant: str | None, agent: str, name: str
                      ) -> SessionInfo | None:
        """The cluster's session `name` of `agent`, `tenant`'s (None: none, or no cluster)."""

    async def end_session(self, tenant: str | None, agent: str, name: str
                          ) -> SessionView | None:
        """End the cluster's session as `session` finds it: its view as it was, None
        when there is none; refused while a turn of it is unfinished."""


class NoClusterAsks:
    """The cluster asks of a daemon with no [cluster] table: none."""

    async def pending(self, tenant: str | None = None) -> list[Ask]:
        return []

    async def read(self, ask_id: str) -> Ask | None:
        return None

    async def end(self, ask: Ask, end: AskEnd, by: str, data: Any = None) -> Ask:
        raise jsonrpc.not_found("ask", ask.id)


class NotANode:
    """The cluster of a daemon with no [cluster] table."""

    redis_warnings: list[str] = []
    asks: ClusterInbox = NoClusterAsks()
    slots: Mapping[str, list[str | None]] = {}
    here: Mapping[str, list[int]] = {}

    def status(self) -> dict[str, Any] | None:
        return None

    def views(self) -> list[NodeView]:
        return []

    def joined(self, why: str = "") -> ClusterNode:
        raise RpcError(jsonrpc.CONFLICT, NOT_A_NODE + (f": {why}" if why else ""))

    async def node_for(self, name: str) -> ClusterNode | None:
        return None

    async def remove_agents(self, names: list[str]) -> list[str]:
        return []

    async def sessions(self, agent: str | None) -> list[SessionView]:
        return []

    async def session(self, tenant: str | None, agent: str, name: str
                      ) -> SessionInfo | None:
        return None

    async def end_session(self, tenant: str | None, agent: str, name: str
                          ) -> SessionView | None:
        return None
