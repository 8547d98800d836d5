"""A cluster node's part of `corral upgrade` (daemon/upgrade.py,
docs/cluster.md#upgrading-a-node-in-place): the old image's settling of its claims before
the exec, and what the new image needs to go on as the same daemon and incarnation (no
join), each claim re-attached to its kept worker.
"""

from __future__ import annotations

import contextlib
import time
from typing import TYPE_CHECKING

import msgspec

from ..supervisor.tasks import Attempt, ModelUsage
from ..text import plural
from ..timeouts import cancel_all, within
from .queue import ClusterTask

if TYPE_CHECKING:
    from ..supervisor.replica import Replica
    from .node import ClusterNode


class Claim(msgspec.Struct, frozen=True):
    """A cluster task running on a kept worker, as its claim and its run so far left it."""

    task_id: str
    agent: str
    input: msgspec.Raw
    priority: int
    timeout: float
    retries_left: int
    created: float
    started: float | None
    attempts: list[Attempt]
    token: int  # its fence
    base: int  # attempts of earlier claims
    entry: str
    stream: str
    consumer: str
    tool_calls: int = 0
    usage: ModelUsage | None = None
    checkpoint: msgspec.Raw | None = None
    session: str | None = None
    session_state: bytes | None = None


class NodeHanded(msgspec.Struct, frozen=True):
    daemon: str  # the daemon's id in its beats (one daemon per node name)
    node: str
    incarnation: int
    consumer: str
    renewed_at: float  # wall time of its last renewal
    claims: list[Claim] = []


# -- the old image -------------------------------------------------------------------------
def unsettled(node: ClusterNode) -> str:
    """What of the cluster's still waits here to be sent or started ("": nothing; an
    outcome pending, or a claim queued, would be lost with the old image)."""
    queued = sum(1 for t in node._held() if t.queued)
    if queued:
        return (f"{plural(queued, 'cluster task')} waiting on this node could not be "
                f"handed back to the cluster ({node.membership.error or 'not a member'})")
    if node.outbox.pending:
        return (f"{plural(len(node.outbox.pending), 'outcome')} of cluster tasks could not "
                f"be sent to Redis ({node.membership.error or 'no answer'})")
    return ""


async def settle(node: ClusterNode) -> None:
    """Before the exec: the key renewed last (the new image has a whole TTL from here to
    beat). Redis away: what is not sent waits for the TTL (the takeover)."""
    node.puller.paused = True  # (and no claim at submission: submitclaim.py)
    loops = list(node.puller.loops.values())
    node.puller.loops.clear()
    await cancel_all(loops)
    from redis.exceptions import RedisError  # (handoff.py imports this module: no redis)
    if not node.membership.member:
        return  # (what waits stays: `unsettled` says so, and the upgrade is refused)
    await node.stop_queued(f"node {node.node} is upgrading")
    await node.flush_outbox()
    running = {t.entry for t in node._held()}
    await node.give_back_unknown(running, f"node {node.node} is upgrading")
    with contextlib.suppress(RedisError, OSError, TimeoutError):
        await within(node.membership.renew(), node.settings.beat)


def resume_taking(node: ClusterNode) -> None:
    """The upgrade was refused after `settle`."""
    node.puller.paused = False
    node.puller.sync()


def handed(node: ClusterNode) -> NodeHanded:
    """What the new image goes on with (called with no await before the exec)."""
    m = node.membership
    wall = time.time() - (time.monotonic() - m.renewed)
    claims = [Claim(
        t.id, t.agent, t.input, t.priority, t.timeout, t.retries_left, t.created,
        t.started, list(t.attempts), t.token, t.base, t.entry, t.stream, t.consumer,
        t.tool_calls, t.usage, t.checkpoint, t.session, t.session_state)
        for t in node._held() if t.running]
    return NodeHanded(m.daemon, node.node, m.incarnation, m.consumer, wall, claims)


# -- the new image -------------------------------------------------------------------------
def go_on(node: ClusterNode, h: NodeHanded) -> None:
    """Before the node's start: the same daemon and incarnation, a member since the old
    image's last renewal."""
    m = node.membership
    m.daemon, m.incarnation, m.consumer = h.daemon, h.incarnation, h.consumer
    m.state = "member"
    m.renewed = time.monotonic() - max(0.0, time.time() - h.renewed_at)


def _task(c: Claim, node: ClusterNode | None = None) -> ClusterTask:
    """The claim's task (`node`: kept here, its home the node's)."""
    return ClusterTask(c.task_id, c.agent, c.input, c.priority, c.timeout, c.retries_left,
                       c.created, token=c.token, base=c.base, entry=c.entry,
                       stream=c.stream, consumer=c.consumer,
                       home=node.home if node is not None else None)


def adopt(node: ClusterNode, c: Claim, r: Replica, rid: int) -> None:
    """A handed claim, re-attached to its kept worker. An incarnation fenced already
    cancels it at once: the cluster runs it elsewhere."""
    t = _task(c, node)
    t.started, t.attempts, t.tool_calls = c.started, tuple(c.attempts), c.tool_calls
    t.usage, t.checkpoint = c.usage, c.checkpoint
    t.session, t.session_state = c.session, c.session_state
    tasks = node.tasks
    tasks.traced_again(t)
    tasks.active[t.id] = t
    t.watch(node.outbox.progress)
    tasks.dispatch.adopt(t, r, rid)
    m = node.membership
    if not m.member or m.consumer != c.consumer:
        node.report(f"cluster: task {t.id} was taken over while the node upgraded "
                    f"({c.consumer} fenced): cancelled here")
        if not t.ended:
            tasks.cancel(t.id)


def give_back(node: ClusterNode, claims: list[Claim], why: str) -> None:
    """Handed claims whose worker was not adopted: back to the cluster now (else the
    orphan rule would, beats later)."""
    why = f"node {node.node}'s worker was lost in its upgrade: {why}"
    node.background(node.reaper.hand_back([_task(c) for c in claims], why, lost=True))
