"""What the command layer asks of the cluster, and what a daemon with no [cluster] answers
instead: handlers never ask whether this daemon is a node. `ClusterNode` is the one
implementation on a node; `NotANode` is the daemon's without a [cluster] table. Their
`ask_shelves` and `session_stores` keep asks and sessions besides the engine's own: the
cluster's, or none (deciders.AskBook and sessions.SessionBook read each)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TypeAlias

from .. import jsonrpc
from ..jsonrpc import RpcError
from ..supervisor.labels import NoLabels

if TYPE_CHECKING:
    from ..cluster.clusterasks import ClusterAsks
    from ..cluster.membership import NodeView
    from ..cluster.node import ClusterNode
    from ..supervisor.pushstore import PushStore
    from ..supervisor.tasks.sessions import SessionStore

NOT_A_NODE = "this daemon is not a node of a cluster (its config has no [cluster] table)"

# a union of the two sides, not a Protocol: the daemon may import the cluster, and a string
# keeps corral.cluster.node unimported on a daemon with no [cluster]
ClusterPeer: TypeAlias = "ClusterNode | NotANode"


class NotANode:
    """The cluster of a daemon with no [cluster] table."""

    redis_warnings: list[str] = []
    ask_shelves: tuple[ClusterAsks, ...] = ()
    session_stores: tuple[SessionStore, ...] = ()
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
