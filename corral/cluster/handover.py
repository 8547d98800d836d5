"""A cluster node's part of `corral upgrade` (daemon/upgrade.py,
docs/cluster.md#upgrading-a-node-in-place): the old image's settling of its claims before
the exec, and what the new image needs to go on as the same daemon and incarnation (no
join), each claim re-attached to its kept worker: its task made from its record in Redis,
as a claim after a crash makes it, only what its run holds carried (decision 2210).
"""

from __future__ import annotations

import contextlib
import time
from typing import TYPE_CHECKING, Any, NamedTuple

import msgspec

from ..supervisor.tasks import ON_WORKER, Attempt, ModelUsage
from ..text import plural
from ..timeouts import cancel_all, within
from .keys import consumer

if TYPE_CHECKING:
    from ..supervisor.replica import Replica
    from .node import ClusterNode


class Claim(msgspec.Struct, frozen=True):
    """A cluster task running on a kept worker: what its run holds that its record in
    Redis does not (its tool calls and usage reach Redis with its outcome), and the fence
    it was claimed under. The task itself is its record's (`kept`)."""

    task_id: str
    token: int
    attempts: list[Attempt]
    started: float | None = None
    tool_calls: int = 0
    usage: ModelUsage | None = None


class PendingEntry(NamedTuple):
    """A kept claim's entry in its stream, as its record names it (reaper.StreamClaim)."""

    stream: str
    entry: str
    id: str
    consumer: str


class KeptClaim(NamedTuple):
    """A handed claim, the incarnation that claimed it, and its task's record as Redis
    holds it (scripts.HELD's row; None: no record, or Redis did not answer)."""

    claim: Claim
    consumer: str
    row: list[Any] | None


class NodeHanded(msgspec.Struct, frozen=True):
    daemon: str  # the daemon's id in its beats (one daemon per node name)
    incarnation: int  # (its consumer is the node's name and this: keys.consumer)
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
    claims = [Claim(t.id, t.token, list(t.attempts), t.started, t.tool_calls, t.usage)
              for t in node._held() if t.running]
    return NodeHanded(m.daemon, m.incarnation, wall, claims)


# -- the new image -------------------------------------------------------------------------
def go_on(node: ClusterNode, h: NodeHanded) -> None:
    """Before the node's start: the same daemon and incarnation, a member since the old
    image's last renewal."""
    m = node.membership
    m.daemon, m.incarnation = h.daemon, h.incarnation
    m.consumer = consumer(node.node, h.incarnation)
    m.state = "member"
    m.renewed = time.monotonic() - max(0.0, time.time() - h.renewed_at)


async def kept(node: ClusterNode, claims: list[Claim]) -> dict[str, KeptClaim]:
    """After `go_on`, before the node starts and any adoption: each handed claim with its
    task's record (a claim after a crash makes its task from the same). Redis away: none
    read, each kept worker's answer is dropped and its entry, still pending, goes back to
    the cluster as an orphan's does (a crash's loss)."""
    from redis.exceptions import RedisError  # (handoff.py imports this module: no redis)
    rows: Any = [None] * len(claims)
    if claims:
        try:
            [rows] = await within(node.scripts.run([(node.scripts.held, [], [
                node.keys.prefix, *(c.task_id for c in claims)])]), node.settings.node_ttl)
            if isinstance(rows, BaseException):
                raise rows
        except (RedisError, OSError, TimeoutError) as exc:
            rows = [None] * len(claims)
            node.report(f"cluster: the records of {plural(len(claims), 'kept claim')} "
                        f"cannot be read ({exc}): their runs' answers are dropped")
    mine = node.membership.consumer
    return {c.task_id: KeptClaim(c, mine, row or None)
            for c, row in zip(claims, rows, strict=True)}


def adopt(node: ClusterNode, k: KeptClaim, r: Replica, rid: int) -> bool:
    """A handed claim, its task made from its record as a claim's is, re-attached to its
    kept worker (False: no record read). One no longer this incarnation's (its key lapsed
    meanwhile: fenced) is cancelled at once: the cluster runs it elsewhere."""
    if k.row is None:
        return False
    c, (stream, *claim) = k.claim, k.row
    status, owner, fence = claim[-2], claim[-1], claim[2]
    claim[2] = c.token  # (its writes fenced by the claim's own)
    t, traceparent, tracestate = node.puller.made(r.name, k.consumer, stream.decode(), claim)
    t.started, t.attempts = c.started, tuple(c.attempts)
    t.tool_calls, t.usage = c.tool_calls, c.usage
    node.tasks.intake.adopt(t, traceparent, tracestate, running=(r, rid))
    m = node.membership
    if not (m.member and m.consumer == k.consumer and owner == k.consumer.encode()
            and int(fence) == c.token and (status or b"").decode() in ON_WORKER):
        node.report(f"cluster: task {t.id} was taken over while the node upgraded "
                    f"({k.consumer} fenced): cancelled here")
        if not t.ended:
            node.tasks.cancel(t.id)
    return True


def give_back(node: ClusterNode, kept: list[KeptClaim], why: str) -> None:
    """Handed claims whose worker was not adopted: back to the cluster now (else the
    orphan rule would, beats later)."""
    why = f"node {node.node}'s worker was lost in its upgrade: {why}"
    entries = [PendingEntry(r[0].decode(), r[1].decode(), k.claim.task_id, k.consumer)
               for k in kept if (r := k.row) is not None]
    if entries:
        node.background(node.reaper.hand_back(entries, why, lost=True))
