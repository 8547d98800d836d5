"""Temporal's side of both benches, on its dev server (bench/peers/servers.Temporal):
workflows run by a worker in the bench's process, unsandboxed (the workflows read the
clock only to report it, never to decide).

- `Steps`: `n` sequential no-op activities (or local activities), each timed in the
  workflow (µs): bench_durable_peers
- `Chain`: `n` activities, each fed the one before's list of wall clocks with its own
  appended: a chain's edges (bench_workflow_peers)
- `Fan`: `n` activities at once, then their results joined (the worker runs 4 at a time)
- `Pending`: `n` activities on a task queue no worker polls: the server's memory per
  pending child"""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta

from temporalio import activity, workflow

T = timedelta(seconds=60)


@activity.defn
async def noop(i: int) -> int:
    return i


@activity.defn
async def stamp(t: list[float]) -> list[float]:
    return [*t, time.time()]


@workflow.defn
class Steps:
    @workflow.run
    async def run(self, n: int, local: bool) -> list[float]:
        took = []
        for i in range(n):
            t0 = time.perf_counter()
            if local:
                await workflow.execute_local_activity(noop, i, start_to_close_timeout=T)
            else:
                await workflow.execute_activity(noop, i, start_to_close_timeout=T)
            took.append((time.perf_counter() - t0) * 1e6)
        return took


@workflow.defn
class Chain:
    @workflow.run
    async def run(self, n: int) -> list[float]:
        t: list[float] = []
        for _ in range(n):
            t = await workflow.execute_activity(stamp, t, start_to_close_timeout=T)
        return t


@workflow.defn
class Fan:
    @workflow.run
    async def run(self, n: int) -> int:
        outs = await asyncio.gather(*(
            workflow.execute_activity(noop, i, start_to_close_timeout=T) for i in range(n)))
        return await workflow.execute_activity(noop, len(outs), start_to_close_timeout=T)


@workflow.defn
class Pending:
    @workflow.run
    async def run(self, n: int) -> int:
        # scheduled 500 to a workflow task (a short timer between): 10,000 in one
        # activation overrun the SDK's 2 s deadlock detector on a loaded host
        futures = []
        for i in range(n):
            futures.append(workflow.start_activity(
                noop, i, task_queue="nobody", schedule_to_close_timeout=timedelta(hours=1)))
            if i % 500 == 499:
                await workflow.sleep(0.01)
        return len(await asyncio.gather(*futures))


WORKFLOWS = [Steps, Chain, Fan, Pending]
ACTIVITIES = [noop, stamp]
