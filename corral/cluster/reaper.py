"""Takeover: every beat each node gives back to the cluster what a dead node incarnation
held pending in the task streams (scripts.TAKEOVER).

Never by idle time: Redis counts it from delivery, not from the owner's death, so a long
task would be stolen again and again. A consumer is dead exactly when its liveness key is
gone, and after Redis was away a reaper waits out a TTL and a beat (`Membership.settled`).
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple, Protocol

import msgspec
from redis.exceptions import RedisError, ResponseError

from .. import jsonrpc
from ..supervisor.config import RETRY_LOST
from ..supervisor.tasks import AT_MOST_ONCE_NOTE, Task, TaskFailure, TaskStatus
from ..supervisor.tasks.taskmachine import (
    LostBudget,
    TaskCause,
    TaskMachine,
    TaskStep,
    cancel_failure,
)
from ..taskoptions import AGENTS_RETRY, AgentRetries
from ..timeouts import within
from . import records
from .connection import read_all, why
from .keys import GROUP, Keys, priority_numbers, split_route
from .membership import Membership
from .queue import ClusterTask
from .runningcalls import COUNT_DIGITS
from .scripts import RedisPart, Scripts
from .trust import Trust

PAGE = 100  # pending entries looked at per stream and dead consumer in one beat
# an entry its live owner neither runs nor refreshed for this many beats is an orphan
# (an entry read is claimed within one round trip; a task run is refreshed every beat)
ORPHAN_BEATS = 3


class StreamClaim(Protocol):
    """A claim as its stream holds it: a ClusterTask, or an upgrade's kept claim whose
    worker was not (cluster/handover.py)."""

    @property
    def stream(self) -> str: ...
    @property
    def entry(self) -> str: ...
    @property
    def id(self) -> str: ...
    @property
    def consumer(self) -> str: ...


class AgentDefaults(NamedTuple):
    """The retry policy of an agent this node does not run: an agent's defaults."""

    retry_on: tuple[str, ...] = ("lost",)
    retry_lost: int = RETRY_LOST


class RecordPolicy:
    """A taken-over task's retry policy as its record says (taskmachine.RetryPolicy)."""

    def __init__(self, retried: tuple[str, ...], budget: LostBudget) -> None:
        self.retried, self.budget = retried, budget

    def retried_on(self, task: TaskMachine) -> tuple[str, ...]:
        return self.retried

    def lost_budget(self, task: TaskMachine) -> LostBudget:
        return self.budget


_attempt = msgspec.json.Decoder(dict[str, Any])


# A record's fields, a Redis writer's too: one that does not parse is read as none (its
# defaults), never a failure of the beat, which would stop every takeover after it.
def _number(field: bytes | None) -> int | None:
    digits = (field or b"").removeprefix(b"-")  # (more than a count's: int() raises)
    return int(field or b"") if digits.isdigit() and len(digits) <= COUNT_DIGITS else None


def _outcome(attempt: bytes) -> Any:
    try:
        return _attempt.decode(attempt).get("outcome")
    except msgspec.DecodeError:
        return None


def cancelled(machine: TaskMachine, cancel: bytes | None) -> TaskStep | None:
    """A claimed task's cancel's mark as read (CANCEL's 'asked'): the machine's cancel of
    its attempt on a worker; None, the machine unmoved, when no cancel was asked."""
    return machine.fire(TaskCause.CANCEL) if cancel == b"1" else None


def decided(retries: bytes | None, retry_lost: bytes | None, options: bytes | None,
            cancel: bytes | None, attempts: list[bytes], orphan: bool,
            spec: AgentRetries) -> tuple[TaskStep, TaskMachine]:
    """What becomes of a dead or orphaned claim's task: the task machine's rule, as the
    engine applies it to a node's lost attempt (asked to cancel: cancelled; an orphan:
    given back, nothing spent; a loss: within retry_lost again for free, else as its
    policy's retries and retry_on say). Its retry_lost is its own, else its agent's as the
    record keeps it from its claiming node (RetryOptions.lost), else `spec`'s."""
    machine = TaskMachine(_number(retries) or 0)
    machine.fire(TaskCause.START)
    if (step := cancelled(machine, cancel)) is not None:
        return step, machine
    if orphan:
        return machine.fire(TaskCause.RELEASED), machine
    policy = records.options_in(options).retry or AGENTS_RETRY
    ended = [_outcome(a) for a in attempts]
    # (the attempt it was running is lost with this takeover)
    lost = ended.count("lost") + (1 if ended and ended[-1] in (None, "running") else 0)
    given = _number(retry_lost)
    agent = spec if given is None else AgentDefaults(spec.retry_on, given)
    budget = LostBudget(policy.lost(agent), lost)
    return machine.fire(TaskCause.LOST, RecordPolicy(policy.outcomes(spec), budget)), machine


