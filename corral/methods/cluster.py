# ruff: noqa: F405 - the results are corral.results', named by the methods
"""The cluster's nodes (docs/cluster.md)."""

from __future__ import annotations

from ..results import *  # noqa: F403
from .declaration import Params, method, rest


@method("nodes.list", result=NodesResult, scope="agents:read", seen=None, cli="nodes",
        dashboard=True, routes=(
    rest("GET", "/nodes", "The nodes of the cluster (with [cluster])"),
))
class NodesList(Params):
    """The nodes of this daemon's cluster, alive or not: incarnation, load, agents, last
    beat."""


@method("nodes.drain", result=DrainResult, scope="admin", mutating=True, seen=None,
        cli="drain", routes=(
    rest("POST", "/nodes/{node}/drain", "Drain a node of the cluster: no new "
         "tasks, what it runs finishes, its cluster agents move, then it leaves"),
))
class NodesDrain(Params):
    """Drain a node of the cluster (from any node): it takes no new tasks, finishes
    those it has, hands its cluster agents over to other nodes, then leaves the cluster
    (its local work goes on; it joins again when its daemon starts again)."""

    node: str
