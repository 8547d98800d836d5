"""What the command layer asks of the cluster, and what a daemon with no [cluster] answers
instead: handlers never ask whether this daemon is a node. `ClusterNode` is the one
implementation on a node; `NotANode` is the daemon's without a [cluster] table."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, NamedTuple, TypeAlias

from .. import jsonrpc
from ..jsonrpc import RpcError
from ..supervisor.labels import NoLabels

if TYPE_CHECKING:
    from ..askviews import Ask, AskEnd
    from ..cluster.clusterasks import ClusterAsks
    from ..cluster.membership import NodeView
    from ..cluster.node import ClusterNode
    from ..results import SessionInfo, SessionView
    from ..supervisor.pushstore import PushStore
    from ..supervisor.tasks.inbox import AskRecords, Inbox
    from ..supervisor.tasks.sessions import SessionKey

NOT_A_NODE = "this daemon is not a node of a cluster (its config has no [cluster] table)"

# unions of the two sides, not Protocols: the daemon may import the cluster, and a string
# keeps corral.cluster.node unimported on a daemon with no [cluster]
ClusterPeer: TypeAlias = "ClusterNode | NotANode"
ClusterInbox: TypeAlias = "ClusterAsks | NoClusterAsks"


class NoClusterAsks:
    """The cluster asks of a daemon with no [cluster] table: none."""

    async def pending(self, tenant: str | None = None) -> list[Ask]:
        return []

    async def read(self, ask_id: str) -> Ask | None:
        return None

    async def end(self, ask: Ask, end: AskEnd, by: str, data: Any = None) -> Ask:
        raise jsonrpc.not_found("ask", ask.id)


class AskBook(NamedTuple):
    """The asks a person is shown and decides, one source over both homes: this
    engine's inbox (its own tasks'), then its cluster's. An ask is read, and ended, where
    it is kept (an AskRecords, for `decide`)."""

    here: Inbox
    cluster: ClusterInbox

    async def pending(self, tenant: str | None) -> list[Ask]:
        """Every pending ask (a cluster's of `tenant`), oldest first."""
        asks = [*self.here.pending(), *await self.cluster.pending(tenant)]
        return sorted(asks, key=lambda a: (a.created, a.id))

    async def read(self, ask_id: str) -> Ask | None:
        return self.here.get(ask_id) or await self.cluster.read(ask_id)

    async def end(self, ask: Ask, end: AskEnd, by: str, data: Any = None) -> Ask:
        shelf: AskRecords = self.here if self.here.get(ask.id) is not None else self.cluster
        return await shelf.end(ask, end, by, data)


class NotANode:
    """The cluster of a daemon with no [cluster] table."""

    redis_warnings: list[str] = []
    asks = NoClusterAsks()
    push: PushStore | None = None  # (the node's own keeps a task's push configs)
    labels = NoLabels()  # (the node's own keeps a task's labels)
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

    async def session_views(self, agent: str | None) -> list[SessionView]:
        return []

    async def session_info(self, key: SessionKey) -> SessionInfo | None:
        return None

    async def end_session(self, key: SessionKey) -> SessionView | None:
        return None
