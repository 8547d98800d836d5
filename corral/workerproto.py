"""The worker protocol (docs/protocol.md): every method between corral and a worker, who
sends it, whether it is answered, and its params as a Struct, decoded by `params_of`
before a handler sees them (every refusal worded alike: `METHOD: FIELD must be WHAT`;
unknown keys ignored, as a newer worker may send more). Stdlib and msgspec only: the
worker SDK speaks the same protocol without importing it."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, NamedTuple, TypeVar

import msgspec
from msgspec import UNSET

from .taskoptions import MAX_TASK_RETRIES

NonEmpty = Annotated[str, msgspec.Meta(min_length=1)]
Number = int | float  # an int stays an int on the way back out


class WorkerParams(msgspec.Struct, omit_defaults=True):
    """The params of one method (each method's own subclass below)."""


# -- corral -> worker ----------------------------------------------------------------------
class InitializeParams(WorkerParams):
    agent: str
    replica: int
    protocol_version: str
    config: Any = None
    state: Any = None


class PingParams(WorkerParams):
    pass


class TaskRunParams(WorkerParams):
    task_id: str
    input: Any
    attempt: int = 1  # an older corral does not send it
    deadline: float | None = None
    # the attempt's W3C trace context, when corral traces the task (docs/tracing.md)
    meta: dict[str, Any] | None = msgspec.field(default=None, name="_meta")
    # a retried attempt of a task that checkpointed (task/checkpoint): its last state
    resumed: bool = False
    task_state: Any = None
    # its session's name and last state (null: a new session; docs/durable.md#sessions)
    session: str | None = None
    session_state: Any = None


class TaskCancelParams(WorkerParams):
    task_id: str


class EventParams(WorkerParams):
    topic: str
    data: Any = None
    source: str = ""
    time: float = 0.0


class ShutdownParams(WorkerParams):
    pass


class HealthCheckParams(WorkerParams):
    name: str | None = None


class HibernateParams(WorkerParams):
    pass


class ResourcesReadParams(WorkerParams):
    server: str
    uri: str


class ResourcesUpdatedParams(ResourcesReadParams):
    pass


# -- worker -> corral ----------------------------------------------------------------------
class ToolsListParams(WorkerParams):
    pass


class ToolsCallParams(WorkerParams):
    name: str
    arguments: dict[str, Any] | None = None
    task_id: str | None = None  # the task the call is for: counted against its budget
    # the worker's trace context for the call (the SDK sends the attempt's back)
    meta: dict[str, Any] | None = msgspec.field(default=None, name="_meta")


class ResourcesListParams(WorkerParams):
    server: str | None = None


class ResourceTemplatesListParams(ResourcesListParams):
    pass


class ResourcesSubscribeParams(ResourcesReadParams):
    pass


class ResourcesUnsubscribeParams(ResourcesReadParams):
    pass


class PromptsListParams(ResourcesListParams):
    pass


class PromptsGetParams(WorkerParams):
    name: str
    arguments: dict[str, str] | None = None


class TaskProgressParams(WorkerParams):
    task_id: str
    progress: Number
    total: Number | None = None
    message: str | None = None


class TaskOutputParams(WorkerParams):
    """A chunk of the running task's output, for whoever follows its stream (tasks/output.py)."""

    task_id: str
    data: str


class UsageReportParams(WorkerParams):
    """Amounts out of range (tasks/budget.py) are counted as ignored, as a wrong shape is."""

    task_id: str = ""
    input_tokens: Number | None = None
    output_tokens: Number | None = None
    cost_usd: Number | None = None
    model: str | None = None


class EventsPublishParams(WorkerParams):
    topic: NonEmpty
    data: Any = None


class EventsSubscribeParams(WorkerParams):
    topic: NonEmpty


class StateCheckpointParams(WorkerParams):
    state: Any = UNSET  # absent: nothing to keep


class StepGetParams(WorkerParams):
    """A step the agent names (`ctx.step`): its result, if an earlier attempt journaled it."""

    task_id: NonEmpty
    name: NonEmpty


class StepPutParams(WorkerParams):
    task_id: NonEmpty
    name: NonEmpty
    result: Any = None


class TaskCheckpointParams(WorkerParams):
    """The task's state, given back to its retried attempt (`task/run`'s `task_state`)."""

    task_id: NonEmpty
    state: Any = None


class SessionCheckpointParams(WorkerParams):
    """The running task's session's state, for its next tasks (`task/run`'s `session_state`)."""

    task_id: NonEmpty
    state: Any = None


# a question's or a spawn's key: kept with its ask or its spawn's row, and named in its
# task's steps; refused past its bound on decoding, the bound named (`_what`)
MAX_KEY_CHARS = 256
Key = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_KEY_CHARS,
                                  extra={"bound": "MAX_KEY_CHARS"})]


