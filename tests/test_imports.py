"""The import graph against DESIGN.md section 1: no import cycle between the files of a
package (TYPE_CHECKING and function-level imports included: a back-reference is a
Protocol the other side implements), and packages import only along the design's
direction."""

from __future__ import annotations

import ast
import functools
from collections.abc import Iterator
from pathlib import Path

import pytest

from .trees import file_tree, walked

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
    for node in walked(file_tree(path)):
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


@functools.cache
def graph() -> dict[str, set[str]]:
    """Each corral module's corral imports. Made by the first test that asks, not at
    import: every pytest-xdist worker collects this file, and parsing all of corral was
    a second of each worker's collection."""
    return {name: set(imports(name, path)) for name, path in MODULES.items()}


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
    return cycles(nodes, graph())


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
    for mod, targets in graph().items():
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


@pytest.mark.parametrize(("module", "unused"), [
    # the worker SDK: every agent's start, the start the suite pays most often; its locks
    # and threads are _thread's
    ("corral.worker", ("threading", "functools", "collections", "typing", "json")),
    # the config's schema alone (`corral import`, `check-config`): corral.supervisor's names
    # are imported when asked for, not the engine with the package
    ("corral.supervisor.configload", ("corral.supervisor.core", "corral.supervisor.tasks",
                                      "corral.supervisor.replica")),
    # the trace exporter with no endpoint: its HTTP client is imported with an endpoint,
    # and of the engine what a record's spans need (supervisor/tracerecords.py), not the
    # engine's tracer, its task machine or asyncio (a traced daemon's exporter was most of
    # its start: bench/RESULTS.md, the boot's paragraph)
    ("corral.daemon.traceexport", ("http.client", "urllib.request", "email.parser",
                                   "asyncio", "corral.jsonrpc", "corral.tracecontext",
                                   "corral.supervisor.tracing",
                                   "corral.supervisor.tasks.taskmachine",
                                   "corral.supervisor.tasks.manager",
                                   "corral.supervisor.process_replica", "corral.results")),
])
def test_a_processs_start_imports_none_of_what_it_does_not_use(
        module: str, unused: tuple[str, ...]) -> None:
    """Starts the suite pays hundreds of times each (bench/RESULTS.md, "The suite's
    process starts")."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-c", f"import sys, {module}; print(*sorted("
                        f"m for m in sys.modules if m in {unused!r}))"],
                       capture_output=True, text=True, timeout=60, cwd=ROOT.parent)
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


# A daemon's start, run where the test can read its sys.modules once every agent serves:
# the real composition (uvloop, as `corral daemon`), stopped as SIGTERM would.
_BOOT = """
import asyncio, dataclasses, sys
from pathlib import Path

import uvloop

from corral.daemon.daemon import Daemon
from corral.supervisor import State

async def main() -> int:
    d = Daemon(Path(sys.argv[1]))
    run = asyncio.ensure_future(d.run())
    set_up = asyncio.ensure_future(d.set_up.wait())
    await asyncio.wait([run, set_up], return_when=asyncio.FIRST_COMPLETED)
    assert not run.done(), run.result()
    for name, agent in d.sup.agents.items():
        for i in range(len(agent.replicas)):
            await d.sup.wait_state(name, {State.READY, State.IDLE}, replica=i, timeout=60)
    heavy = tuple(sys.argv[2].split())
    print(*sorted(m for m in sys.modules if m.startswith(heavy)))
    print(*sorted(f"{m}.{k}" for m, mod in list(sys.modules.items()) if m.startswith("corral")
                  for k, v in vars(mod).items() if isinstance(v, type)
                  and v.__module__ == m and dataclasses.is_dataclass(v)))
    d.request_stop()
    return await run

