"""Token and cost budgets: what agents report they spent on their models
(`usage/report`), counted per agent, per task and per model, and the gate that holds an
agent's waiting tasks while it is over a budget.

Windows are sliding, in buckets; a gate that shuts arms one timer for when enough of the
window has left it (no polling). A gateway call's estimate is held while in flight
(`reserve`), for the gateway's admission alone: the gate of queued tasks judges what was
used (a timer cannot tell when a call ends).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec

from ...taskviews import ModelUsage
from ...text import iso_time
from ...workerproto import BadParams, UsageReportParams

if TYPE_CHECKING:
    from ..replica import Replica
    from .host import AgentLike
    from .model import Task

MINUTE = 60.0
DAY = 86400.0
UNKNOWN_MODEL = "unknown"  # a report that names no model
# the most one report may say (a sum of them stays exact in a float; an integer of 400
# digits, which JSON allows, would not even convert)
MAX_TOKENS = 10**15
MAX_COST = 1e12
# the least a re-armed gate timer waits: a timer that fires a hair before the edge (the
# loop's clock is not the wall clock) waits again briefly rather than spinning
MIN_WAIT = 0.005


class SumWindow:
    """A sum over the last `length` seconds, kept in buckets of `step` seconds."""

    __slots__ = ("buckets", "length", "step", "total")

    def __init__(self, length: float, step: float) -> None:
        self.length = length
        self.step = step
        self.buckets: deque[list[float]] = deque()  # [start, amount], oldest first
        self.total = 0.0

    def add(self, amount: float, when: float) -> None:
        start = math.floor(when / self.step) * self.step
        buckets = self.buckets
        if buckets and buckets[-1][0] == start:
            buckets[-1][1] += amount
        elif not buckets or buckets[-1][0] < start:
            buckets.append([start, amount])
        else:  # an older time (usage restored after a restart): in its place
            at = next(i for i, b in enumerate(buckets) if b[0] >= start)
            if buckets[at][0] == start:
                buckets[at][1] += amount
            else:
                buckets.insert(at, [start, amount])
        self.total += amount

    def used(self, now: float) -> float:
        buckets = self.buckets
        gone = now - self.length - self.step
        while buckets and buckets[0][0] <= gone:
            self.total -= buckets.popleft()[1]
        if not buckets:
            self.total = 0.0  # no drift from float sums
        return self.total

    def below_at(self, limit: float, now: float) -> float:
        """When the sum will be under `limit` (with nothing more added); `now` if it is."""
        left = self.used(now)
        for start, amount in self.buckets:
            if left < limit:
                break
            left -= amount
            now = start + self.step + self.length
        return now


class BudgetHold(msgspec.Struct):
    """Why an agent's waiting tasks are held, and until when."""

    budget: str  # the key: tokens_per_minute, tokens_per_day, max_cost_usd_per_day
    limit: float
    used: float
    until: float  # wall time
    reserved: float = 0.0  # what calls in flight held, when they made the limit reached

    def text(self) -> str:
        return (f"budget: {self.budget} {self.limit:g} used {self.used:g}, next at "
                f"{iso_time(self.until)}")


class Budget:
    """The windows of one agent, or of a group of agents that share limits."""

    __slots__ = ("day_cost", "day_tokens", "minute_tokens", "reserved_cost",
                 "reserved_tokens")

    def __init__(self) -> None:
        self.minute_tokens = SumWindow(MINUTE, 1.0)
        self.day_tokens = SumWindow(DAY, MINUTE)
        self.day_cost = SumWindow(DAY, MINUTE)
        self.reserved_tokens = 0  # held by model calls in flight (Reservation)
        self.reserved_cost = 0.0

    def add(self, tokens: int, cost_usd: float, when: float, *, day_only: bool = False
            ) -> None:
        """`day_only`: usage too old for the minute's window (restored after a restart),
        which would only sit in it until its next look."""
        if tokens:
            if not day_only:
                self.minute_tokens.add(tokens, when)
            self.day_tokens.add(tokens, when)
        if cost_usd:
            self.day_cost.add(cost_usd, when)

    def held(self, tokens_per_minute: float, tokens_per_day: float,
             max_cost_usd_per_day: float, now: float, *, reserved: bool = False
             ) -> BudgetHold | None:
        """The limit holding new work longest, or None (0: no limit); with `reserved`, calls in
        flight count too (`until`: when the window alone has room beside them, if ever)."""
        worst: BudgetHold | None = None
        for key, limit, window, held in (
                ("tokens_per_minute", tokens_per_minute, self.minute_tokens,
                 self.reserved_tokens),
                ("tokens_per_day", tokens_per_day, self.day_tokens, self.reserved_tokens),
                ("max_cost_usd_per_day", max_cost_usd_per_day, self.day_cost,
                 self.reserved_cost)):
            if limit <= 0:
                continue
            used = window.used(now)
            if used >= limit:
                until = window.below_at(limit, now)
                hold = BudgetHold(key, limit, round(used, 6), until)
            elif reserved and used + held >= limit:
                until = window.below_at(limit - held, now) if held < limit else math.inf
                hold = BudgetHold(key, limit, round(used, 6), until, round(held, 6))
            else:
                continue
            if worst is None or hold.until > worst.until:
                worst = hold
        return worst

    def figures(self, now: float) -> dict[str, float]:
        return {"tokens_last_minute": self.minute_tokens.used(now),
                "tokens_last_day": self.day_tokens.used(now),
                "cost_usd_last_day": round(self.day_cost.used(now), 6)}