class TaskSpawnParams(WorkerParams):
    """A task of another agent, started by the running task `task_id` (its child): `key`
    names the spawn within the task, so that a retried attempt spawning under the same key
    gets the same child back (docs/protocol.md#spawn)."""

    task_id: NonEmpty
    agent: NonEmpty
    key: Key
    input: Any = None
    timeout: Number | None = None
    # bounded as a caller's are: a worker asks no more of the engine than its caller may
    retries: Annotated[int, msgspec.Meta(ge=0, le=MAX_TASK_RETRIES)] | None = None


class TaskWaitParams(WorkerParams):
    """The outcomes of the running task's children, once every one has ended."""

    task_id: NonEmpty
    children: list[str]


# a question's prompt, and its schema as JSON: bounded as a decision's data is (inbox.py)
MAX_PROMPT_CHARS = 16 * 1024
MAX_SCHEMA_BYTES = 64 * 1024


class TaskAskParams(WorkerParams):
    """A question of the running task `task_id` for a person (`ctx.ask`): its `prompt`,
    the JSON Schema its answer must fit (None: any JSON), and `timeout` seconds to wait
    (None: until it is answered or the task ends). `key` names the question within the
    task: a retried or resumed attempt asking under the same key is given the answer
    the first got, never a second question (docs/protocol.md#questions)."""

    task_id: NonEmpty
    key: Key
    prompt: NonEmpty  # (its length and the schema's refused past their bounds by name)
    schema: dict[str, Any] | None = None
    timeout: Annotated[float, msgspec.Meta(gt=0)] | None = None


# -- the registry --------------------------------------------------------------------------
class WorkerMethod(NamedTuple):
    name: str
    sender: Literal["corral", "worker"]
    notification: bool  # never answered
    params: type[WorkerParams]


METHODS: dict[str, WorkerMethod] = {m.name: m for m in (
    WorkerMethod("initialize", "corral", False, InitializeParams),
    WorkerMethod("ping", "corral", False, PingParams),
    WorkerMethod("task/run", "corral", False, TaskRunParams),
    WorkerMethod("task/cancel", "corral", True, TaskCancelParams),
    WorkerMethod("event", "corral", True, EventParams),
    WorkerMethod("shutdown", "corral", False, ShutdownParams),
    WorkerMethod("health/check", "corral", False, HealthCheckParams),
    WorkerMethod("hibernate", "corral", False, HibernateParams),
    WorkerMethod("resources/updated", "corral", True, ResourcesUpdatedParams),
    WorkerMethod("tools/list", "worker", False, ToolsListParams),
    WorkerMethod("tools/call", "worker", False, ToolsCallParams),
    WorkerMethod("resources/list", "worker", False, ResourcesListParams),
    WorkerMethod("resources/templates/list", "worker", False, ResourceTemplatesListParams),
    WorkerMethod("resources/read", "worker", False, ResourcesReadParams),
    WorkerMethod("resources/subscribe", "worker", False, ResourcesSubscribeParams),
    WorkerMethod("resources/unsubscribe", "worker", False, ResourcesUnsubscribeParams),
    WorkerMethod("prompts/list", "worker", False, PromptsListParams),
    WorkerMethod("prompts/get", "worker", False, PromptsGetParams),
    WorkerMethod("task/progress", "worker", True, TaskProgressParams),
    WorkerMethod("task/output", "worker", True, TaskOutputParams),
    WorkerMethod("usage/report", "worker", True, UsageReportParams),
    WorkerMethod("events/publish", "worker", True, EventsPublishParams),
    WorkerMethod("events/subscribe", "worker", False, EventsSubscribeParams),
    WorkerMethod("state/checkpoint", "worker", True, StateCheckpointParams),
    WorkerMethod("step/get", "worker", False, StepGetParams),
    WorkerMethod("step/put", "worker", False, StepPutParams),
    WorkerMethod("task/checkpoint", "worker", False, TaskCheckpointParams),
    WorkerMethod("session/checkpoint", "worker", False, SessionCheckpointParams),
    WorkerMethod("task/spawn", "worker", False, TaskSpawnParams),
    WorkerMethod("task/wait", "worker", False, TaskWaitParams),
    WorkerMethod("task/ask", "worker", False, TaskAskParams),
)}

