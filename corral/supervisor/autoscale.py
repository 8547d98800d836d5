"""The autoscaler's decider (docs/elastic.md): pure, no I/O, fed what the loop sees,
giving a replica count and the reason in words. Each window keeps its wishes in a
monotone deque, so a decision costs O(1) amortised (a thousand agents are fed a second).
"""

from __future__ import annotations

import math
from collections import deque
from typing import NamedTuple

from ..text import plural


class Policy(NamedTuple):
    """An agent without autoscale has min = max = its replica count."""

    min_replicas: int
    max_replicas: int
    target_load: float = 1.0
    upscale_delay: float = 2.0
    downscale_delay: float = 120.0
    max_step_up: int = 0  # 0: no bound
    idle_after: float = 0.0  # with min_replicas = 0; 0: never sleeps for it
    hibernate_after: float = 0.0  # 0: never

    @property
    def sleep_after(self) -> float:
        """Seconds idle before the agent goes to zero (0: never)."""
        idle = self.idle_after if self.min_replicas == 0 else 0.0
        times = [t for t in (idle, self.hibernate_after) if t > 0]
        return min(times) if times else 0.0

    @property
    def awake(self) -> int:
        """The count an agent wakes to (and the least while it has work)."""
        return max(1, self.min_replicas)


class ScaleDecision(NamedTuple):
    desired: int
    reason: str
    hibernate: bool = False  # going to zero by hibernate_after: checkpoint first


class ExtremumWindow:
    """The least (or greatest) of the values seen in the last `span` seconds, a value
    holding until the next one's: segments (start, value), strictly monotone, a new value
    absorbing those at the back it beats; the front is the answer."""

    __slots__ = ("greatest", "span", "values")

    def __init__(self, span: float, greatest: bool) -> None:
        self.span = span
        self.greatest = greatest
        self.values: deque[tuple[float, int]] = deque()

    def add(self, now: float, value: int) -> int:
        vs = self.values
        start = now
        while vs and (vs[-1][1] <= value if self.greatest else vs[-1][1] >= value):
            start = vs.pop()[0]
        vs.append((start, value))
        edge = now - self.span
        # the front is out once the next segment began at or before the window's start
        while len(vs) > 1 and vs[1][0] <= edge:
            vs.popleft()
        return vs[0][1]

    def reset(self) -> None:
        self.values.clear()


class Decider:
    """One agent's decisions; `decide` once per tick of the loop, at most."""

    __slots__ = ("awake", "changed", "first", "panic", "policy", "sleep_after", "stable")

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.awake = policy.awake  # (the policy's derived figures, made once)
        self.sleep_after = policy.sleep_after
        self.panic = ExtremumWindow(policy.upscale_delay, greatest=False)
        self.stable = ExtremumWindow(policy.downscale_delay, greatest=True)
        self.first: float | None = None  # the first wish's time: is the panic window full?
        self.changed = float("-inf")  # when it last decided a change of the count

    def decide(self, now: float, load: int, current: int, idle_for: float) -> ScaleDecision:
        """`load`: tasks running + queued; `current`: replicas now; `idle_for`: seconds
        since the agent last had work (0 while it has some)."""
        p = self.policy
        # while awake, never fewer than one: going to zero is the sleep's alone
        wish = self.awake
        if load:
            wish = min(p.max_replicas, max(wish, math.ceil(load / p.target_load)))
        if self.first is None:
            self.first = now
        pv, sv = self.panic.values, self.stable.values
        if len(pv) == 1 and len(sv) == 1 and pv[0][1] == wish == sv[0][1]:
            low = high = wish  # the same wish all along (an idle fleet's every tick)
        else:
            low = self.panic.add(now, wish)
            high = self.stable.add(now, wish)
        if current == 0:
            if load:
                self.restart(now, wish)
                return ScaleDecision(max(1, min(wish, self._step(0))),
                                     f"woken by {plural(load, 'task')}")
            return ScaleDecision(0, "asleep")
        sleep = self.sleep_after
        if sleep and not load and idle_for >= sleep:
            hib = p.hibernate_after > 0 and idle_for >= p.hibernate_after
            why = "hibernate_after" if hib else "idle_after"
            return ScaleDecision(0, f"no work for {why} ({sleep:g} s): to zero", hibernate=hib)
        if current < p.min_replicas:
            return ScaleDecision(p.min_replicas, f"below min_replicas {p.min_replicas}")
        if current > p.max_replicas:
            return ScaleDecision(p.max_replicas, f"above max_replicas {p.max_replicas}")
        if low > current and now - self.first >= p.upscale_delay:
            up = min(low, self._step(current))
            self.changed = now
            return ScaleDecision(up, f"load {load} over {plural(current, 'replica')} "
                                f"(target_load {p.target_load:g}) for {p.upscale_delay:g} s")
        # a fall only a whole stable window after the last change: a load that falls in
        # steps (or swings) moves the count down at most once per window
        if high < current and now - self.changed >= p.downscale_delay:
            self.changed = now
            return ScaleDecision(high, f"load at most {p.target_load * high:g} for "
                                  f"{p.downscale_delay:g} s (target_load {p.target_load:g})")
        return ScaleDecision(current, "steady")

    def _step(self, current: int) -> int:
        step = self.policy.max_step_up
        return current + step if step else self.policy.max_replicas

    def restart(self, now: float, wish: int) -> None:
        """Forget the windows (a wake: the time asleep says nothing of the load)."""
        self.panic.reset()
        self.stable.reset()
        self.first = self.changed = now
        self.panic.add(now, wish)
        self.stable.add(now, wish)
