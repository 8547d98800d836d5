"""The import graph against DESIGN.md section 1: no import cycle between the files of a
package (TYPE_CHECKING and function-level imports included: a back-reference is a
Protocol the other side implements), and packages import only along the design's
direction."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "corral"

# who may import whom (and, through them, whom they may): DESIGN.md section 1
DIRECTION = {
    "cli": {"daemon", "importer"},
    "importer": {"supervisor"},  # corral import: the config schema and its names
    "daemon": {"cluster", "supervisor", "mcp"},
    "cluster": {"supervisor", "jsonrpc"},
    "supervisor": {"mcp", "jsonrpc"},
    "mcp": {"jsonrpc"},
    "jsonrpc": set(),
    "worker": set(),
}
SHARED = "shared"  # corral's top-level modules besides jsonrpc (methods, paths, text, ...)


def modules() -> dict[str, Path]:
    found = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


MODULES = modules()


def imports(name: str, path: Path) -> Iterator[str]:
    """The corral modules `name` imports, wherever in the file (TYPE_CHECKING included)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            targets = [f"{mod}.{a.name}" for a in node.names]
            targets = [t if t in MODULES else mod for t in targets]
        else:
            continue
        for t in targets:
            while t and t not in MODULES:  # a name in a module: the module
                t = t.rpartition(".")[0]
            if t and t != name and t.startswith("corral"):
                yield t


GRAPH = {name: set(imports(name, path)) for name, path in MODULES.items()}


def cycles(nodes: set[str], edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in nodes:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(nodes):
        if v not in index:
            visit(v)
    return out


def package_of(module: str) -> str:
    parts = module.split(".")
    if module == "corral.__main__":  # `python -m corral`: the CLI
        return "cli"
    if module == "corral.jsonrpc":
        return "jsonrpc"
    if len(parts) == 1:
        return SHARED
    if parts[1] in DIRECTION:
        return parts[1]
    return SHARED


def file_cycles(package: str, leave_out: frozenset[str] = frozenset()) -> list[list[str]]:
    nodes = {m for m in MODULES if m.startswith(f"corral.{package}.")} - leave_out
    return cycles(nodes, GRAPH)


def test_the_supervisors_files_import_no_cycle() -> None:
    assert file_cycles("supervisor") == []


@pytest.mark.parametrize("package", ["mcp", "cluster", "worker", "cli", "importer"])
def test_other_packages_files_import_no_cycle(package: str) -> None:
    assert file_cycles(package) == []


def test_the_daemons_files_import_no_cycle() -> None:
    assert file_cycles("daemon") == []


def allowed(src: str) -> set[str]:
    seen: set[str] = set()
    todo = [src]
    while todo:
        for nxt in DIRECTION.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_packages_import_along_the_design() -> None:
    wrong = set()
    for mod, targets in GRAPH.items():
        src = package_of(mod)
        for t in targets:
            dst = package_of(t)
            if src == dst or (src == SHARED and dst in ("jsonrpc", SHARED)):
                continue
            if src == "worker" or dst not in allowed(src) | {SHARED}:
                wrong.add(f"{mod} -> {t}")
    assert sorted(wrong) == []


def test_the_walk_sees_a_type_checking_back_reference(tmp_path: Path) -> None:
    """The checks above can fail: a back-import under TYPE_CHECKING is a cycle."""
    a = tmp_path / "zz_a.py"
    a.write_text("from . import zz_b\n")
    b = tmp_path / "zz_b.py"
    b.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                 "    from .zz_a import A\n")
    names = {"corral.daemon.zz_a": a, "corral.daemon.zz_b": b}
    MODULES.update(names)
    try:
        graph = {n: set(imports(n, p)) for n, p in names.items()}
        assert graph == {"corral.daemon.zz_a": {"corral.daemon.zz_b"},
                         "corral.daemon.zz_b": {"corral.daemon.zz_a"}}
        assert cycles(set(graph), graph) == [sorted(names)]
    finally:
        for n in names:
            del MODULES[n]


def test_the_clis_start_imports_no_engine() -> None:
    """Every `corral` command starts by importing the CLI: the engine (supervisor), the
    daemon, the cluster, the MCP client and the importer are imported where a command
    needs them, not at its start. The engine alone was two thirds of a start's CPU (the
    suite runs the CLI a few thousand times: bench/RESULTS.md, the suite's section)."""
    import subprocess
    import sys

    heavy = ("corral.supervisor", "corral.daemon", "corral.cluster", "corral.mcp",
             "corral.importer")
    r = subprocess.run([sys.executable, "-c", "import sys, corral.cli.main; print(*sorted("
                        f"m for m in sys.modules if m.startswith({heavy!r})))"],
                       capture_output=True, text=True, timeout=60,
                       cwd=ROOT.parent)
    assert (r.returncode, r.stdout, r.stderr) == (0, "\n", "")


def test_the_daemons_start_imports_no_http_stack() -> None:
    """A daemon's start imports aiohttp (client or server) only for what its config asks
    of it ([http], an MCP server over HTTP, a webhook): most daemons have none of them,
    and aiohttp's import was a third of a start's CPU (~0.1 s; the suite starts a daemon
    hundreds of times: bench/RESULTS.md, "suite time")."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-c", "import sys, corral.daemon.daemon; print(*sorted("
                        "m for m in sys.modules if m.startswith('aiohttp')))"],
                       capture_output=True, text=True, timeout=60, cwd=ROOT.parent)
    assert (r.returncode, r.stdout, r.stderr) == (0, "\n", "")
