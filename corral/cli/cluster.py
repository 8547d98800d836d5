"""The nodes of a cluster: list them, drain one."""

from __future__ import annotations

import time

import click

from .. import methods as m
from .app import said, shows
from .render import human_time, table


@shows(m.NodesList)
def print_nodes(res: m.NodesResult) -> None:
    now = time.time()
    rows = [[n.node, ("draining" if n.draining else "alive") if n.alive else "dead",
             str(n.incarnation), str(n.load), str(n.capacity),
             human_time(now - n.last_beat) + " ago",
             ",".join(a + ("*" if a in n.placed else "") for a in n.agents)]
            for n in res.nodes]
    table(rows, ["NODE", "STATE", "INCARNATION", "LOAD", "CAPACITY", "LAST BEAT", "AGENTS"])
    for line in _key_warnings(res.nodes):
        click.echo(line, err=True)
    for line in res.warnings:
        click.echo(f"WARNING: {line} (docs/cluster.md#what-redis-must-be)", err=True)


def _key_warnings(nodes: list[m.NodeInfo]) -> list[str]:
    """What the alive nodes' cluster keys say of the cluster's trust."""
    alive = [n for n in nodes if n.alive]
    out = []
    bare = [n.node for n in alive if not n.key]
    if bare:
        out.append(f"WARNING: {', '.join(bare)} {'has' if len(bare) == 1 else 'have'} no "
                   "[cluster] key_file: anyone who can write to the cluster's Redis can run "
                   "commands there (as the agents' users, root by default) and forge task "
                   "outcomes (docs/cluster.md#securing-redis)")
    keys = {n.key for n in alive if n.key}
    if len(keys) > 1:
        out.append("WARNING: the nodes' cluster keys differ (`corral nodes --json`: key): "
                   "each refuses the agent tables and outcomes the others sign")
    return out


said(m.NodesDrain, "node", lambda res: f"node {res.node} (incarnation {res.incarnation}) "
     "drains; `corral nodes` shows it dead once it has left")