sys.exit(uvloop.run(main()))
"""

# what a daemon whose config has no [cluster], [http], [gateway], [tracing], model agent
# or package starts without; and, until a call of their domain, the control methods'
# handler modules (api.Handlers), and until a deploy, the package builder and uv's
# search (decision 926)
_NOT_USED = ("aiohttp", "redis", "opentelemetry", "prometheus_client", "anthropic",
             "openai", "mcp.", "corral.daemon.http", "corral.daemon.models",
             "corral.cluster.node", "corral.importer", "corral.cli",
             *(f"corral.daemon.{m}handlers" for m in (
                 "access", "approval", "event", "gateway", "log", "mcp", "node", "package",
                 "schedule", "session", "stat", "task", "tenant")),
             "corral.daemon.teams.handlers", "corral.daemon.workflows.handlers",
             "corral.daemon.packages.build", "corral.daemon.packages.checked",
             "corral.daemon.packages.manifest", "corral.daemon.packages.requirements",
             "uv._find_uv",
             # imported where a drift's diff, a compressed rotation or a heap dump uses them
             "difflib", "gzip", "ctypes.util")

# the dataclasses a start still makes (~1-2 ms each at import, their methods compiled
# from source; a msgspec Struct's class ~0.05 ms): the engine's and the daemon's records
# are Structs (msgspec.structs.replace, msgspec.field's factories; decision 929), and so
# are the methods' declarations and REST routes (decision 920): none is left
_STILL_DATACLASSES: list[str] = []


def test_a_minimal_daemons_start_makes_only_what_it_uses(tmp_path: Path) -> None:
    """A daemon of two agents and nothing else, once both serve, has imported none of the
    subsystems its config does not use (the HTTP stack, the cluster's node and redis-py,
    tracing's exporters, the model gateway, the MCP SDK, the CLI) and made none of the
    daemon's bags of parts as a dataclass, nor the handlers of methods no one called:
    its start and stop are a quarter of a second of CPU, nearly all imports, and the
    suite starts ~730 daemons (bench/RESULTS.md, "a daemon's boot" and "at half its
    CPU")."""
    import subprocess
    import sys

    from .daemon_harness import config_text, hello

    config = tmp_path / "corral.toml"
    config.write_text(config_text(hello("one") + hello("two"), tmp_path / "corral.sock",
                                  tmp_path / "state"))
    r = subprocess.run([sys.executable, "-c", _BOOT, str(config), " ".join(_NOT_USED)],
                       capture_output=True, text=True, timeout=120, cwd=ROOT.parent)
    assert (r.returncode, r.stdout) == (0, "\n" + " ".join(_STILL_DATACLASSES) + "\n"), \
        r.stderr


# A command's start, as the console script's (corral.cli.entry), against a socket with no
# daemon (the path of its start up to its first call), its modules once it is done.
_COMMAND_START = """
import atexit, sys
atexit.register(lambda: print(*sorted(sys.modules), file=sys.__stdout__))
sys.argv = ["corral", *sys.argv[1:]]
from corral.cli.entry import main
main()
"""


@pytest.mark.parametrize(("args", "domains"), [
    (("status",), ["agents", "daemon", "stats"]),
    (("tasks",), ["daemon", "tasks"]),
    (("task", "t-1"), ["daemon", "tasks"]),
    (("submit", "echo"), ["daemon", "tasks"]),
    (("logs", "echo"), ["daemon", "logs"]),
])
def test_a_commands_start_declares_only_the_methods_it_calls(
        tmp_path: Path, args: tuple[str, ...], domains: list[str]) -> None:
    """A command declares the methods of the domains it calls (corral.methods.DOMAINS:
    the client's probe is daemon.info), not all ~100, and imports neither socket.py (the
    client connects with _socket) nor json (imported where a command prints JSON): a
    start was ~0.08 s of CPU and the suite starts the CLI ~1,900 times (bench/RESULTS.md,
    "The CLI's start at half its CPU")."""
    import subprocess
    import sys

    sock = tmp_path / "no.sock"
    r = subprocess.run([sys.executable, "-c", _COMMAND_START, "--socket", str(sock), *args],
                       capture_output=True, text=True, timeout=60, cwd=ROOT.parent)
    assert (r.returncode, r.stderr.splitlines()[0]) == (
        3, f"corral: cannot reach the corral daemon at {sock}: no socket there")
    modules = r.stdout.split()
    assert [m.removeprefix("corral.methods.") for m in modules
            if m.startswith("corral.methods.")] == sorted(["declaration", *domains])
    assert [m for m in modules if m in ("socket", "selectors", "json")] == []


def _defined(path: Path) -> set[str]:
    """The public names a module defines itself (not those it imports)."""
    names: set[str] = set()
    for node in file_tree(path).body:
        if isinstance(node, ast.ClassDef | ast.FunctionDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return {n for n in names if not n.startswith("_")}


def test_the_methods_domain_table_is_what_the_domains_define() -> None:
    """corral.methods imports a domain's module when one of its names is asked for, by
    its table (DOMAINS): a name missing from it would not be found."""
    from corral import methods

    domains = {p.stem for p in (ROOT / "methods").glob("*.py")} - {"__init__", "declaration"}
    assert set(methods.DOMAINS) == domains
    assert {d: set(names) for d, names in methods.DOMAINS.items()} == {
        d: _defined(ROOT / "methods" / f"{d}.py") for d in methods.DOMAINS}
    with pytest.raises(AttributeError) as err:
        methods.NoSuchMethod  # noqa: B018
    assert str(err.value) == "module 'corral.methods' has no attribute 'NoSuchMethod'"


_REGISTRY_ORDER = """
import sys
import corral.methods as m
for name in sys.argv[1:]:
    getattr(m, name)
print(*m.REGISTRY)
"""


def test_the_registry_is_every_method_in_one_order_whichever_domain_came_first() -> None:
    """REGISTRY (the REST routes, the OpenAPI document and the dashboard list the methods
    in its order) declares every domain's methods when asked for, in the table's order
    whichever domains a process imported before."""
    import subprocess
    import sys

    from corral import methods

    def order(*first: str) -> list[str]:
        r = subprocess.run([sys.executable, "-c", _REGISTRY_ORDER, *first],
                           capture_output=True, text=True, timeout=60, cwd=ROOT.parent)
        assert r.stderr == ""
        return r.stdout.split()

    declared = order()
    assert declared == order("TenantsList", "DefinitionUpdate", "StatsGet") == list(
        methods.REGISTRY)
    assert sorted(declared) == sorted(
        p.declared.name for d in methods.DOMAINS for name in methods.DOMAINS[d]
        if isinstance(p := getattr(methods, name), type) and issubclass(p, methods.Params)
        and "declared" in vars(p))
    ranks = [list(methods.DOMAINS).index(methods.REGISTRY[n].params.__module__.rpartition(
        ".")[2]) for n in declared]
    assert ranks == sorted(ranks)


_COLLECTOR = """
import atexit, gc, sys
atexit.register(lambda: print(gc.isenabled(), gc.get_freeze_count() > 5_000,
                              file=sys.__stdout__))
sys.argv = ["corral", *sys.argv[1:]]
from corral.cli.entry import main
main()
"""


def test_a_commands_start_freezes_what_the_clis_import_made(tmp_path: Path) -> None:
    """The CLI's import runs with the cyclic collector off and what it made is frozen out
    of its passes (the one at the interpreter's exit too: ~0.01 s of a command's CPU);
    the command runs with the collector on, for what it makes."""
    import subprocess
    import sys

    sock = tmp_path / "no.sock"
    r = subprocess.run([sys.executable, "-c", _COLLECTOR, "--socket", str(sock), "status"],
                       capture_output=True, text=True, timeout=60, cwd=ROOT.parent)
    assert (r.returncode, r.stdout) == (3, "True True\n"), r.stderr