METHOD_OF: dict[type[WorkerParams], str] = {m.params: m.name for m in METHODS.values()}
FROM_WORKER = frozenset(m.name for m in METHODS.values() if m.sender == "worker")
TO_WORKER = frozenset(m.name for m in METHODS.values() if m.sender == "corral")


class BadParams(ValueError):
    """Params that do not fit their method: `str()` is `METHOD: what is wrong`."""

    def __init__(self, method: str, detail: str) -> None:
        super().__init__(f"{method}: {detail}")
        self.method = method
        self.detail = detail


P = TypeVar("P", bound=WorkerParams)

_AT = re.compile(r" - at `\$\.(\w+)")
_MISSING = re.compile(r"^Object missing required field `(\w+)`$")


def params_of(method: str, cls: type[P], params: Any) -> P:
    """`params` (decoded JSON; absent params are {}) as `cls`, or BadParams."""
    try:
        return msgspec.convert(params, cls)
    except msgspec.ValidationError as exc:
        raise BadParams(method, _detail(cls, str(exc))) from None


def _detail(cls: type[WorkerParams], said: str) -> str:
    """msgspec's complaint in the protocol's words: which field, and what it must be."""
    m = _AT.search(said) or _MISSING.match(said)
    if m is None:  # the params themselves (not an object)
        return "params must be an object"
    field = m.group(1)
    info = msgspec.inspect.type_info(cls)
    assert isinstance(info, msgspec.inspect.StructType)
    for f in info.fields:
        if f.encode_name == field:
            return f"{field} must be {_what(f.type)}"
    return said  # pragma: no cover - msgspec names only declared fields


def _what(t: msgspec.inspect.Type, bound: str | None = None) -> str:
    """What a value of this type is, in words ("a string", "an object of strings");
    `bound`: the name of its length's bound, said with it."""
    if isinstance(t, msgspec.inspect.Metadata):  # a bound with a name (`Key`)
        return _what(t.type, (t.extra or {}).get("bound"))
    if isinstance(t, msgspec.inspect.UnionType):
        kinds = [x for x in t.types if not isinstance(x, msgspec.inspect.NoneType)]
        if len(kinds) == 1 and isinstance(kinds[0], msgspec.inspect.IntType) and \
                kinds[0].le is not None:  # a bound is said, not only the kind
            return _what(kinds[0])
        if all(isinstance(x, msgspec.inspect.IntType | msgspec.inspect.FloatType)
               for x in kinds):
            return "a number"
        return " or ".join(_what(x) for x in kinds)
    if isinstance(t, msgspec.inspect.StrType):
        kind = "a non-empty string" if t.min_length else "a string"
        if t.max_length is None:
            return kind
        most = str(t.max_length) if bound is None else f"{bound} ({t.max_length})"
        return f"{kind} of at most {most} characters"
    if isinstance(t, msgspec.inspect.IntType):
        if t.ge is not None and t.le is not None:
            return f"a whole number from {t.ge} to {t.le}"
        return "a whole number"
    if isinstance(t, msgspec.inspect.FloatType):
        return "a number"
    if isinstance(t, msgspec.inspect.DictType):
        if isinstance(t.value_type, msgspec.inspect.StrType):
            return "an object of strings"
        return "an object"
    if isinstance(t, msgspec.inspect.ListType):
        return "a list"
    return "valid"  # pragma: no cover - every field's type is one of the above
