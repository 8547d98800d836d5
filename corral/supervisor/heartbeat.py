"""The heartbeat loop: every live process visited once per interval (pinged, sampled,
its deadlines checked), the loop's own stalls measured, re-parented zombies reaped and
the tenants' memory and CPU quotas applied once per round; a Tick on the stream after
each round."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable

from .containment import Containment
from .lifecycle import Cause
from .listening import ListeningClock
from .process_replica import ProcessReplica
from .quotas import Tenancy
from .stats import HeartbeatWork
from .stream import ALSO_STREAMED, TICK, Stall, Stream
from .tuning import Tuning

log = logging.getLogger("corral.supervisor")

# the heartbeat's visits per turn of the loop
HEARTBEAT_SLICE = 64
# usage samples and looks at parked workers a second for the whole fleet: a floor, then
# the square root of the fleet, so an idle thousand costs little more than a hundred
BUDGET_FLOOR = 50.0
BUDGET_GROWTH = 1.6
FDS_EVERY = 5


def fleet_budget(n: int) -> float:
    """Samples (and looks) a second for a fleet of `n` live processes."""
    return max(BUDGET_FLOOR, BUDGET_GROWTH * math.sqrt(n))


class Heartbeat:
    def __init__(self, replicas: Callable[[], list[ProcessReplica]], *, tuning: Tuning,
                 listening: ListeningClock, work: HeartbeatWork, containment: Containment,
                 tenancy: Tenancy, stream: Stream) -> None:
        self.replicas = replicas  # every live process: agents' replicas, tool servers
        self.tuning = tuning
        self.listening = listening
        self.work = work
        self.containment = containment
        self.tenancy = tenancy
        self.stream = stream

    async def run(self) -> None:
        """Visit every live replica once per interval, in slices of HEARTBEAT_SLICE spread
        over it; sample usage and look at parked ones `fleet_budget` times a second in all."""
        loop = asyncio.get_running_loop()
        round_start = prev_end = loop.time()
        rnd = 0
        work = self.work
        while True:
            interval = self.tuning.heartbeat_interval
            reps = self.replicas()
            n = len(reps)
            slices = max(1, -(-n // HEARTBEAT_SLICE))
            # each replica is sampled every `every` rounds; fds (a directory listing, the
            # dearest sample) every FDS_EVERY of its samples
            budget = fleet_budget(n)
            every = max(1, -(-n // max(1, int(budget * interval))))
            work.look_every = n / budget
            for i in range(slices):
                due = round_start + i * interval / slices
                await asyncio.sleep(max(0.0, due - loop.time()))
                woke = loop.time()
                # a slice woken late is a stall of corral, taken off every worker's
                # silence; counted from the end of the previous slice, so that slices run
                # back to back after one stall do not count it again
                stall = self.listening.tick(woke - max(due, prev_end))
                if stall:
                    log.warning("event loop stalled for %.2f s; not counted as silence of any "
                                "worker", stall, extra=ALSO_STREAMED)
                    self.stream.emit(Stall(stall))
                t0 = time.perf_counter()
                now = self.listening.now()
                sampled = passed = 0
                for j in range(i * HEARTBEAT_SLICE, min(n, (i + 1) * HEARTBEAT_SLICE)):
                    r = reps[j]
                    turn = (j + rnd) % every == 0
                    if now < r.quiet_until and not turn and r.undisturbed():
                        passed += 1  # found parked, nothing asked of it since
                        continue
                    sampled += turn
                    try:
                        r.heartbeat(now, r.spec.heartbeat_timeout or self.tuning.heartbeat_timeout,
                                    turn, turn and (rnd // every) % FDS_EVERY == 0)
                    except Exception:
                        log.exception("heartbeat of %s failed", r.label)
                spent = time.perf_counter() - t0
                work.slices += 1
                visits = min(n, (i + 1) * HEARTBEAT_SLICE) - i * HEARTBEAT_SLICE - passed
                work.visits += visits
                work.most_visits = max(work.most_visits, visits)
                work.samples += sampled
                work.busy_seconds += spent
                work.longest_slice = max(work.longest_slice, spent)
                prev_end = loop.time()
            work.rounds += 1
            work.replicas = n
            work.slices_per_round = slices
            work.sample_every_rounds = every
            rnd += 1
            round_start += interval
            if round_start < loop.time():  # behind (a stalled loop): start afresh
                round_start = loop.time()
            # once per round: reap re-parented zombies; a /proc pass if an exit asked
            self.containment.min_sweep_interval = interval
            try:
                self.containment.tick()
            except Exception:
                log.exception("containment tick failed")
            # tenants' memory and CPU quotas, on this round's samples (quotas.py)
            for r, why in self.tenancy.caps():
                r.take_down(why, graceful=True, cause=Cause.CAP)
            self.stream.emit(TICK)
