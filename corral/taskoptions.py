"""A task's submission options: one typed value, defined here once, that travels whole
from the CLI and the REST API through the fronts, the task manager, the journal (one
column) and a cluster's record. Adding an option is adding a field here: the control
methods' params (methods.TaskParams), the CLI's flags and the REST body are read off
these fields; a transport that does not carry an option (a cluster's queue, a team's
call) refuses it by its name. `TaskFilters` are the listings' filters on them."""

from __future__ import annotations

import operator
import re
from typing import Annotated, Any, Literal, Protocol

import msgspec
import msgspec.inspect as mi

MAX_DELAY = 366 * 86400.0  # the furthest a task may be delayed (a year and a day)
MAX_TASK_RETRIES = 100  # retries a task may ask for (its agent's `retries` is not bounded)
MAX_TAGS = 16  # tags a task may carry (max_tags)
MAX_TAG_LENGTH = 64  # characters of one tag (max_tag_length)
MAX_IDEMPOTENCY_KEY = 255  # characters of an idempotency key (the header's bound)
SessionName = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$")]
RetryOutcome = Literal["lost", "failed", "timed_out"]  # as AgentSpec's
# a tag as a shell, a URL's query and a log line take it without quoting
TAG_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:=/@+-]*$"
_TAG = re.compile(TAG_PATTERN)


def _cli(flag: str | None = None, *, parse: str | None = None, metavar: str | None = None
         ) -> dict[str, Any]:
    """How the CLI spells a field (cli/taskflags.py reads it): its flag when not the
    field's name, a parser of its text (`duration`), its metavar."""
    return {"cli": {"flag": flag, "parse": parse, "metavar": metavar}}


class AgentRetries(Protocol):
    """What a task's retry options fall back on: its agent's spec (config.AgentSpec)."""

    @property
    def retry_on(self) -> tuple[str, ...]: ...

    @property
    def retry_lost(self) -> int: ...


class RetryOptions(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True,
                  omit_defaults=True):
    """A task's own retry policy, in place of its agent's (a field left out: the
    agent's)."""

    retries: Annotated[int, msgspec.Meta(
        ge=0, le=MAX_TASK_RETRIES,
        description="Times to run it again after an attempt ends in a retried outcome "
                    "(default: the agent's retries).")] | None = None
    retry_on: Annotated[tuple[RetryOutcome, ...], msgspec.Meta(
        description="Outcomes of an attempt that are retried: lost, failed, timed_out "
                    "(default: the agent's retry_on).",
        extra=_cli(metavar="OUTCOME[,OUTCOME]"))] | None = None
    retry_lost: Annotated[int, msgspec.Meta(
        ge=0, le=MAX_TASK_RETRIES,
        description="Attempts lost to infrastructure (its worker killed or hung, the "
                    "daemon restarted, its node died) it may have and still run again, "
                    "no retries spent; 0: at most once, never run again once lost "
                    "(default: the agent's retry_lost).")] | None = None

    def outcomes(self, spec: AgentRetries) -> tuple[str, ...]:
        """The outcomes of an attempt this policy retries: its own, else its agent's."""
        return self.retry_on if self.retry_on is not None else spec.retry_on

    def lost(self, spec: AgentRetries) -> int:
        """Its retry_lost: its own, else its agent's."""
        return self.retry_lost if self.retry_lost is not None else spec.retry_lost


AGENTS_RETRY = RetryOptions()  # a task that gave none: its agent's, whole


def step_options(timeout: float | None, retries: int | None) -> TaskOptions:
    """The options of a task a workflow's step or a team's call submits (what a step's
    definition may say of its task)."""
    if timeout is None and retries is None:
        return NO_OPTIONS
    return TaskOptions(timeout=timeout, retry=None if retries is None
                       else RetryOptions(retries=retries))


