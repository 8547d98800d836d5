"""A definition checked and compiled: each step's dependencies (the steps its references,
`map`, `when` and `join` name), the order they may run in, what a step is sent and
whether it runs. No I/O: the daemon's runner asks this what to do next."""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Mapping
from typing import Any

import msgspec

from .definition import MAX_MAP_ITEMS, StepSpec, WorkflowError, WorkflowMissing, WorkflowSpec
from .refs import NAME, SHAPE, Missing, Scope, parse, refs_in, resolve

STEP_NAME = re.compile(NAME)


class PlanStep(msgspec.Struct):
    spec: StepSpec
    # its spec's name, and whether it has a map (each asked many times a run)
    name: str
    mapped: bool
    index: int  # its place in the definition
    input: Any  # what it is sent, with references (the default filled in)
    deps: frozenset[str] = msgspec.field(default_factory=frozenset)


class Workflow(msgspec.Struct):
    name: str
    spec: WorkflowSpec
    steps: list[PlanStep]
    # every agent a run of it may start a task of, its nested workflows' too, theirs
    # through every level (compiled with the workflows there are; a run keeps those it
    # started with), sorted
    agents: list[str]

    @property
    def nested(self) -> list[str]:
        return sorted({s.spec.workflow for s in self.steps if s.spec.workflow is not None})

    def step(self, name: str) -> PlanStep:
        return next(s for s in self.steps if s.name == name)

    def ready(self, ended: Collection[str], started: Collection[str]) -> list[PlanStep]:
        """The steps not started whose dependencies have all ended, in definition order."""
        return [s for s in self.steps
                if s.name not in started and s.name not in ended and s.deps <= set(ended)]


def _default_input(spec: WorkflowSpec, i: int) -> Any:
    step = spec.steps[i]
    if step.input is not None:
        return step.input
    if step.join is not None:
        return f"$steps.{step.join}.output"
    if step.map is not None:
        return "$item"
    return "$input" if i == 0 else f"$steps.{spec.steps[i - 1].name}.output"


def compile_workflow(name: str, spec: WorkflowSpec,
                     known_agent: Callable[[str], bool] | None = None,
                     workflows: Mapping[str, WorkflowSpec] | None = None) -> Workflow:
    """Check a definition whole and compile it, or raise WorkflowError with the first
    thing wrong (`workflows`: the others there are, which its nested steps must name)."""
    where = f"workflow {name}"
    names: dict[str, int] = {}
    for i, s in enumerate(spec.steps):
        if not STEP_NAME.fullmatch(s.name):
            raise WorkflowError(f"{where}: step name {s.name!r} is not a name (letters, "
                                "digits, _ and -, not starting with a digit or -)")
        if s.name in names:
            raise WorkflowError(f"{where}: two steps named {s.name}")
        names[s.name] = i
        _check_kind(f"{where}, step {s.name}", s)
        _check_agent(where, s, known_agent)
        if s.workflow is not None and workflows is not None and s.workflow != name \
                and s.workflow not in workflows:
            raise WorkflowMissing(f"{where}, step {s.name}: no such workflow: "
                                  f"{s.workflow}")
    nested: frozenset[str] = frozenset()
    if workflows is not None:
        nested = _nested_agents(name, spec, {**workflows, name: spec})
    steps = [_step(where, spec, i, names) for i in range(len(spec.steps))]
    _check_cycles(where, steps)
    for st in steps:
        for dep in sorted(st.deps, key=names.__getitem__):
            if names[dep] >= st.index:
                raise WorkflowError(
                    f"{where}, step {st.name}: $steps.{dep}.output refers to step {dep}, "
                    "which comes after it (a step may use the steps before it only)")
    return Workflow(name, spec, steps, sorted(
        {s.agent for s in spec.steps if s.agent is not None} | nested))


def check_agents(wf: Workflow, known_agent: Callable[[str], bool]) -> None:
    """What `compile_workflow` with `known_agent` says of `wf`, compiled whole without it
    (nothing else can be wrong then): the first step whose agent is not known."""
    for st in wf.steps:
        _check_agent(f"workflow {wf.name}", st.spec, known_agent)