async def take_over(part: RedisPart, stream: str, entry: Any, tid: str, dead: str, *,
                    orphan: bool, reason: str, kept_for: int, specs: Mapping[str, Any],
                    live: bool = False) -> Any:
    """A dead (or orphaned) consumer's entry of task `tid`: decided from its record here,
    kept by TAKEOVER if the record is still as read. `specs`: this node's agents (an
    agent's retry_on, where the task gave none); `live`: its holder hands it back."""
    task = part.keys.task(tid)

    def fill(pipe: Any) -> None:
        pipe.hmget(task, "retries_left", "retry_lost", "options", "cancel", "agent",
                   "status")
        pipe.lrange(part.keys.attempts(tid), 0, -1)

    (retries, retry_lost, options, cancel, agent, read), attempts = await read_all(
        part.redis, fill, transaction=True)
    local = specs.get(agent.decode(errors="replace")) if agent else None
    step, machine = decided(retries, retry_lost, options, cancel, attempts, orphan,
                            AgentDefaults() if local is None else local.spec)
    status, spent, error = str(machine.status), "", b""
    if machine.queued:
        status = "requeued"
        if str(machine.retries_left) != (retries or b"").decode(errors="replace"):
            spent = str(machine.retries_left)
    elif cancel == b"1":
        error = records.error_json(cancel_failure(TaskStatus.RUNNING))
    else:  # (a task of an agent at most once: retry_lost = 0)
        error = records.error_json(TaskFailure(
            jsonrpc.PEER_CLOSED, f"{reason} ({AT_MOST_ONCE_NOTE})" if step.once else reason))
    return await part.scripts.takeover(
        keys=[task, part.keys.attempts(tid), stream, part.keys.outcomes,
              part.keys.alive(dead), *part.keys.listed],
        args=[tid, entry, dead, repr(time.time()), reason, kept_for,
              "live" if orphan or live else "dead", retries or b"", cancel or b"",
              status, spent,
              error, part.trust.outcome(tid, "0", status, b"", error) if error else "",
              read or b""])


