"""The cluster's methods' handlers: the nodes listed and drained (a daemon with no
[cluster] answers that it has none)."""

from __future__ import annotations

from operator import attrgetter

from .. import methods as m
from .api import Commands
from .caller import Caller, Channel
from .clusterpeer import ClusterPeer
from .services import Services

COMMANDS: Commands[Services, ClusterPeer] = Commands(attrgetter("cluster"))
implements = COMMANDS.implements


@implements(m.NodesList)
async def nodes_list(cluster: ClusterPeer, p: m.NodesList, caller: Caller, c: Channel
                     ) -> m.NodesResult:
    node = cluster.joined()
    return m.NodesResult(nodes=list(await node.nodes()), warnings=node.redis_warnings)


@implements(m.NodesDrain)
async def nodes_drain(cluster: ClusterPeer, p: m.NodesDrain, caller: Caller, c: Channel
                      ) -> m.DrainResult:
    view = await cluster.joined().drain(p.node)
    return m.DrainResult(node=view.node, incarnation=view.incarnation)
