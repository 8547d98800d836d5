"""The task path's interceptors (supervisor/tasks/interceptors.py): a chain composed once,
in the order it is given, the first the outermost; a method no member overrides costs the
path nothing; and what the engine's concerns need of it comes at its construction."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from corral.jsonrpc import RpcError
from corral.supervisor import State, Supervisor
from corral.supervisor.tasks import Call, Interceptors, TaskInterceptor
from corral.supervisor.tasks.interceptors import TaskPath, TraceStart

from .conftest import agent
from .intercepted import Engines, engines

__all__ = ["engines"]  # the fixture, used by name


class Marking(TaskInterceptor):
    """Marks the tool call's name on its way in and its answer on its way out."""

    def __init__(self, mark: str) -> None:
        self.mark = mark

    def intercept_tool_call(self, call: Call, next: Callable[[Call], Any]) -> Any:
        answer = next(call._replace(name=f"{call.name}>{self.mark}"))
        return f"{answer}<{self.mark}"


class Passing(TaskInterceptor):
    """Overrides nothing: left out of every chain."""


def test_a_chain_runs_in_its_order_and_leaves_out_who_overrides_nothing() -> None:
    chain = Interceptors([Marking("a"), Passing(), Marking("b")])
    route = chain.compose(TaskInterceptor.intercept_tool_call, lambda call: call.name)
    assert route(Call(None, "t", {}, None)) == "t>a>b<b<a"  # type: ignore[arg-type]
    # nobody overrides the start: no chain to call; the end's own call alone
    assert chain.notify(TaskInterceptor.intercept_task_start) is None
    last = chain.compose(TaskInterceptor.intercept_task_end, len)
    assert last("abc") == 3  # type: ignore[arg-type]


def test_a_notification_goes_through_every_member_that_hears_it() -> None:
    heard: list[str] = []

    class Hearing(TaskInterceptor):
        def __init__(self, name: str) -> None:
            self.name = name

        def intercept_task_start(self, start: TraceStart,
                                 next: Callable[[TraceStart], None]) -> None:
            heard.append(self.name)
            next(start)

    told = Interceptors([Hearing("first"), Passing(), Hearing("second")]).notify(
        TaskInterceptor.intercept_task_start)
    assert told is not None
    told(TraceStart(None, None, None))  # type: ignore[arg-type]
    assert heard == ["first", "second"]


async def test_an_interceptor_is_bound_to_the_engine_it_is_given_to(engines: Engines) -> None:
    """`bind` once, as the engine is made, with its tasks in flight and its stream."""
    bound: list[TaskPath] = []

    class Binding(TaskInterceptor):
        def bind(self, path: TaskPath) -> None:
            bound.append(path)

    sup = engines([Binding()])
    assert len(bound) == 1
    assert bound[0].active is sup.tasks.active and bound[0].stream is sup.stream


async def test_an_interceptor_answers_a_tool_call_in_place_of_the_pool(engines: Engines) -> None:
    """A call inside the agent's allowlist reaches the chain with its task; one outside is
    refused before it (the worker methods' allowlist, which the chain may widen only)."""
    seen: list[tuple[str, str | None]] = []

    class Answering(TaskInterceptor):
        def intercept_tool_call(self, call: Call, next: Callable[[Call], Any]
                                ) -> Any:
            seen.append((call.name, call.task.id if call.task is not None else None))
            return {"content": [{"type": "text", "text": "mine"}], "isError": False}

    sup = engines([Answering()])
    sup.add(agent("user", "misbehave.py", tools=["notes__*"]))
    await sup.wait_state("user", State.READY)
    res = await sup.tasks.run("user", {"do": "tools", "tool": "notes__add", "times": 1})
    assert res.output == [{"content": [{"type": "text", "text": "mine"}], "isError": False}]
    assert seen == [("notes__add", res.task_id)]