class Reaper(RedisPart):
    def __init__(self, scripts: Scripts, keys: Keys, trust: Trust, membership: Membership,
                 report: Callable[[str], None], kept_for: float,
                 agents: Mapping[str, Any]) -> None:
        """`agents`: this node's (their retry policies)."""
        super().__init__(scripts, keys, trust)  # (trust signs the outcome of a task it ends)
        self.agents = agents
        self.membership = membership
        self.report = report
        self.kept_for = int(kept_for)  # seconds a finished record stays ([cluster])
        self.requeued = 0
        self.lost = 0
        self.orphans = 0

    async def streams(self) -> list[str]:
        """Every task stream of the cluster (a priority each, and the claimed stream where
        it exists), in two round trips however many agents there are."""
        routes = sorted(split_route(a.decode(errors="replace"))
                        for a in await self.redis.smembers(self.keys.agents))
        # (a member without a tenant is a name from before streams had one: not read)
        routes = [(tenant, name) for tenant, name in routes if name]
        if not routes:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for tenant, name in routes:
            pipe.zrange(self.keys.priorities(tenant, name), 0, -1)
            pipe.exists(self.keys.claimed(tenant, name))
        got = await pipe.execute()
        return [s for (tenant, name), prios, claimed in zip(
                    routes, got[::2], got[1::2], strict=True)
                for s in [*(self.keys.stream(tenant, name, p)
                            for p in priority_numbers(prios)),
                          *([self.keys.claimed(tenant, name)] if claimed else [])]]

    async def reap(self, streams: list[str]) -> None:
        """What dead consumers hold in `streams` goes back."""
        if not self.membership.member or not self.membership.settled():
            return
        for stream in streams:
            try:
                summary = await self.redis.xpending(stream, GROUP)
            except ResponseError:  # (no such stream or group: nothing is pending in it)
                continue
            holders = [c["name"].decode(errors="replace") if isinstance(c["name"], bytes)
                       else c["name"] for c in summary.get("consumers") or ()]
            alive = await self.membership.alive(holders)
            for dead in (c for c in holders if c not in alive):
                await self._take_over(stream, dead)

    async def give_back(self, streams: Iterable[str], consumer: str, reason: str,
                        held: frozenset[bytes] = frozenset()) -> None:
        """A stopping node's last pass: every entry `consumer` still holds in `streams`
        (but `held`, what runs on) is an orphan, queued again at once."""
        for stream in streams:
            await self._take_over(stream, consumer, idle=0, lost=lambda e: e not in held,
                                  reason=reason)

    async def _take_over(self, stream: str, dead: str, *, idle: int | None = None,
                         lost: Callable[[bytes], bool] = lambda e: True,
                         reason: str | None = None) -> None:
        """What `dead` holds in `stream` goes back; with `idle` (ms), what this live node
        holds idle that long and `lost` says it does not run: an orphan (`lost` asked
        again just before the entry is taken, after the reads that decide it)."""
        pending = await self.redis.xpending_range(stream, GROUP, "-", "+", PAGE,
                                                  consumername=dead, idle=idle)
        node = dead.rpartition("/")[0] or dead  # (a Redis writer's name: as it is)
        orphans = idle is not None
        refreshing = orphans and reason is None  # (not a stopping node's last pass)
        reason = reason or (f"node {node} did not run it (its claim's answer was lost or "
                            "not confirmed)" if orphans else f"node {node} lost")
        for p in pending:
            entry = p["message_id"]
            if not lost(entry):
                continue
            found = await self.redis.xrange(stream, entry, entry)
            task_id = found[0][1].get(b"task") if found else None
            if task_id is None:  # the entry was deleted: nothing to run, only to let go
                await self.redis.xack(stream, GROUP, entry)
                continue
            tid = task_id.decode(errors="replace")  # (a Redis writer's: no record)
            # an entry read and not claimed, its task still queued: on a live node, a
            # session's turn given to it that it was too busy to claim (sessionscripts)
            unclaimed = refreshing and await self.redis.hget(self.keys.task(tid),
                                                          "status") == b"queued"
            if not lost(entry):  # (its claim's answer came meanwhile)
                continue
            try:
                got = await take_over(self, stream, entry, tid, dead, orphan=orphans,
                                      reason=reason, kept_for=self.kept_for,
                                      specs=self.agents)
            except ResponseError as exc:  # (its keys a Redis writer's of another type)
                self.report(f"cluster: task {tid} of {dead} not taken over: {why(exc)}")
                continue
            if got == b"requeued" and unclaimed:
                self.orphans += 1
                self.report(f"cluster: task {tid} given to node {node} waited "
                            f"{ORPHAN_BEATS} beats unclaimed: it waits for any node")
            elif got == b"requeued" and orphans:
                self.orphans += 1
                self.report(f"cluster: task {tid} queued again ({reason})")
            elif got == b"requeued":
                self.requeued += 1
                self.report(f"cluster: task {tid} of {dead} queued again ({reason})")
            elif got == b"lost":
                self.lost += 1
                self.report(f"cluster: task {tid} lost ({reason}, no retries left)")
            elif got == b"cancelled":
                self.report(f"cluster: task {tid} cancelled ({reason} before it acted on "
                            "the cancel asked)")

    async def hand_back(self, held: Sequence[StreamClaim], reason: str, *, lost: bool) -> None:
        """This node's claims back to the cluster at once, as `take_over` decides: never
        on a worker, an orphan's (nothing spent); `lost`, their attempts lost with their
        workers, a loss as a dead node's (within retry_lost, nothing spent; at most
        once, the task ends lost)."""
        try:
            got = await within(asyncio.gather(*(take_over(
                self, t.stream, t.entry, t.id, t.consumer, orphan=not lost, reason=reason,
                kept_for=self.kept_for, specs=self.agents, live=True) for t in held)),
                self.membership.ttl)
        except (RedisError, OSError, TimeoutError) as exc:
            self.report(f"cluster: {len(held)} tasks not handed back ({why(exc)}): the "
                        "cluster takes them over once this node's key expires")
            return
        ended = got.count(b"lost")
        self.report(f"cluster: {got.count(b'requeued')} tasks handed back ({reason})"
                    + (f", {ended} lost (not run again)" if ended else ""))

    async def refresh(self, held: Callable[[], Iterable[Task]], streams: Iterable[str],
                      claiming: Mapping[str, int]) -> None:
        """The owner's every beat: its running cluster tasks' entries are its own again,
        idle 0; an entry it holds in `streams` without running it, idle for
        ORPHAN_BEATS, goes back to the cluster. `held`: what runs here, and what ended
        here with its outcome not yet written, asked again at each such entry;
        `claiming`: its claims under way by agent (ClusterQueue.claiming)."""
        consumer = self.membership.consumer
        by_stream: dict[str, list[str]] = defaultdict(list)
        for t in held():
            if isinstance(t, ClusterTask) and t.consumer == consumer:
                by_stream[t.stream].append(t.entry)
        try:
            for stream, entries in by_stream.items():
                await self.redis.xclaim(stream, GROUP, consumer, 0, entries, justid=True)
            idle = int(ORPHAN_BEATS * self.membership.beat * 1000)
            for stream in streams:
                agent = split_route(self.keys.route_of(stream))[1]

                # Idle is counted from the entry's delivery, so one claimed since `held`
                # was read, or claimed by a call whose answer (or its replicas'
                # confirmation) a loaded host still keeps from this node, is idle and
                # not held, and is not lost: while a claim of its agent is under way, or
                # once the node holds it, it is not taken back (decision 2240)
                def lost(entry: bytes, stream: str = stream, agent: str = agent) -> bool:
                    return not claiming.get(agent) and not any(
                        isinstance(t, ClusterTask) and t.consumer == consumer
                        and t.stream == stream and t.entry.encode() == entry
                        for t in held())

                await self._take_over(stream, consumer, idle=idle, lost=lost)
        except RedisError as exc:
            self.report(f"cluster: refreshing pending entries: {why(exc)}")
