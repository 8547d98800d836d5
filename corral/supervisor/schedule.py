"""Schedules (`[schedules.NAME]`, docs/workflows.md#schedules): `every = "30s"` or a
classic five-field `cron` (UTC; both day fields restricted: either matches, as cron does);
no I/O here (daemon/schedules.py fires them). Our own parser: a library's extensions would
be accepted here and refused by the next cron the operator reads it with.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal, NamedTuple

import msgspec

MAX_CATCH_UP = 1000
MIN_EVERY = 1.0  # seconds: a schedule is no busy loop
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_EVERY = re.compile(r"(\d+(?:\.\d+)?)(s|m|h|d)")


class ScheduleError(ValueError):
    """A schedule that cannot be kept."""


class ScheduleSpec(msgspec.Struct, forbid_unknown_fields=True, kw_only=True,
                   omit_defaults=True):
    agent: str | None = None  # a task of this agent ...
    workflow: str | None = None  # ... or a run of this workflow
    every: str | None = None  # "30s", "5m", "1h", "1d" ...
    cron: str | None = None  # ... or five cron fields (UTC)
    input: Any = None  # the task's (the run's) input
    # fires missed while the daemon was down: "skip" them, run "once", or "catch_up"
    # (each, up to max_catch_up, the latest ones)
    missed: Literal["skip", "once", "catch_up"] = "skip"
    max_catch_up: Annotated[int, msgspec.Meta(ge=1, le=MAX_CATCH_UP)] = 10
    timeout: Annotated[float, msgspec.Meta(gt=0)] | None = None  # each task's
    paused: bool = False  # declared paused (`corral schedules resume NAME` starts it)
    description: str = ""


class ScheduleRow(msgspec.Struct):
    """A schedule's durable part (`paused` None: as declared)."""

    last_fire: float
    fires: int = 0
    last_started: str | None = None
    paused: bool | None = None


# -- every --------------------------------------------------------------------------------
def parse_every(text: str) -> float:
    m = _EVERY.fullmatch(text.strip())
    if m is None:
        raise ScheduleError(f'every "{text}" is not a duration (examples: 30s, 5m, 1h, 1d)')
    seconds = float(m[1]) * _UNITS[m[2]]
    if seconds < MIN_EVERY:
        raise ScheduleError(f'every "{text}" is shorter than {MIN_EVERY:g} s')
    return seconds


# -- cron ---------------------------------------------------------------------------------
class _Field(NamedTuple):
    name: str
    low: int
    high: int


_FIELDS = (_Field("minute", 0, 59), _Field("hour", 0, 23), _Field("day", 1, 31),
           _Field("month", 1, 12), _Field("weekday", 0, 7))


def _number(text: str, field: _Field, cron: str) -> int:
    if not text.isdigit():
        raise ScheduleError(f'cron "{cron}": {field.name} "{text}" is not a number')
    n = int(text)
    if not field.low <= n <= field.high:
        raise ScheduleError(f'cron "{cron}": {field.name} {n} is out of range '
                            f"{field.low}-{field.high}")
    return n


def _parse_field(text: str, field: _Field, cron: str) -> frozenset[int]:
    values: set[int] = set()
    for part in text.split(","):
        span, _, step_text = part.partition("/")
        step = 1
        if step_text or part.endswith("/"):
            if not step_text.isdigit() or int(step_text) < 1:
                raise ScheduleError(f'cron "{cron}": {field.name} step "{step_text}" must '
                                    "be a whole number of at least 1")
            step = int(step_text)
        if span == "*":
            low, high = field.low, field.high
        elif "-" in span:
            a, _, b = span.partition("-")
            low, high = _number(a, field, cron), _number(b, field, cron)
            if low > high:
                raise ScheduleError(f'cron "{cron}": {field.name} range {span} is reversed')
        else:
            low = _number(span, field, cron)
            high = field.high if step_text else low
        values.update(range(low, high + 1, step))
    if field.name == "weekday" and 7 in values:
        values = (values - {7}) | {0}
    return frozenset(values)


