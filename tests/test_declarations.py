"""One declaration per control method (issue 53 item 5): each method is declared once, in
corral/methods/, with its params, result, scope, visibility rule, REST routes, CLI command
and whether the dashboard calls it; the transports are derived from that declaration, so
no other module spells the method's name; each handler takes the narrow services of its
domain, and none reaches three attributes deep into them."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import click

from corral.cli.main import cli
from corral.daemon.commandtable import HANDLERS
from corral.daemon.http.resources import RESOURCES
from corral.daemon.visibility import RULES
from corral.methods import REGISTRY

from .trees import file_tree, parsed, walked

ROOT = Path(__file__).resolve().parent.parent
CORRAL = ROOT / "corral"
DECLARATIONS = CORRAL / "methods"


def _declared_names(path: Path) -> list[str]:
    """The names a module declares: the first argument of each `@method(...)`."""
    return [d.args[0].value for node in walked(file_tree(path))
            if isinstance(node, ast.ClassDef) for d in node.decorator_list
            if isinstance(d, ast.Call) and isinstance(d.func, ast.Name)
            and d.func.id == "method" and isinstance(d.args[0], ast.Constant)]


def test_every_method_is_declared_once_and_implemented_once() -> None:
    declared = [n for p in sorted(DECLARATIONS.glob("*.py")) for n in _declared_names(p)]
    assert sorted(declared) == sorted(REGISTRY)
    assert len(declared) == len(set(declared)), "a method declared twice"
    # the handler table refuses a method implemented twice; none is missing
    assert set(HANDLERS.table) == set(REGISTRY)


def _name_strings(source: str) -> list[tuple[int, str]]:
    names = set(REGISTRY)
    return [(n.lineno, n.value) for n in walked(parsed(source))
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and n.value in names]


def test_no_module_but_the_declaration_spells_a_methods_name() -> None:
    """A method's name as a string constant of corral/'s Python appears in its declaration
    alone: the CLI, the handlers, the dashboard and the other callers in the daemon refer
    to the declaration (its params Struct), never to the name (docs and tests may; the
    dashboard's page, JavaScript, names what /ui/session offers it)."""
    spelled = [f"{p.relative_to(ROOT)}:{line}: {name}"
               for p in sorted(CORRAL.rglob("*.py")) if DECLARATIONS not in p.parents
               for line, name in _name_strings(p.read_text())]
    assert spelled == []


def test_the_name_check_sees_a_name_spelled() -> None:
    """The check above is no blind walk: a name in a call, a key and a comparison is seen."""
    source = 'obj.call("tasks.get", {})\nx = {"tasks.list": 1}\nif m == "traces.get": pass\n'
    assert sorted(n for _, n in _name_strings(source)) == ["tasks.get", "tasks.list",
                                                           "traces.get"]


def test_every_visibility_rule_named_is_one_and_every_rule_is_named() -> None:
    named = {spec.seen for spec in REGISTRY.values() if spec.seen is not None}
    assert named - set(RULES) == set(), "a declaration names a rule there is not"
    assert set(RULES) - named == set(), "a rule no method names"


def test_the_rest_routes_and_the_dashboard_are_the_declarations() -> None:
    assert [r for spec in REGISTRY.values() for r in spec.routes] == RESOURCES
    assert all(r.method == spec.name for spec in REGISTRY.values() for r in spec.routes)
    routes = {(r.verb, r.path) for r in RESOURCES}
    assert len(routes) == len(RESOURCES), "one HTTP method and path routed twice"
    # the dashboard does nothing a token of the same scopes could not: each of its calls
    # and streams is a REST route's too
    assert {n for n, s in REGISTRY.items() if s.dashboard} <= {r.method for r in RESOURCES}


def _command(path: str) -> click.Command:
    group: click.Command = cli
    for word in path.split():
        assert isinstance(group, click.Group), path
        # get_command: a command's module is imported when it is asked for (app.COMMANDS)
        found = group.get_command(click.Context(group), word)
        assert found is not None, f"no CLI command `corral {path}`"
        group = found
    return group


def test_each_cli_command_declared_is_the_methods_front() -> None:
    fronts = {n: s.cli for n, s in REGISTRY.items() if s.cli is not None}
    assert fronts, "no method names its CLI command"
    for name, path in fronts.items():
        command = _command(path)
        assert command.help is not None
        assert command.help.startswith(inspect.cleandoc(REGISTRY[name].doc)), name
    assert len(set(fronts.values())) == len(fronts), "one CLI command the front of two"


def _chains(source: str, label: str) -> list[str]:
    """What a handler module's functions reach three attributes deep into through their
    first parameter (`d.teams.catalog.add(`: a handler reaching past its services, to a
    part of a part; `d.sup.mcp.list_tools` was a locator)."""
    found = []
    for f in walked(parsed(source)):
        if not isinstance(f, ast.FunctionDef | ast.AsyncFunctionDef) or not f.args.args:
            continue
        first = f.args.args[0].arg
        for node in ast.walk(f):
            hops, target = 0, node
            while isinstance(target, ast.Attribute):
                hops, target = hops + 1, target.value
            if isinstance(target, ast.Name) and target.id == first != "self" and hops == 3:
                found.append(f"{label}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_no_handler_reaches_three_deep() -> None:
    modules = {Path(inspect.getsourcefile(fn) or "") for _, fn in HANDLERS.table.values()}
    # and the checks of whose a record is, which run before a handler on the same services
    modules.add(ROOT / "corral" / "daemon" / "records.py")
    chains = [c for p in sorted(modules) for c in _chains(p.read_text(), str(p.relative_to(ROOT)))]
    assert chains == []


def test_the_chain_check_sees_a_chain() -> None:
    source = "async def h(d, p, caller, c):\n    return d.teams.catalog.add(p)\n"
    assert _chains(source, "probe.py") == ["probe.py:2: d.teams.catalog.add"]
    # two deep (a domain's service and its method) is what a narrow handler does
    assert _chains("async def h(t, p, caller, c):\n    return t.tasks.get(p)\n", "") == []


# asking whose a record is, by name: what a rule's `record` does (corral/daemon/records.py)
_WHOSE = ("sees_call", "sees_task", "sees_record", "owns")
# what a handler may still ask of the caller: which of many it may name, not whose the one
# named is (a workflow's definition names only workflows the caller sees); only shrinks
_NAMING = {("corral/daemon/workflows/handlers.py", "_check", "sees_record")}


def _whose(source: str, label: str) -> list[tuple[str, str, str]]:
    """The calls in a module's functions that ask whether the caller sees a record:
    (module, outermost function, the name called)."""
    found = []
    for f in parsed(source).body:
        if not isinstance(f, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for node in ast.walk(f):
            if not isinstance(node, ast.Call):
                continue
            called = node.func
            name = (called.id if isinstance(called, ast.Name) else
                    called.attr if isinstance(called, ast.Attribute) else "")
            if name.startswith(("seen_", "_seen")) or name in _WHOSE:
                found.append((label, f.name, name))
    return found


def test_no_handler_asks_whose_a_record_is() -> None:
    """Authorization is the declaration's (issue 53 item 5): the method's scope, its
    visibility rule, and the record that rule names, asked by the dispatcher before the
    handler runs; a handler asks of a record what it is, never whose."""
    modules = {Path(inspect.getsourcefile(fn) or "") for _, fn in HANDLERS.table.values()}
    asked = {w for p in sorted(modules) for w in _whose(p.read_text(),
                                                         str(p.relative_to(ROOT)))}
    assert asked - _NAMING == set()
    assert asked >= _NAMING, "an allowed call is gone: take it out of _NAMING"


def test_the_whose_check_sees_a_handler_asking() -> None:
    source = ("async def h(d, p, caller, c):\n"
              "    seen_team(caller, d.teams, p.agent)\n"
              "    if not caller.sees_record(p.agent, None):\n"
              "        raise KeyError\n"
              "    return [t for t in d.tasks if caller.sees(t.agent)]\n")
    assert _whose(source, "probe.py") == [("probe.py", "h", "seen_team"),
                                          ("probe.py", "h", "sees_record")]
