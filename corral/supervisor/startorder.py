"""Start order (`after`, and `requires`, which orders as `after` does): an agent starts
once the agents it names are up, and stops before them. Pure functions of the agents'
specs and replicas' machines; the waiting is the agent's (agent.py), over the fleet's
waits (waits.py)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from .config import AgentSpec

if TYPE_CHECKING:
    from .replica import Replica


def before(spec: AgentSpec) -> list[str]:
    """The agents this one starts after: its `after` and its `requires`."""
    return [*spec.after, *(r for r in spec.requires if r not in spec.after)]


def order_problem(specs: Mapping[str, AgentSpec]) -> tuple[str, str, str] | None:
    """(the agent, its key, what is wrong with it): a name in `after` or `requires` not
    declared, itself, or a cycle (named whole); None when the order holds."""
    for name, spec in specs.items():
        for key, names in (("after", spec.after), ("requires", spec.requires)):
            for other in names:
                if other == name:
                    return name, key, "names the agent itself"
                if other not in specs:
                    return name, key, f"no agent {other} is declared"
    for name in specs:
        cycle = _cycle_from(name, specs, [])
        if cycle:
            key = "after" if cycle[1] in specs[name].after else "requires"
            return name, key, "a cycle: " + " -> ".join(cycle)
    return None


def _cycle_from(name: str, specs: Mapping[str, AgentSpec], path: list[str]) -> list[str]:
    if name in path:
        return [*path[path.index(name):], name]
    for other in before(specs[name]) if name in specs else ():
        found = _cycle_from(other, specs, [*path, name])
        if found:
            return found
    return []


def stop_layers(specs: Mapping[str, AgentSpec]) -> list[list[str]]:
    """The agents in the order a stop of all takes them: those nothing waits for first,
    each layer stopped together, the layer it came after next (the start in reverse)."""
    depth: dict[str, int] = {}

    def of(name: str, seen: frozenset[str]) -> int:
        if name not in depth:
            after = [a for a in before(specs[name]) if a in specs and a not in seen]
            depth[name] = 1 + max((of(a, seen | {name}) for a in after), default=-1)
        return depth[name]

    for name in specs:
        of(name, frozenset())
    deepest = max(depth.values(), default=-1)
    return [[n for n in specs if depth[n] == d] for d in range(deepest, -1, -1)]


def up(replicas: Iterable[Replica]) -> bool:
    """Whether an agent's replicas are as far up as they will go: none on its way up or
    down or waiting to restart (ready, or down: a one-shot that exited, one failed)."""
    return all(r.machine.settled for r in replicas)


def failed_for_good(replicas: Iterable[Replica]) -> bool:
    """Whether an agent is down for good: none of its replicas is up or coming back, and
    one has failed (a one-shot that exited cleanly is not)."""
    rs = list(replicas)
    return (bool(rs) and not any(r.machine.will_run_again for r in rs)
            and any(r.machine.failed for r in rs))