def _check_agent(where: str, s: StepSpec, known_agent: Callable[[str], bool] | None) -> None:
    if s.agent is not None and known_agent is not None and not known_agent(s.agent):
        raise WorkflowMissing(f"{where}, step {s.name}: no such agent: {s.agent}")


def _check_kind(at: str, s: StepSpec) -> None:
    """One of agent =, workflow = and signal =; a signal step's keys its own."""
    if sum(k is not None for k in (s.agent, s.workflow, s.signal)) != 1:
        raise WorkflowError(f"{at}: a step runs an agent or a workflow, or waits for a "
                            "signal (one of agent =, workflow = and signal =)")
    if s.signal is None:
        if s.on_timeout is not None:
            raise WorkflowError(f"{at}: on_timeout is for a step that waits for a signal "
                                "(a task's timeout fails it)")
        return
    if not STEP_NAME.fullmatch(s.signal):
        raise WorkflowError(f"{at}: signal name {s.signal!r} is not a name (letters, "
                            "digits, _ and -, not starting with a digit or -)")
    for key, value in (("map", s.map), ("retries", s.retries)):
        if value is not None:
            raise WorkflowError(f"{at}: a step that waits for a signal takes one signal; "
                                f"{key} is for a step that runs a task")


def _nested_agents(name: str, spec: WorkflowSpec, specs: Mapping[str, WorkflowSpec]
                   ) -> frozenset[str]:
    """The agents of the workflows `spec` nests, through every level; WorkflowError for
    a workflow that is its own step, however deep (a run of it would never end)."""
    agents: set[str] = set()
    _visit_nested(name, specs, name, [name], set(), agents)
    return frozenset(agents)


# (the walks below are functions of the module, not nested ones: a nested function that
# calls itself holds itself through its closure, a cycle that kept all it saw, a whole
# plan each compile (and the run views compile them), until a full pass of the collector)
def _visit_nested(name: str, specs: Mapping[str, WorkflowSpec], wf: str, path: list[str],
                  seen: set[str], agents: set[str]) -> None:
    for s in specs[wf].steps:
        if s.workflow is None:
            if wf != name and s.agent is not None:
                agents.add(s.agent)
            continue
        if s.workflow in path:
            cycle = [*path[path.index(s.workflow):], s.workflow]
            raise WorkflowError(f"workflow {name}: a cycle of workflows: "
                                f"{' -> '.join(cycle)}")
        if s.workflow in specs and s.workflow not in seen:
            seen.add(s.workflow)
            _visit_nested(name, specs, s.workflow, [*path, s.workflow], seen, agents)
            seen.discard(s.workflow)


def _step(where: str, spec: WorkflowSpec, i: int, names: Mapping[str, int]) -> PlanStep:
    s = spec.steps[i]
    at = f"{where}, step {s.name}"
    value = _default_input(spec, i)
    texts = [("input", t) for t in refs_in(value)]
    if s.map is not None:
        texts.append(("map", s.map))
    if s.when is not None:
        texts.append(("when", s.when.ref))
    deps: set[str] = set()
    if s.join is not None:
        if s.join not in names:
            raise WorkflowError(f"{at}: join names no step {s.join}")
        if spec.steps[names[s.join]].map is None:
            raise WorkflowError(f"{at}: join names step {s.join}, which has no map")
        if s.map is not None:
            raise WorkflowError(f"{at}: a step has map or join, not both")
        deps.add(s.join)
    for key, text in texts:
        ref = parse(text)
        if ref is None:
            raise WorkflowError(f"{at}: bad reference in {key}: {text} ({SHAPE})")
        if ref.root in ("item", "index") and (s.map is None or key != "input"):
            raise WorkflowError(f"{at}: {ref.text} in {key} is for the input of a step "
                                "with map")
        if ref.step is not None:
            if ref.step not in names:
                raise WorkflowError(f"{at}: {ref.text} names no step {ref.step}")
            if ref.step == s.name:
                raise WorkflowError(f"{where}: a cycle of steps: {s.name} -> {s.name}")
            deps.add(ref.step)
    return PlanStep(s, s.name, s.map is not None, i, value, frozenset(deps))


