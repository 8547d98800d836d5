"""Tests reach corral through its public surface (issue 53 item 6): a test that reads or
sets a private attribute of corral's objects (`replica._living`, `journal._writer`) holds
their insides still, so a recut breaks it while nothing a user sees changed. The walk here
finds such reaches: `x._name` in a test module, where some corral module defines `_name`
and the test module does not (its own helper's attributes are its own). A module moved to
the public surface is listed in PUBLIC and stays there.

    .venv/bin/python -c "from tests.test_public_surface import count; count()"

prints the reaches left, module by module.
"""

from __future__ import annotations

import ast
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from .trees import file_tree, parsed, walked

ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests"
# the standard library's underscored public names (os._exit, a namedtuple's _replace)
STDLIB = frozenset({"_exit", "_replace", "_asdict", "_fields", "_make"})
# test modules that reach no private attribute of corral's: only grows
PUBLIC = ("bad_utf8_http_mcp.py", "servers/model_upstream.py", "test_attacks_models.py",
          "test_checkpointer.py", "test_durable.py", "test_journal.py", "test_jsonrpc.py",
          "test_lean.py", "test_mcp.py",
          "test_memory.py", "test_model_usage.py", "test_payloads.py", "test_process.py",
          "test_sandbox.py", "test_scale.py", "test_sessions.py", "test_stop.py",
          "test_task_package.py", "test_upgrade.py", "test_warm.py", "test_writer_here.py")


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__") and name not in STDLIB


def defined(trees: Iterable[ast.AST]) -> set[str]:
    """The underscored names the modules define: functions, classes, attributes set."""
    names = set()
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                names.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                names.add(node.attr)
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                names.add(node.target.id)
    return {n for n in names if _private(n)}


def corrals_privates() -> set[str]:
    return defined(file_tree(p) for p in (ROOT / "corral").rglob("*.py"))


def reaches(source: str, privates: set[str]) -> list[tuple[int, str]]:
    """(line, name) of each private attribute of corral's a test module reaches."""
    module = parsed(source)
    own = defined([module])
    return sorted((node.lineno, node.attr) for node in walked(module)
                  if isinstance(node, ast.Attribute) and node.attr in privates
                  and _private(node.attr)
                  and node.attr not in own
                  and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")))


def count() -> None:
    privates = corrals_privates()
    found = Counter({str(p.relative_to(ROOT)): len(reaches(p.read_text(), privates))
                     for p in sorted(TESTS.rglob("*.py"))})
    for module, n in found.most_common():
        if n:
            print(n, module)
    print(sum(found.values()), "reaches in", sum(1 for n in found.values() if n), "modules")


def test_the_modules_on_the_public_surface_reach_no_private_attribute() -> None:
    privates = corrals_privates()
    found = {name: reaches((TESTS / name).read_text(), privates) for name in PUBLIC}
    assert {name: r for name, r in found.items() if r} == {}


def test_the_walk_sees_a_private_reach_and_leaves_a_helpers_own() -> None:
    source = ("class Helper:\n    def __init__(self):\n        self._mine = 1\n"
              "def test(r, h):\n    assert not r._living and h._mine\n"
              "    os._exit(0)\n    return self._living\n")
    assert reaches(source, {"_living", "_mine", "_exit"}) == [(5, "_living")]