class Cron:
    """Five cron fields, parsed; `next_after(t)`: the first minute after `t` they match."""

    __slots__ = ("any_day", "any_weekday", "days", "hours", "minutes", "months", "text",
                 "weekdays")

    def __init__(self, text: str) -> None:
        self.text = text
        fields = text.split()
        if len(fields) != 5:
            raise ScheduleError(f'cron "{text}": expected 5 fields (minute hour day month '
                                f"weekday), got {len(fields)}")
        parsed = [_parse_field(f, spec, text) for f, spec in zip(fields, _FIELDS, strict=True)]
        self.minutes, self.hours, self.days, self.months, self.weekdays = (
            sorted(parsed[0]), sorted(parsed[1]), parsed[2], parsed[3], parsed[4])
        self.any_day = fields[2].startswith("*")
        self.any_weekday = fields[4].startswith("*")
        if self._next_day(datetime(2000, 1, 1, tzinfo=UTC), 8 * 366) is None:
            raise ScheduleError(f'cron "{text}": no day matches it')

    def _day_matches(self, d: datetime) -> bool:
        if d.month not in self.months:
            return False
        dom = d.day in self.days
        dow = (d.isoweekday() % 7) in self.weekdays
        if self.any_day or self.any_weekday:  # one restricted (or none): both must match
            return dom and dow
        return dom or dow

    def _next_day(self, d: datetime, days: int) -> datetime | None:
        for _ in range(days):
            if self._day_matches(d):
                return d
            d = (d + timedelta(days=1)).replace(hour=0, minute=0)
        return None

    def next_after(self, t: float) -> float:
        at = datetime.fromtimestamp(t, UTC).replace(second=0, microsecond=0) + timedelta(
            minutes=1)
        while True:
            day = self._next_day(at, 8 * 366)
            assert day is not None  # checked in __init__: some day in 8 years matches
            same = day.date() == at.date()
            for h in self.hours:
                if same and h < at.hour:
                    continue
                for m in self.minutes:
                    if same and h == at.hour and m < at.minute:
                        continue
                    return day.replace(hour=h, minute=m).timestamp()
            at = (day + timedelta(days=1)).replace(hour=0, minute=0)


# -- a schedule, checked --------------------------------------------------------------------
class Every:
    __slots__ = ("seconds", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self.seconds = parse_every(text)

    def next_after(self, t: float) -> float:
        return t + self.seconds


class Schedule(NamedTuple):
    name: str
    spec: ScheduleSpec
    clock: Every | Cron

    @property
    def target(self) -> str:
        return f"agent {self.spec.agent}" if self.spec.agent else \
            f"workflow {self.spec.workflow}"

    @property
    def when(self) -> str:
        return f"every {self.spec.every}" if self.spec.every else f"cron {self.spec.cron}"

    def due(self, last: float, now: float, most: int) -> tuple[list[float], int]:
        """The fire times in (last, now], the latest `most` of them, and how many there
        were in all."""
        times: list[float] = []
        count = 0
        t = self.clock.next_after(last)
        if isinstance(self.clock, Every) and now - last > self.clock.seconds * (most + 1):
            # skip ahead in one step: a long downtime is no long loop
            n = int((now - last) // self.clock.seconds)
            count = n - most
            t = last + (n - most + 1) * self.clock.seconds
        while t <= now:
            count += 1
            times.append(t)
            if len(times) > most:
                times.pop(0)
            t = self.clock.next_after(t)
        return times, count


def compile_schedule(name: str, spec: ScheduleSpec, agents: Any = None,
                     workflows: Any = None) -> Schedule:
    """The schedule checked whole (against the agents and workflows there are, when
    given); ScheduleError says what is wrong."""
    at = f"schedules.{name}"
    if (spec.agent is None) == (spec.workflow is None):
        raise ScheduleError(f"{at}: give one of agent or workflow")
    if (spec.every is None) == (spec.cron is None):
        raise ScheduleError(f"{at}: give one of every or cron")
    if spec.agent is not None and agents is not None and spec.agent not in agents:
        raise ScheduleError(f"{at}: no agent named {spec.agent}")
    if spec.workflow is not None and workflows is not None and spec.workflow not in workflows:
        raise ScheduleError(f"{at}: no workflow named {spec.workflow}")
    try:
        clock: Every | Cron = Every(spec.every) if spec.every is not None else Cron(
            spec.cron or "")
    except ScheduleError as exc:
        raise ScheduleError(f"{at}: {exc}") from None
    return Schedule(name, spec, clock)