class Reservation(msgspec.Struct):
    """What a model call in flight holds of some budgets' windows, until `release` (at
    its end: once, however often called). A Struct: made a call with no `__init__` of
    its own."""

    tokens: int
    cost: float
    windows: list[Budget] = []  # (a new list each, as msgspec copies an empty default)

    def hold(self, windows: list[Budget]) -> None:
        self.release()
        self.windows = windows
        for w in windows:
            w.reserved_tokens += self.tokens
            w.reserved_cost += self.cost

    def release(self) -> None:
        if not self.windows:
            return  # (most calls': none held, no list made)
        for w in self.windows:
            w.reserved_tokens -= self.tokens
            w.reserved_cost = max(0.0, w.reserved_cost - self.cost)  # no float drift
        self.windows = []


class _Tally:
    """An agent's usage of one model within one second of the wall clock, counted once
    for all its calls (a model call counted into its agent's totals, its model's and its
    three windows was a tenth of the gateway's Python a call); folded into them when the
    next call is of another second or model, or when they are read."""

    __slots__ = ("cost", "input", "model", "output", "reports", "second")

    def __init__(self, second: float, model: str, inp: int, out: int, cost: float) -> None:
        self.second, self.model = second, model
        self.input, self.output, self.cost, self.reports = inp, out, cost, 1


class BadUsage(ValueError):
    """A usage/report that is not counted; the message says why."""


def _count(key: str, value: int | float | None) -> int:
    if type(value) is int and 0 <= value <= MAX_TOKENS:  # nearly every report: one test
        return value
    if value is None:
        return 0
    if isinstance(value, float) and not value.is_integer():
        raise BadUsage(f"{key} must be a whole number, not {value!r:.40}")
    if value < 0:
        raise BadUsage(f"{key} must not be negative ({value!r:.40})")
    if value > MAX_TOKENS:
        raise BadUsage(f"{key} must be at most {MAX_TOKENS:.0e} ({value!r:.40})")
    return int(value)


def parse_report(p: UsageReportParams) -> tuple[str, int, int, float, str]:
    """(task_id, input_tokens, output_tokens, cost_usd, model) of a report, or BadUsage."""
    task_id = p.task_id
    if not task_id:
        raise BadUsage("task_id must be a task's id")
    inp, out = _count("input_tokens", p.input_tokens), _count("output_tokens", p.output_tokens)
    cost = p.cost_usd
    if cost is None:
        cost = 0.0
    elif cost != cost:
        raise BadUsage(f"cost_usd must be a number, not {cost!r:.40}")
    elif cost < 0:
        raise BadUsage(f"cost_usd must not be negative ({cost!r:.40})")
    elif cost > MAX_COST:
        raise BadUsage(f"cost_usd must be at most {MAX_COST:.0e} ({cost!r:.40})")
    model = p.model or UNKNOWN_MODEL
    if len(model) > 200:
        raise BadUsage(f"model must be a name of at most 200 characters, not {model!r:.40}")
    return task_id, inp, out, float(cost), model


def no_group(agent: str) -> tuple[str, int] | None:
    """No agent shares a budget (Budgets.shared while no tenant sets one)."""
    return None


