"""Pull: for each agent this node runs, read the agent's streams (highest priority
first) only while a replica has a free slot, claim each entry read (a fence token, this
node as owner: scripts.CLAIM) and hand the task to the local engine, where it waits for
the replica like any task (TaskManager.adopt).

A node reads at most what it can start, so the least loaded node takes the work. An entry
read but not claimed when its reader dies stays pending with a dead consumer: the reaper
queues it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

import msgspec
from redis.exceptions import RedisError, ResponseError

from ..supervisor.tasks import TaskManager
from ..supervisor.tasks.host import TaskHost
from ..timeouts import cancel_all, within
from . import records
from .connection import why
from .keys import GROUP, Keys
from .membership import Membership
from .queue import ClusterQueue, ClusterTask
from .scripts import Scripts


class Puller:
    def __init__(self, redis: Any, scripts: Scripts, keys: Keys, membership: Membership,
                 queue: ClusterQueue, host: TaskHost, tasks: TaskManager, beat: float,
                 report: Callable[[str], None]) -> None:
        self.redis = redis
        self.scripts = scripts
        self.keys = keys
        self.membership = membership
        self.queue = queue
        self.host = host
        self.tasks = tasks
        self.beat = beat
        self.report = report
        self.loops: dict[str, asyncio.Task[None]] = {}
        self._prios: dict[str, tuple[float, list[str]]] = {}  # agent -> (when, streams)
        self._read: set[str] = set()
        self.claimed = 0  # tasks this node claimed
        # told of each task claimed, before the engine has it (the node watches its progress)
        self.on_claim: Callable[[ClusterTask], None] = lambda task: None
        # a retried claim, given the checkpoint its CLAIM read (steps.py)
        self.resume: Callable[[ClusterTask, bytes], None] = lambda task, cp: None
        self.closed = False
        self.paused = False  # draining: nothing more is read
        self.reads = 0  # XREADGROUP rounds that ended in claims (or in nothing)
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
        """Read nothing more, for good."""
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
                streams = await self._streams(name)
                got: list[tuple[str, bytes, bytes]] = []
                for stream in streams:  # highest priority first
                    reply = await self.redis.xreadgroup(GROUP, consumer, {stream: ">"},
                                                        count=want - len(got))
                    got += _entries(reply)
                    if len(got) >= want:
                        break
                if not got:
                    reply = await self.redis.xreadgroup(
                        GROUP, consumer, dict.fromkeys(streams, ">"), count=1, block=block)
                    got = _entries(reply)
                self.reads += 1
                self.read += len(got)
                if got:
                    # a blocking read that came back empty may have missed a priority
                    # that appeared meanwhile: look again before the next one
                    await self._claim(name, consumer, got)
                else:
                    self._prios.pop(name, None)
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
        """Every stream this node has read."""
        return sorted(self._read)

    async def _streams(self, name: str) -> list[str]:
        """The agent's streams, highest priority first; read again at most every beat
        (or after a blocking read found nothing). The default priority's is always
        among them, made here with its group if no task has gone to it yet: the blocking
        read then waits on it, and the first task submitted to an idle cluster wakes it
        (with no stream to wait on, a node slept a beat, and a burst waited for it)."""
        now = time.monotonic()
        known = self._prios.get(name)
        if known is None or now - known[0] > self.beat:
            prios = {int(p) for p in await self.redis.zrange(self.keys.priorities(name),
                                                              0, -1)}
            if 0 not in prios:
                await self._make_default(name)
            known = self._prios[name] = (now, [self.keys.stream(name, p)
                                               for p in sorted(prios | {0}, reverse=True)])
            self._read.update(known[1])
        return known[1]

    async def _make_default(self, name: str) -> None:
        """The default priority's stream and its group (as the submit script makes them:
        from the stream's start), unless they exist."""
        try:
            await self.redis.xgroup_create(self.keys.stream(name, 0), GROUP, "0",
                                           mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def _claim(self, name: str, consumer: str,
                     got: list[tuple[str, bytes, bytes]]) -> None:
        """Claim what was read, in one round trip, and hand each task to the engine."""
        agent = self.host.agents.get(name)
        if agent is None or consumer != self.membership.consumer:
            return  # fenced since it was read: the reaper gives it back to the cluster
        node = self.membership.node
        now = time.time()
        attempt = records.claimed_attempt(node, now)
        claims = await self.scripts.run([
            (self.scripts.claim,
             [self.keys.task(tid.decode()), self.keys.attempts(tid.decode()),
              self.keys.fence, stream],
             [consumer, node, repr(now), entry, attempt, agent.spec.retries,
              repr(agent.spec.task_timeout)])
            for stream, entry, tid in got])
        for (stream, entry, task_id), claimed in zip(got, claims, strict=True):
            if isinstance(claimed, Exception):
                # left pending with this node: given back as an orphan (reaper.py)
                self.report(f"cluster: claiming task {task_id.decode()}: {claimed}")
                continue
            if not claimed:
                continue
            token, base, raw, timeout, retries, prio, created, *more = claimed
            self.claimed += 1
            task = ClusterTask(task_id.decode(), name, msgspec.Raw(raw), int(prio),
                               float(timeout), int(retries), float(created),
                               token=int(token), base=int(base), entry=entry.decode(),
                               stream=stream, consumer=consumer)
            if more and more[0]:
                self.resume(task, more[0])
            if len(more) == 3:  # a turn of a session (sessions.py), with its state
                task.session, task.session_kept = more[1].decode(), more[2]
            self.on_claim(task)
            self.tasks.adopt(task)


def _entries(reply: Any) -> list[tuple[str, bytes, bytes]]:
    """(stream, entry id, task id) of an XREADGROUP reply."""
    out = []
    for stream, entries in reply or ():
        name = stream.decode() if isinstance(stream, bytes) else stream
        for entry_id, fields in entries:
            task_id = fields.get(b"task") if fields else None
            if task_id is not None:
                out.append((name, entry_id, task_id))
    return out
