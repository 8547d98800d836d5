"""Pull: for each agent this node runs, read and claim its streams' entries in one script
call, only while a replica has a free slot, so the least loaded node takes the work; then
wait with a blocking XREAD (which takes nothing). An entry read but not claimed when its
reader dies stays pending with a dead consumer, for the reaper.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import msgspec
from redis.exceptions import RedisError, ResponseError

from ..supervisor.tasks import TaskFinished, TaskManager, TaskProgress
from ..supervisor.tasks.host import AgentLike, TaskHost
from ..timeouts import cancel_all, within
from . import records
from .connection import why
from .home import ClusterHome
from .keys import GROUP, Keys, priority_numbers, route
from .membership import Membership
from .queue import ClusterQueue, ClusterTask
from .scripts import Scripts
from .steps import ClusterSteps


class ClaimParts(NamedTuple):
    """What each claim is given: its home, where its last checkpoint is read, how its
    progress is watched, and how many live nodes share an agent's burst."""

    steps: ClusterSteps
    home: ClusterHome
    watch: Callable[[TaskProgress | TaskFinished], None]
    serving: Callable[[AgentLike], int]


class Puller:
    def __init__(self, scripts: Scripts, keys: Keys, membership: Membership,
                 queue: ClusterQueue, host: TaskHost, tasks: TaskManager,
                 report: Callable[[str], None], claims: ClaimParts, waits: Any) -> None:
        self.redis = scripts.redis
        self.waits = waits
        self.scripts = scripts
        self.keys = keys
        self.membership = membership
        self.queue = queue
        self.host = host
        self.tasks = tasks
        self.beat = membership.beat
        self.report = report
        self.loops: dict[str, asyncio.Task[None]] = {}
        # the route (keys.route) -> (when, streams)
        self._prios: dict[str, tuple[float, list[str]]] = {}
        # the route -> the streams this node read or claimed in (where the reaper looks
        # for what it holds without running it), kept while it runs the agent or holds
        # an entry there
        self._read: dict[str, set[str]] = {}
        self.claimed = 0  # tasks this node claimed
        self.claims = claims
        self.closed = False
        self.paused = False  # draining: nothing more is read
        self.reads = 0  # read-and-claim calls (READ_CLAIM), those that read nothing too
        self.read = 0  # entries they read
        self.errors = 0

    def sync(self) -> None:
        """A pull loop for each agent this node runs, and none for one it no longer does."""
        if self.closed:
            return
        for name in self.host.agents:
            if name not in self.loops or self.loops[name].done():
                self.loops[name] = asyncio.ensure_future(self._pull(name))
        for name in [n for n in self.loops if n not in self.host.agents]:
            self.loops.pop(name).cancel()

    async def close(self) -> None:
        self.closed = True
        loops = list(self.loops.values())
        self.loops.clear()
        await cancel_all(loops)

    async def _idle(self, agent: str) -> None:
        """Until a slot of `agent` may have freed, or a beat."""
        ev = self.queue.event(agent)
        ev.clear()
        with contextlib.suppress(TimeoutError):
            await within(ev.wait(), self.beat)

    async def _pull(self, name: str) -> None:
        block = max(1, int(self.beat * 1000))
        while True:
            agent = self.host.agents.get(name)
            if agent is None:
                return
            want = self.queue.wanted(agent)
            if not self.membership.member or want <= 0 or self.paused:
                await self._idle(name)
                continue
            consumer = self.membership.consumer
            try:
                streams = await self._streams(agent)
                lasts = await self._read_claim(agent, consumer, streams)
                if lasts is not None:
                    # drained: wait for what comes after the newest entries it saw. The
                    # wait takes nothing: a node whose slots were taken meanwhile (by
                    # claims at submission) takes none
                    reply = await self.waits.xread(dict(zip(streams, lasts, strict=True)),
                                                   count=1, block=block)
                    if not reply:
                        # a blocking read that came back empty may have missed a priority
                        # that appeared meanwhile: look again before the next one
                        self._prios.pop(route(agent.spec.tenant, name), None)
            except RedisError as exc:
                self.errors += 1
                if self.errors == 1 or self.membership.error is None:
                    self.report(f"cluster: pulling tasks of {name}: {why(exc)}")
                await asyncio.sleep(self.beat)
            except Exception as exc:  # a bug: said, and the loop goes on
                self.report(f"cluster: pulling tasks of {name} failed: "
                            f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(self.beat)

    def streams(self) -> list[str]:
        """Every stream this node has read or claimed in (where the reaper looks)."""
        return sorted(s for streams in self._read.values() for s in streams)

    def claims_in(self, stream: str) -> None:
        """A stream this node claims a task in before its answer comes (submitclaim.py):
        a claim whose answer is lost or not confirmed is found there as an orphan."""
        self._read.setdefault(self.keys.route_of(stream), set()).add(stream)

    async def let_go(self) -> None:
        """The streams of agents this node no longer runs, once it holds no entry in
        them (an orphan the beat's refresh gives back first): the reaper looks there no
        more, a round trip each a beat, and what is kept is bounded by the agents it
        runs, not every agent it ever ran."""
        # (and those the beat Redis holds still names: a sticky turn given here now is
        # held in their streams, and the refresh gives it back only where it looks)
        here = {route(a.spec.tenant, name) for name, a in self.host.agents.items()} | {
            route(tenant, name) for name, tenant in self.membership.published.items()}
        consumer = self.membership.consumer
        for gone in [r for r in self._read if r not in here]:
            self._prios.pop(gone, None)
            for stream in list(self._read[gone]):
                with contextlib.suppress(ResponseError):  # (no such stream or group)
                    if await self.redis.xpending_range(stream, GROUP, "-", "+", 1,
                                                       consumername=consumer):
                        continue
                self._read[gone].discard(stream)
            if not self._read[gone]:
                del self._read[gone]

    async def _streams(self, agent: AgentLike) -> list[str]:
        """The agent's streams, highest priority first; read again at most every beat.
        The default priority's is always among them, made here if no task has gone to it
        yet: the blocking read then waits on it, and the first task submitted to an idle
        cluster wakes it (else a burst waited a beat)."""
        now = time.monotonic()
        tenant, name = agent.spec.tenant, agent.name
        known = self._prios.get(route(tenant, name))
        if known is None or now - known[0] > self.beat:
            prios = set(priority_numbers(await self.redis.zrange(
                self.keys.priorities(tenant, name), 0, -1)))
            if 0 not in prios:
                await self._make_default(self.keys.stream(tenant, name, 0))
            known = self._prios[route(tenant, name)] = (now, [
                self.keys.stream(tenant, name, p) for p in sorted(prios | {0}, reverse=True)])
            self._read.setdefault(route(tenant, name), set()).update(known[1])
        return known[1]

    async def _make_default(self, stream: str) -> None:
        """The default priority's stream and its group (from the stream's start, as the
        submit script makes them), unless they exist."""
        try:
            await self.redis.xgroup_create(stream, GROUP, "0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def _read_claim(self, agent: AgentLike, consumer: str, streams: list[str]
                          ) -> list[bytes] | None:
        """Read and claim as many entries as the agent has slots for now, at most this
        node's share of what waits. -> each stream's newest entry id where it read fewer
        than it had slots for, not held back by its share (drained); None where it read
        them all, or this node was fenced, lost the agent or its free slots meanwhile."""
        name = agent.name
        if self.host.agents.get(name) is not agent or consumer != self.membership.consumer:
            return None
        # counted here, with no wait before the script is sent: slots counted before the
        # streams' lookup may have been taken meanwhile by claims at submission, and a
        # read for them queued a task here that another node had a slot for (a loaded
        # host's burst ran three tasks on its submitter, the last after another's end)
        want = self.queue.wanted(agent)
        if want <= 0:
            return None
        node = self.membership.node
        now = time.time()
        args: list[Any] = [consumer, node, repr(now), records.claimed_attempt(node, now),
                           agent.spec.retries, repr(agent.spec.task_timeout),
                           want, self.keys.prefix, self.claims.serving(agent), agent.spec.tenant,
                           self.keys.sticky(agent.spec.tenant, name, consumer),
                           agent.spec.retry_lost]
        # its slots held across the read's round trip too: else a claim at submission
        # took a slot it reads for, two tasks here for one, the waiting one uncounted by
        # max_queue (SUBMIT counts what is unread) while another node's slot stayed free.
        # A submission meanwhile waits for its answer (submitclaim.py, decision 2181)
        with self.queue.reading(name, want):
            [reply] = await self.scripts.run([(self.scripts.read_claim,
                                               [self.keys.fence, *streams], args)])
        if isinstance(reply, Exception):
            raise reply  # what was read is left pending with this node: an orphan
        read, claims, lasts, held = reply
        self.reads += 1
        self.read += read
        if claims:
            # confirmed by the replicas (the marker's write and WAIT) before any starts, as
            # a claim at submission is: a task no replica holds, run here, would run again
            # under a new id once a promoted replica's run submitted its step anew. Not
            # confirmed: none starts, each an orphan for the reaper (decision 1800). Counted
            # as claims under way meanwhile, or a claim at submission took their slots too
            # (decision 1803)
            self.queue.claims(name, len(claims))
            try:
                await self.scripts.acknowledged([])
            finally:
                self.queue.claims_ended(name, len(claims))
        for i, *claim in claims:
            self.take(name, consumer, streams[i], claim)
        return list(lasts) if read < want and not held else None

    def take(self, name: str, consumer: str, stream: str, claim: list[Any]) -> None:
        """A task this incarnation claimed (a claim's reply, scripts.READ_CLAIM) handed
        to the engine, here or at its submission (submitclaim.py)."""
        self.tasks.intake.adopt(*self.made(name, consumer, stream, claim))

    def made(self, name: str, consumer: str, stream: str, claim: list[Any]
             ) -> tuple[ClusterTask, str | None, str | None]:
        """The task of a claim's reply (READ_CLAIM's; an upgrade's new image reads its kept
        claims' in the same shape, scripts.HELD), with its caller's trace context."""
        (entry, task_id, token, base, raw, timeout, retries, prio, created, checkpoint,
         session, state) = claim[:12]
        traceparent, tracestate = records.trace_of(claim[12] if len(claim) > 12 else None)
        self.claimed += 1
        self.claims_in(stream)
        task = ClusterTask(task_id.decode(), name, msgspec.Raw(raw), int(prio),
                           float(timeout), int(retries), float(created), token=int(token),
                           base=int(base), entry=entry.decode(), stream=stream,
                           consumer=consumer, home=self.claims.home)
        task.options = records.options_in(claim[13] if len(claim) > 13 else None)
        if checkpoint:
            self.claims.steps.resume(task, checkpoint)
        if session:  # a turn of a session (sessions.py), with its state
            task.session, task.session_state = session.decode(), state
        task.watch(self.claims.watch)
        return task, traceparent, tracestate