class Budgets:
    """Every agent's usage and windows, the gate, and its timers. `reopen(agent)`: a held
    agent's window has room again (the dispatcher's pump); `depth(agent)`: its tasks
    waiting (a hold is shown only while some wait); `tell`: a hold's start, logged."""

    def __init__(self, find: Callable[[str], Task | None],
                 reopen: Callable[[str], None],
                 depth: Callable[[str], int] = lambda _: 1,
                 tell: Callable[[AgentLike, str], None] = lambda _, __: None,
                 groups: Callable[[str], tuple[str, int] | None] = no_group) -> None:
        """`groups`: the budget an agent shares with others (its tenant's), consulted
        only while `sharing` (some tenant shares one)."""
        self.find = find
        self.reopen = reopen
        self.depth = depth
        self.tell = tell
        self._usage: dict[str, ModelUsage] = {}  # since the daemon started
        self._windows: dict[str, Budget] = {}
        self._tallies: dict[str, _Tally] = {}  # an agent's usage not yet in those (`_fold`)
        self.holding: dict[str, BudgetHold] = {}  # agents held now, as last judged
        self._timers: dict[str, tuple[float, asyncio.TimerHandle]] = {}
        self.bad_reports = 0
        self.groups = groups
        self.sharing = False

    # -- reports ------------------------------------------------------------------------
    def refused(self, r: Replica, exc: BadParams) -> None:
        """A usage/report whose params are not of its shape: counted as ignored."""
        self.bad_reports += 1

    def on_report(self, r: Replica, params: UsageReportParams) -> Task | None:
        """`usage/report` from a worker: counted, or counted bad and noted in the replica's log."""
        try:
            task_id, inp, out, cost, model = parse_report(params)
            task = self.find(task_id)
            if task is None or task.agent != r.name:
                raise BadUsage(f"task {task_id!r:.60} is not a task of agent {r.name}")
        except BadUsage as exc:
            self.bad_reports += 1
            r.note(f"ignored usage/report: {exc}")
            return None
        self.count(task, inp, out, cost, model, time.time())
        return task

    def count(self, task: Task, inp: int, out: int, cost: float, model: str,
              when: float, *, agent: bool = True) -> None:
        """Usage of `task`, and of its agent's budgets unless `agent` is False (the agent
        the usage was of is gone: `ModelBudget._count`)."""
        used = task.usage
        if used is None:
            used = task.usage = ModelUsage()
        used.add_model(model, inp, out, cost)
        if agent:
            self.count_agent(task.agent, inp, out, cost, model, when)

    def count_agent(self, name: str, inp: int, out: int, cost: float, model: str,
                    when: float) -> None:
        """Usage of the agent `name` (and its group's), of no task: a model call through
        corral's model gateway that no task attempt is known to have made. Its own totals
        and windows take it with its other usage of the same second and model, at once
        (`_fold`): the same sums, in the same windows' buckets."""
        second = when // 1.0  # (a bucket of the minute's window, and inside one of the day's)
        kept = self._tallies.get(name)
        if kept is not None and kept.second == second and kept.model == model:
            kept.input += inp
            kept.output += out
            kept.cost += cost
            kept.reports += 1
        else:
            if kept is not None:
                self._add(name, kept)
            self._tallies[name] = _Tally(second, model, inp, out, cost)
        group = self.groups(name) if self.sharing else None
        if group is not None:
            self.window(group[0]).add(inp + out, cost, when)

    def _add(self, name: str, kept: _Tally) -> None:
        agent = self._usage.get(name)
        if agent is None:
            agent = self._usage[name] = ModelUsage()
        agent.add_model(kept.model, kept.input, kept.output, kept.cost, kept.reports)
        window = self._windows.get(name)
        if window is None:
            window = self._windows[name] = Budget()
        window.add(kept.input + kept.output, kept.cost, kept.second)

    def _fold(self, name: str) -> None:
        """The agent's usage counted and not yet added, added (before its totals or
        windows are read)."""
        kept = self._tallies.pop(name, None)
        if kept is not None:
            self._add(name, kept)

    @property
    def usage(self) -> dict[str, ModelUsage]:
        """Every agent's usage since the daemon started."""
        for name in list(self._tallies):
            self._fold(name)
        return self._usage

    @property
    def windows(self) -> dict[str, Budget]:
        """Every agent's and group's windows."""
        for name in list(self._tallies):
            self._fold(name)
        return self._windows

    def window(self, agent: str) -> Budget:
        self._fold(agent)
        w = self._windows.get(agent)
        if w is None:
            w = self._windows[agent] = Budget()
        return w

    def restore(self, agent: str, tokens: int, cost_usd: float, when: float) -> None:
        """Usage a previous daemon counted: into the windows only (totals are since this start)."""
        self.window(agent).add(tokens, cost_usd, when,
                               day_only=when < time.time() - MINUTE - 1.0)

    # -- the gate -----------------------------------------------------------------------
    def holds(self, agent: AgentLike, now: float | None = None) -> bool:
        """True while the agent is over a budget at `now` (the pump's instant: a task
        never shows a start before the edge its gate opened at); a timer reopens it."""
        if not (self._windows or self._tallies):
            return False  # nothing reported yet, so nothing over a budget (a fleet's start)
        spec = agent.spec
        name = agent.name
        group = self.groups(name) if self.sharing else None
        if group is not None and self._holds_group(
                agent, *group, time.time() if now is None else now):
            return True
        if not (spec.tokens_per_minute or spec.tokens_per_day or spec.max_cost_usd_per_day):
            if self.holding:
                self.holding.pop(name, None)  # its budgets were taken away (a reload)
            return False  # (the dispatch path of every agent without a budget)
        self._fold(name)
        w = self._windows.get(name)
        if w is None:
            return False
        if now is None:
            now = time.time()
        held = w.held(spec.tokens_per_minute, spec.tokens_per_day,
                      spec.max_cost_usd_per_day, now)
        return self._hold(agent, name, held, now)

    def _holds_group(self, agent: AgentLike, key: str, tokens_per_minute: int,
                     now: float) -> bool:
        """The agent's group's shared budget, held under the group's key (its timer reopens all)."""
        w = self._windows.get(key)
        if w is None:
            return False
        held = w.held(tokens_per_minute, 0, 0, now)
        if held is not None:
            held.budget = f"{key} {held.budget}"  # "tenant acme tokens_per_minute"
        return self._hold(agent, key, held, now)

    def _hold(self, agent: AgentLike, name: str, held: BudgetHold | None, now: float) -> bool:
        if held is None:
            self.holding.pop(name, None)
            return False
        if name not in self.holding:  # once a hold, not at every look
            self.tell(agent, f"{held.text()}: its tasks wait until then")
        self.holding[name] = held
        armed = self._timers.get(name)
        if armed is None or armed[0] != held.until:
            if armed is not None:
                armed[1].cancel()
            handle = asyncio.get_running_loop().call_later(
                max(held.until - now, MIN_WAIT), self._reopen, name)
            self._timers[name] = (held.until, handle)
        return True

    def _reopen(self, name: str) -> None:
        self._timers.pop(name, None)
        self.reopen(name)  # judged again by the pump, if tasks wait and a slot is free
        if name not in self._timers:  # not held again (a timer a hair early would be)
            self.holding.pop(name, None)

    def over(self, agent: AgentLike) -> BudgetHold | None:
        """The budget the agent is over now, its group's first, or None (unlike `holds`, silent)."""
        now = time.time()
        group = self.groups(agent.name) if self.sharing else None
        shared = self._windows.get(group[0]) if group is not None else None
        if group is not None and shared is not None:
            held = shared.held(group[1], 0, 0, now)
            if held is not None:
                held.budget = f"{group[0]} {held.budget}"
                return held
        self._fold(agent.name)
        spec, own = agent.spec, self._windows.get(agent.name)
        if own is None:
            return None
        return own.held(spec.tokens_per_minute, spec.tokens_per_day,
                        spec.max_cost_usd_per_day, now)

    def reserve(self, agent: AgentLike, kept: Reservation) -> BudgetHold | None:
        """A model call's estimate (`kept`) held against the agent's budgets and its
        group's; or the budget that what was used and calls in flight hold reach."""
        if kept.windows:
            kept.release()
        group = self.groups(agent.name) if self.sharing else None
        spec = agent.spec
        if group is None and not (spec.tokens_per_minute or spec.tokens_per_day
                                  or spec.max_cost_usd_per_day):
            return None  # (most calls: no budget to hold the estimate against)
        now = time.time()
        windows: list[Budget] = []
        if group is not None:
            shared = self.window(group[0])
            held = shared.held(group[1], 0, 0, now, reserved=True)
            if held is not None:
                held.budget = f"{group[0]} {held.budget}"
                return held
            windows.append(shared)
        if spec.tokens_per_minute or spec.tokens_per_day or spec.max_cost_usd_per_day:
            own = self.window(agent.name)
            held = own.held(spec.tokens_per_minute, spec.tokens_per_day,
                            spec.max_cost_usd_per_day, now, reserved=True)
            if held is not None:
                return held
            windows.append(own)
        if windows:  # (none: nothing to hold, nothing held)
            kept.hold(windows)
        return None

    def waiting(self, agent: str) -> str | None:
        """Why the agent's queued tasks wait, if a budget holds them (and some wait)."""
        held = self.holding.get(agent)
        group = self.groups(agent) if self.sharing else None
        if held is None and group is not None:
            held = self.holding.get(group[0])
        return None if held is None or not self.depth(agent) else held.text()

    # -- shown --------------------------------------------------------------------------
    def stats(self, agent: str) -> dict[str, Any] | None:
        """The agent's usage and windows (`corral stats`); None if it never reported."""
        self._fold(agent)
        w = self._windows.get(agent)
        if w is None:
            return None
        used = self._usage.get(agent) or ModelUsage()  # (or restored windows only)
        return {**msgspec.structs.asdict(used),
                "models": {m: msgspec.structs.asdict(u) for m, u in used.models.items()},
                **w.figures(time.time()), "waiting": self.waiting(agent)}

    def forget(self, agent: str) -> None:
        self._tallies.pop(agent, None)
        self._usage.pop(agent, None)
        self._windows.pop(agent, None)
        self.holding.pop(agent, None)
        armed = self._timers.pop(agent, None)
        if armed is not None:
            armed[1].cancel()

    def close(self) -> None:
        for _, handle in self._timers.values():
            handle.cancel()
        self._timers.clear()