async def test_a_coordinate_team_on_an_engine_without_leader_tools_is_refused(
        sup: Supervisor) -> None:
    """Its leader would see no members: refused by name before any task, nothing kept."""
    from corral.supervisor.teams import TeamSpec
    from corral.supervisor.teams.calls import Teams

    for name in ("lead", "m"):
        sup.add(agent(name, "misbehave.py"))
    teams = Teams(sup.tasks)
    teams.configure({"crew": TeamSpec(mode="coordinate", leader="lead", members=["m"])})
    with pytest.raises(RpcError) as caught:
        await teams.start("crew", {})
    assert caught.value.message == (
        "team crew is coordinate: its leader calls its members as tools, which an engine "
        "gives only when made with LeaderTools among its interceptors")
    assert (teams.live, list(sup.tasks.active)) == ({}, [])


# -- no hook planted after construction (tests/hookscan.py; decision 523) --------------------
CORRAL = Path(__file__).resolve().parent.parent / "corral"

# the shapes the interceptors replaced: tracing's install, a team's tools wrapping the
# worker methods, the cluster filling the engine's steps and sessions, an on_* callback
OLD_SHAPES = {
    "engine.py": '''
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

class StepJournal(Protocol):
    def put(self, step: object) -> None: ...

class TaskSteps:
    def __init__(self) -> None:
        self.journal: StepJournal | None = None
        self.cluster: StepJournal | None = None
        self.on_replay: Callable[[object], None] | None = None
        self.replayed = 0

class WorkerMethods:
    def __init__(self, tool_router: Callable[..., object]) -> None:
        self.tool_router = tool_router
        self.allow_of = lambda r: []
        self.steps = TaskSteps()

class TaskManager:
    def __init__(self, router: Callable[..., object]) -> None:
        self.worker = WorkerMethods(router)
        self.steps = self.worker.steps
        self.trace_begin: Callable[[object], None] | None = None
''',
    "plugins.py": '''
from .engine import TaskManager, WorkerMethods

class Tracer:
    def install(self, tasks: TaskManager) -> None:
        tasks.trace_begin = self.begin
        tasks.worker.tool_router = self.traced(tasks.worker.tool_router)
        tasks.steps.on_replay = self.replayed
        tasks.steps.replayed = 0  # a count, not a hook
        tasks.steps.journal = None  # a collaborator let go

class LeaderTools:
    def install(self, worker: WorkerMethods) -> None:
        worker.allow_of = lambda r: ["team__member"]

class ClusterNode:
    def __init__(self, tasks: TaskManager) -> None:
        self.steps = object()
        tasks.steps.cluster = self.steps

def wire(client: object) -> None:
    client.on_log = print
''',
}


def test_the_rule_finds_the_hooks_the_interceptors_replaced(tmp_path: Path) -> None:
    """The old shapes, in a package of their own: every planted hook is found, with the
    class it was planted in; a count and a collaborator let go are not hooks."""
    from .hookscan import Package

    package = tmp_path / "old"
    package.mkdir()
    for name, text in OLD_SHAPES.items():
        (package / name).write_text(text)
    assert sorted(Package(package).hook_assignments()) == [
        "old/plugins.py:14: worker.allow_of (WorkerMethods)",
        "old/plugins.py:19: tasks.steps.cluster (TaskSteps)",
        "old/plugins.py:22: client.on_log (None)",
        "old/plugins.py:6: tasks.trace_begin (TaskManager)",
        "old/plugins.py:7: tasks.worker.tool_router (WorkerMethods)",
        "old/plugins.py:8: tasks.steps.on_replay (TaskSteps)",
    ]


def test_no_module_fills_another_objects_hook_after_its_construction() -> None:
    """Behaviour and collaborators are given at construction (a constructor's argument,
    the interceptor chain), or taken by the owner's own method named for what it means
    (a store that opens later: `TaskManager.journal_to`); none is planted in another
    object's attribute. (At 61caae0, before the interceptors: 43 such assignments.)"""
    from .hookscan import Package

    assert list(Package(CORRAL).hook_assignments()) == []
