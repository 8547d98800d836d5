"""The task path's interceptors (tracing, a team's tools, the cluster): each a
`TaskInterceptor` given to the engine at its construction, in one ordered list, the first
outermost. As Temporal's SDK's: a concern overrides the `intercept_*` methods it needs,
each given one input value and `next`, the rest of the chain. The chain is composed once:
a method no one overrides is the engine's own call alone (no cost per task).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

from .call import Call

if TYPE_CHECKING:
    from ...askviews import Ask, AskRequest
    from ...taskviews import TaskFailure
    from ..replica import Replica
    from ..stream import Stream
    from .budget import Budgets
    from .host import AgentLike
    from .model import Task
    from .replicacalls import ReplicaCalls

# an agent as a tool (`corral__AGENT`, the gateway's /mcp/corral view; "corral" no
# server may be named): a task's call of one is its spawn (spawn.py `Spawns.as_tool`)
AGENT_TOOL = "corral__"

In = TypeVar("In")
Out = TypeVar("Out")


class ToolPorts(NamedTuple):
    """Where the chain's tool methods end: the engine's pool."""

    call: Callable[[Call], Any]
    listing: Callable[[Replica], Any]
    allowed: Callable[[Replica], list[str]]


class TraceStart(NamedTuple):
    """A task accepted, with the caller's W3C trace context as it came."""

    task: Task
    traceparent: str | None
    tracestate: str | None


class StepReplay(NamedTuple):
    """A tool call (`kind` "tool") or a named step ("step") answered from the journal."""

    task: Task
    kind: str
    name: str


class TaskPath(NamedTuple):
    """What an interceptor may read of the engine it is given to (`bind`)."""

    active: Mapping[str, Task]
    stream: Stream
    ask_person: Callable[[AskRequest], Awaitable[Ask]]
    # a running task's attempt failed from outside its worker (a denied call)
    fail_task: Callable[[Task, TaskFailure], None]
    replica_calls: ReplicaCalls
    budgets: Budgets  # the agents' token and cost budgets (a model call's)
    agent_of: Callable[[str], AgentLike | None]  # an agent by its name, None: removed


class TaskInterceptor:
    """One concern's part in the task path; every method passes its input on unchanged."""

    def bind(self, path: TaskPath) -> None:
        """The engine the chain is given to, once, as it is made (before any task)."""

    def intercept_call(self, call: Call, next: Callable[[Call], Any]) -> Any:
        """A call as its door gives it to the chain, around every link (the audit
        link's: a call any link refuses is one row too): its answer, or an awaitable."""
        return next(call)

    def intercept_tool_call(self, call: Call, next: Callable[[Call], Any]) -> Any:
        """The call's answer, or an awaitable of it."""
        return next(call)

    def intercept_model_call(self, call: Call, next: Callable[[Call], Any]) -> Any:
        """A model call made live (`call.model` its request, the model gateway its door):
        an awaitable of its outcome."""
        return next(call)

    def intercept_skill_read(self, call: Call, next: Callable[[Call], Any]) -> Any:
        """A skill read past its view (`call.skill` its method): an awaitable of what the
        door read."""
        return next(call)

    def intercept_tool_list(self, replica: Replica, next: Callable[[Replica], Any]) -> Any:
        """The replica's `tools/list` answer, or an awaitable of it."""
        return next(replica)

    def intercept_allowed_tools(self, replica: Replica,
                                next: Callable[[Replica], list[str]]) -> list[str]:
        return next(replica)

    def intercept_task_start(self, start: TraceStart, next: Callable[[TraceStart], None]
                             ) -> None:
        """A task accepted (a bad traceparent refuses it: RpcError)."""
        next(start)

    def intercept_task_end(self, task: Task, next: Callable[[Task], None]) -> None:
        next(task)

    def intercept_step_replay(self, replay: StepReplay,
                              next: Callable[[StepReplay], None]) -> None:
        next(replay)


class Interceptors:
    """An ordered chain of interceptors, the first the outermost."""

    def __init__(self, members: Sequence[TaskInterceptor] = ()) -> None:
        self.members = tuple(members)

    def bind(self, path: TaskPath) -> None:
        for member in self.members:
            member.bind(path)

    def compose(self, method: Callable[[Any, In, Callable[[In], Out]], Out],
                last: Callable[[In], Out]) -> Callable[[In], Out]:
        """`method` (a TaskInterceptor's, unbound) of every member that overrides it,
        each calling the next, the last calling `last`."""
        name = method.__name__
        call = last
        for member in reversed(self.members):
            if getattr(type(member), name) is not method:
                call = partial(getattr(member, name), next=call)
        return call

    def notify(self, method: Callable[[Any, In, Callable[[In], None]], None]
               ) -> Callable[[In], None] | None:
        """A notification's chain, None when no member overrides it (nothing to call)."""
        if all(getattr(type(m), method.__name__) is method for m in self.members):
            return None
        return self.compose(method, _nothing)


def _nothing(_: object) -> None:
    return None


NO_INTERCEPTORS = Interceptors()