class TaskOptions(msgspec.Struct, kw_only=True, forbid_unknown_fields=True,
                  omit_defaults=True):
    """How a task is to run, as its submitter asked."""

    # (positive: admission.py refuses another, as the OpenAPI document says)
    timeout: Annotated[float, msgspec.Meta(
        description="Seconds the task may run once started (default: the agent's "
                    "task_timeout); time waiting in the queue is not counted.")] | None = None
    priority: Annotated[int, msgspec.Meta(
        description="Higher runs first among waiting tasks.")] = 0
    delay: Annotated[float, msgspec.Meta(
        ge=0, le=MAX_DELAY,
        description="Start it no sooner than this many seconds from now (it waits, queued, "
                    "and a daemon restart keeps it); the CLI takes 90s, 15m, 1h, 2d.",
        extra=_cli(parse="duration", metavar="DURATION"))] | None = None
    not_before: Annotated[float, msgspec.Meta(
        ge=0, description=f"Start it no sooner than this unix time, at most "
                          f"{MAX_DELAY / 86400:g} days from now (not with delay).",
        extra=_cli(metavar="UNIX_TIME"))] | None = None
    retry: RetryOptions | None = None
    session: Annotated[SessionName, msgspec.Meta(
        description="A turn of this session of the agent: its tasks run one at a time, "
                    "in order, each given the session's state (docs/durable.md#sessions).",
        extra=_cli(metavar="NAME"))] | None = None
    tags: Annotated[tuple[str, ...], msgspec.Meta(
        description=f"Labels to find the task by (`corral tasks --tag TAG`): at most "
                    f"{MAX_TAGS}, each at most {MAX_TAG_LENGTH} letters, digits and "
                    ". _ : = / @ + - (a letter or a digit first).",
        extra=_cli(flag="tag", metavar="TAG"))] = ()
    idempotency_key: Annotated[str, msgspec.Meta(
        min_length=1, max_length=MAX_IDEMPOTENCY_KEY,
        description="The same key sent again (by the same caller, within 24 h) gives the "
                    "first task, its id and outcome, and runs nothing twice, across a "
                    "daemon's restart and on any node of a cluster; with another request, "
                    "refused (409). The HTTP API takes it as the Idempotency-Key header.",
        extra=_cli(metavar="KEY"))] | None = None

    def __post_init__(self) -> None:
        if len(self.tags) > MAX_TAGS:
            raise ValueError(f"{len(self.tags)} tags, more than max_tags ({MAX_TAGS})")
        for tag in self.tags:
            if len(tag) > MAX_TAG_LENGTH:
                raise ValueError(f"a tag of {len(tag)} characters, more than "
                                 f"max_tag_length ({MAX_TAG_LENGTH})")
            if not _TAG.fullmatch(tag):
                raise ValueError(f"tag {tag!r} is not one: letters, digits and "
                                 ". _ : = / @ + - (a letter or a digit first)")

    def start_at(self, now: float) -> float | None:
        """The wall time it may start at (None: at once); raises ValueError for a time
        past MAX_DELAY from now, or both `delay` and `not_before`."""
        if self.delay is not None and self.not_before is not None:
            raise ValueError("give delay or not_before, not both")
        at = now + self.delay if self.delay is not None else self.not_before
        if at is not None and at > now + MAX_DELAY:
            raise ValueError(f"not_before is more than {MAX_DELAY / 86400:g} days from now")
        return at if at is not None and at > now else None

    def given(self) -> list[str]:
        """The options given a value other than their default, by name, in order."""
        if _values(self) == _DEFAULT_VALUES:  # (most give none: read at once)
            return []
        return [name for name, default in _DEFAULTS if getattr(self, name) != default]


OPTION_FIELDS = msgspec.structs.fields(TaskOptions)
OPTION_NAMES = tuple(f.name for f in OPTION_FIELDS)
_DEFAULTS = tuple((f.name, f.default_factory() if f.default is msgspec.NODEFAULT
                   else f.default) for f in OPTION_FIELDS)
_DEFAULT_VALUES = tuple(default for _, default in _DEFAULTS)
_values = operator.attrgetter(*OPTION_NAMES)
NO_OPTIONS = TaskOptions()  # every option its default (a task's agent decides)
_options = msgspec.json.Decoder(TaskOptions)


def options_of(value: TaskOptions) -> TaskOptions:
    """The options alone of a value that carries them (a method's params inherit them):
    what a task keeps, and a journal and a cluster's record store."""
    if type(value) is TaskOptions:
        return value
    given = value.given()
    if not given:
        return NO_OPTIONS
    return TaskOptions(**{name: getattr(value, name) for name in given})


def encoded(options: TaskOptions) -> bytes | None:
    """The options as a journal's column and a cluster's record keep them (None: all
    their defaults)."""
    return None if options is NO_OPTIONS else msgspec.json.encode(options)


def decoded(stored: bytes | str | None) -> TaskOptions:
    """Stored options back (`encoded`'s)."""
    return NO_OPTIONS if not stored else _options.decode(stored)


class TaskFilters(msgspec.Struct, kw_only=True, forbid_unknown_fields=True,
                  omit_defaults=True):
    """The listings' filters on tasks' options (tasks.list): each field names, in its
    metadata's `filters`, the option it filters on; a task passes when the option holds
    the value (one of its items, for a list)."""

    tag: Annotated[str, msgspec.Meta(description="Only the tasks carrying this tag.",
                                     extra={"filters": "tags", **_cli(metavar="TAG")})
                   ] | None = None


NO_FILTERS = TaskFilters()
# a TaskFilters field -> the TaskOptions field it tests (its metadata's `filters`)
FILTERED: dict[str, str] = {
    f.name: next(t.extra["filters"] for t in f.type.types
                 if isinstance(t, mi.Metadata) and t.extra)
    for f in mi.type_info(TaskFilters).fields}  # type: ignore[attr-defined]
FILTER_NAMES = tuple(FILTERED)


def admits(filters: TaskFilters, options: TaskOptions) -> bool:
    """Whether a task with `options` passes `filters` (as the journal's SQL does)."""
    for name in FILTER_NAMES:
        wanted = getattr(filters, name)
        if wanted is None:
            continue
        held = getattr(options, FILTERED[name])
        if not (wanted in held if isinstance(held, list | tuple) else wanted == held):
            return False
    return True


def filter_sql(filters: TaskFilters, column: str) -> list[tuple[str, Any]]:
    """`filters` as SQL conditions on a column holding `encoded` options, each with its
    one argument (the journal's listing)."""
    conditions = []
    for name in FILTER_NAMES:
        wanted = getattr(filters, name)
        if wanted is None:
            continue
        path = f"'$.{FILTERED[name]}'"
        many = isinstance(dict(_DEFAULTS)[FILTERED[name]], tuple | list)
        conditions.append((
            f"EXISTS (SELECT 1 FROM json_each(CAST({column} AS TEXT), {path}) "
            "WHERE value = ?)" if many
            else f"json_extract(CAST({column} AS TEXT), {path}) = ?", wanted))
    return conditions