def _check_cycles(where: str, steps: list[PlanStep]) -> None:
    by_name = {s.name: s for s in steps}
    state: dict[str, int] = {}  # 1: on the path, 2: done
    for s in steps:
        if s.name not in state:
            _visit_steps(where, by_name, state, s.name, [s.name])


def _visit_steps(where: str, by_name: Mapping[str, PlanStep], state: dict[str, int],
                 name: str, path: list[str]) -> None:
    state[name] = 1
    for dep in sorted(by_name[name].deps, key=lambda d: by_name[d].index):
        if state.get(dep) == 1:
            cycle = [*path[path.index(dep):], dep]
            raise WorkflowError(f"{where}: a cycle of steps: {' -> '.join(cycle)}")
        if dep not in state:
            _visit_steps(where, by_name, state, dep, [*path, dep])
    state[name] = 2


# -- evaluation (the runner's questions) ----------------------------------------------------
def runs(step: PlanStep, scope: Scope) -> bool:
    """Whether a step's `when` holds (a step without one always runs)."""
    cond = step.spec.when
    if cond is None:
        return True
    ref = parse(cond.ref)
    assert ref is not None
    try:
        value = resolve(ref, scope)
    except Missing:
        return cond.op == "missing"
    if cond.op == "exists":
        return True
    if cond.op == "missing":
        return False
    return bool(value == cond.value) == (cond.op == "==")


def items(step: PlanStep, scope: Scope) -> list[Any]:
    """A map step's list (Missing, or WorkflowError when it is not a list)."""
    assert step.spec.map is not None
    ref = parse(step.spec.map)
    assert ref is not None
    value = resolve(ref, scope)
    if not isinstance(value, list):
        raise WorkflowError(f"step {step.name}: map {step.spec.map} is not a list "
                            f"(a {type(value).__name__})")
    if len(value) > MAX_MAP_ITEMS:
        # (the runner says which step)
        raise WorkflowError(f"map {step.spec.map} has {len(value)} items, more than a map "
                            f"runs ({MAX_MAP_ITEMS})")
    return value


def plan_text(wf: Workflow) -> str:
    """`corral workflows plan NAME`: the steps in order, what each waits for, is sent, runs on."""
    lines = [f"workflow {wf.name}: {len(wf.steps)} steps"
             + (f", run timeout {wf.spec.timeout:g}s" if wf.spec.timeout else "")]
    if wf.spec.description:
        lines.append(f"  {wf.spec.description}")
    for s in wf.steps:
        sp = s.spec
        after = ", ".join(sorted(s.deps, key=lambda d: wf.step(d).index)) or "the start"
        runs_on = (f"agent {sp.agent}" if sp.agent is not None
                   else f"signal {sp.signal} (waited for)" if sp.signal is not None
                   else f"workflow {sp.workflow} (a run of it)")
        lines.append(f"{s.index + 1}. {s.name}: {runs_on}, after {after}")
        if sp.map is not None:
            lines.append(f"     map over {sp.map}, {sp.concurrency} at a time")
        if sp.join is not None:
            lines.append(f"     join of {sp.join}'s outputs")
        if sp.when is not None:
            shown = (f"{sp.when.ref} {sp.when.op}" if sp.when.op in ("exists", "missing")
                     else f"{sp.when.ref} {sp.when.op} "
                          f"{msgspec.json.encode(sp.when.value).decode()}")
            lines.append(f"     when {shown}, else skipped")
        lines.append(f"     input {msgspec.json.encode(s.input).decode()}")
        limits = [f"timeout {sp.timeout:g}s" if sp.timeout else "",
                  "skipped on timeout" if sp.on_timeout == "skip" else "",
                  f"retries {sp.retries}" if sp.retries is not None else ""]
        if any(limits):
            lines.append("     " + ", ".join(x for x in limits if x))
    return "\n".join(lines)
