"""The house's rules that an AST walk can hold (issue 35 item 2, decisions 185-189): the
command handlers reach no attribute chain deeper than two from their services, services
are given the engine's parts and not the Supervisor, the engine's composition stays
small, no function in corral/ is over 100 lines and no module over 1,000 but two
(decision 213); and the modules a gateway tool call, an approval and `corral run` run in a
traced daemon (issue 86, tests/pathtrace/)."""

from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import shutil
import subprocess
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import EXAMPLES
from .daemon_harness import PY, Daemon, hello, shared_tmpdir
from .pathtrace.trace import Control, McpSession, Tracer, path_modules
from .trees import file_tree, parsed, walked

ROOT = Path(__file__).resolve().parent.parent
CORRAL = ROOT / "corral"


def _is_supervisor(annotation: ast.expr | None) -> bool:
    if isinstance(annotation, ast.Name):
        return annotation.id == "Supervisor"
    if isinstance(annotation, ast.Constant) and isinstance(annotation.value, str):
        return annotation.value.strip() == "Supervisor"
    return isinstance(annotation, ast.Attribute) and annotation.attr == "Supervisor"


def supervisor_members_reached(root: Path) -> dict[str, set[str]]:
    """member -> the modules outside corral/supervisor/ that reach it, on a name or
    attribute that holds a Supervisor: a parameter or variable annotated so, `self.X`
    given one in a method, and anything called `sup`."""
    reached: dict[str, set[str]] = {}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root.parent).as_posix()
        if rel.startswith("corral/supervisor/"):
            continue
        tree = file_tree(path)
        held: set[str] = set()  # self.X holding the supervisor
        functions = [n for n in walked(tree)
                     if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)]
        for fn in functions:
            names = {a.arg for a in fn.args.args + fn.args.kwonlyargs
                     if _is_supervisor(a.annotation)}
            for n in ast.walk(fn):
                if isinstance(n, ast.AnnAssign) and _is_supervisor(n.annotation) \
                        and isinstance(n.target, ast.Attribute):
                    held.add(n.target.attr)
                if isinstance(n, ast.Assign) and isinstance(n.value, ast.Name) \
                        and n.value.id in names:
                    held.update(t.attr for t in n.targets if isinstance(t, ast.Attribute))
        for fn in functions:
            names = {a.arg for a in fn.args.args + fn.args.kwonlyargs
                     if _is_supervisor(a.annotation)} | {"sup"}
            for n in ast.walk(fn):
                if isinstance(n, ast.AnnAssign) and _is_supervisor(n.annotation) \
                        and isinstance(n.target, ast.Name):
                    names.add(n.target.id)
            for n in ast.walk(fn):
                if not isinstance(n, ast.Attribute):
                    continue
                v = n.value
                if (isinstance(v, ast.Name) and v.id in names) or (
                        isinstance(v, ast.Attribute) and (v.attr == "sup" or (
                            isinstance(v.value, ast.Name) and v.value.id == "self"
                            and v.attr in held))):
                    reached.setdefault(n.attr, set()).add(rel)
    return reached


def test_fewer_than_ten_supervisor_members_are_reached_from_outside_the_engine() -> None:
    reached = supervisor_members_reached(CORRAL)
    assert len(reached) < 10, sorted(reached)


def test_the_walk_finds_a_reach_it_is_shown(tmp_path: Path) -> None:
    """The rule above is not true by a blind walk: a module that reaches members is seen."""
    pkg = tmp_path / "corral" / "daemon"
    pkg.mkdir(parents=True)
    (pkg / "x.py").write_text(
        "class A:\n"
        "    def __init__(self, sup: 'Supervisor') -> None:\n"
        "        self.engine = sup\n"
        "    def f(self) -> None:\n"
        "        self.engine.tenancy.known('t')\n"
        "def g(d) -> None:\n"
        "    d.sup.mcp.list_tools()\n")
    assert supervisor_members_reached(tmp_path / "corral") == {
        "tenancy": {"corral/daemon/x.py"}, "mcp": {"corral/daemon/x.py"}}


def _long_functions(source: str, name: str, limit: int) -> list[str]:
    """Each function of `source` (a method, a nested one) longer than `limit` lines, its
    decorators counted."""
    return [f"{name}:{n.name} ({n.end_lineno - _start(n) + 1} lines)"
            for n in walked(parsed(source))
            if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)
            and n.end_lineno is not None and n.end_lineno - _start(n) + 1 > limit]


def _start(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    return min([fn.lineno, *(d.lineno for d in fn.decorator_list)])


def test_the_engine_core_is_small() -> None:
    core = CORRAL / "supervisor" / "core.py"
    assert len(core.read_text().splitlines()) < 450


def test_no_function_in_corral_is_over_a_hundred_lines() -> None:
    assert [f for p in sorted(CORRAL.rglob("*.py"))
            for f in _long_functions(p.read_text(), p.relative_to(ROOT).as_posix(), 100)
            ] == []


def test_the_length_walk_sees_a_long_method() -> None:
    """The measure is not true by a blind walk: a decorated method of 101 lines is seen,
    one of 100 is not."""
    def source(lines: int) -> str:
        body = "".join(f"        x{i} = {i}\n" for i in range(lines - 2))
        return f"class A:\n    @staticmethod\n    def f() -> None:\n{body}"

    assert _long_functions(source(101), "x.py", 100) == ["x.py:f (101 lines)"]
    assert _long_functions(source(100), "x.py", 100) == []


# the wire's codec (issue 35: the one module allowed past 1,000 lines)
LONG_MODULES = {"corral/jsonrpc.py"}


def test_no_module_in_corral_is_over_a_thousand_lines_but_the_wires() -> None:
    long = {p.relative_to(ROOT).as_posix() for p in CORRAL.rglob("*.py")
            if len(p.read_text().splitlines()) > 1000}
    assert long <= LONG_MODULES, sorted(long - LONG_MODULES)


def test_no_handler_or_task_front_asks_whether_this_daemon_is_a_node() -> None:
    """The cluster is a seam (daemon/clusterpeer.py, decision 251): no `cluster is
    None`, `cluster is not None` or `if ...cluster:` in the handlers or the task fronts."""
    files = [*(CORRAL / "daemon").glob("*handlers.py"), *(CORRAL / "daemon" / "tasks").glob("*.py"),
             CORRAL / "daemon" / "http" / "metrics.py"]
    found = []
    for path in files:
        for node in walked(file_tree(path)):
            if isinstance(node, ast.Compare) and any(
                    isinstance(op, ast.Is | ast.IsNot) for op in node.ops) and any(
                    isinstance(o, ast.Attribute) and o.attr == "cluster"
                    for o in (node.left, *node.comparators)):
                found.append(f"{path.name}:{node.lineno}")
    assert found == []


def test_sessions_are_read_through_one_source_alone() -> None:
    """A session is read and ended by name through SessionBook (decision 1290): no handler
    or record merges this engine's sessions and the cluster's on a not-found of its own."""
    store = {"session_views", "session_info", "end_session"}
    calls = {f"{path.relative_to(CORRAL)}" for path in CORRAL.rglob("*.py")
             for node in walked(file_tree(path)) if isinstance(node, ast.Call)
             and isinstance(node.func, ast.Attribute) and node.func.attr in store}
    assert calls == {"supervisor/tasks/sessions.py"}


def _class_names() -> dict[str, list[str]]:
    """Each class name defined in corral/ -> where (file:line), every definition."""
    found: dict[str, list[str]] = {}
    for path in sorted(CORRAL.rglob("*.py")):
        for node in walked(file_tree(path)):
            if isinstance(node, ast.ClassDef):
                found.setdefault(node.name, []).append(
                    f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


def test_no_class_name_is_defined_twice_in_corral() -> None:
    """One name, one class: `Step` was a replica machine's row, a journaled step and a
    workflow's step; each says what it is (MachineStep, Step, PlanStep)."""
    twice = {name: where for name, where in _class_names().items() if len(where) > 1}
    assert twice == {}


# past participles a class name may be whole (`Taken`, `_Kept`): it says what happened,
# not what the thing is; -ed and -en words besides these nouns are participles too
IRREGULAR = {"Up", "Said", "Kept", "Held", "Taken", "Seen", "Broken", "Done", "Sent", "Made",
             "Set", "Left", "Lost", "Built", "Found", "Told", "Bound", "Shut", "Cut", "Put",
             "Given", "Gone", "Known", "Shown", "Written", "Read"}
NOUNS = {"Children", "Token", "Screen", "Seed", "Speed", "Feed", "Need", "Run"}


def participle(name: str) -> bool:
    word = name.lstrip("_")
    if not re.fullmatch(r"[A-Z][a-z]+", word) or word in NOUNS:
        return False
    return word in IRREGULAR or word.endswith(("ed", "en"))


def test_no_class_name_is_a_past_participle() -> None:
    """A class is named for its role (`Takeover`, `ExporterLine`, `StartResult`), not for
    what happened to it (`Taken`, `Said`, `Started`)."""
    named = sorted(f"{name} ({where[0]})" for name, where in _class_names().items()
                   if participle(name))
    assert named == []


def test_the_participle_rule_tells_a_participle_from_a_role_noun() -> None:
    assert [n for n in ("Up", "Taken", "_Kept", "Started", "Said", "Refused")
            if not participle(n)] == []
    assert [n for n in ("Children", "Token", "Run", "StartResult", "TaskFinished",
                        "Takeover", "Step") if participle(n)] == []


def test_pytest_keeps_the_test_files_rewritten_byte_code() -> None:
    """tests/conftest.py lets pytest write it where PYTHONDONTWRITEBYTECODE is set: each
    worker of each run rewrote and compiled every test file again."""
    here = Path(__file__)
    assert list((here.parent / "__pycache__").glob(f"{here.stem}.*-pytest-*.pyc"))


# DESIGN 28, decision 1104: a tool call's checks are links of the one chain, in these
# modules; a door applies none of its own
CHAIN_LINKS = {
    "corral/supervisor/tasks/chain.py",  # identity and view, the owner, journal, budget
    "corral/supervisor/tasks/approvals.py",  # policy rules, labels (taint), approval
    "corral/supervisor/tasks/pingate.py",  # pins
    "corral/supervisor/policy.py",  # the rules' judge the approvals link asks
    # a task submitted (REST, A2A, /mcp/corral of no task; decision 1170): identity and
    # view (an anonymous caller's own tasks), the labels handed to it, who approves
    "corral/daemon/api.py",  # the Dispatcher: the caller's scope, its visibility rules
    "corral/daemon/records.py",
    "corral/daemon/handing.py",
    "corral/daemon/deciders.py",
    "corral/daemon/replayview.py",
    # dispatch of a spawn: the labels its order carries (spawn.py read them) handed on
    "corral/supervisor/tasks/nodespawns.py",
    # a model call's (decision 1180): its view; policy rules, labels, approval; budget
    "corral/supervisor/tasks/modelview.py",
    "corral/supervisor/tasks/modelapprovals.py",
    "corral/supervisor/tasks/modelbudget.py",
}
# what answers no call, with a check of its own: the scrape of /metrics (its token's scope)
NOT_A_CALL = {"corral/daemon/http/metrics.py"}
# the calls that are a check of a call: a tool call's budget, a policy rule's verdict (a
# client's too, decision 1641), the approval policy's terms, a call of no task's gate,
# a model call's view, approval terms
CHECKS = {"take_tool_call", "give_back_tool_call", "gate", "judge", "judge_client",
          "terms_of", "model_policy_of", "model_in_view", "reserve"}


def call_checks(path: Path, root: Path = ROOT) -> list[str]:
    """Where `path` checks a call itself: a call of one of CHECKS, a caller's allowlist
    asked (`allowed(NAME, X.allow)`: a client's, a token's; a list filtered for a listing
    passes `allow` itself, no caller's), an ask of a person's
    approval made (`AskKind.APPROVAL` given to an ask), a drifted tool's refusal caught,
    labels handed to a task (`HANDED.set`), an anonymous caller judged (`caller.anonymous`
    read: what it may reach, hand on, decide; the operator's `[a2a] anonymous` is who), a
    caller's scope asked of (`caller.may`: a route that answers no call, /metrics, asks
    its own)."""
    found = []
    tree = file_tree(path)
    for node in walked(tree):
        if isinstance(node, ast.Attribute) and node.attr == "anonymous" and \
                ast.unparse(node.value).endswith("caller"):
            found.append(f"{path.relative_to(root)}:{node.lineno} .anonymous")
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                node.func.attr == "set" and ast.unparse(node.func.value) == "HANDED":
            found.append(f"{path.relative_to(root)}:{node.lineno} HANDED.set")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                node.func.attr == "may" and ast.unparse(node.func.value).endswith("caller"):
            found.append(f"{path.relative_to(root)}:{node.lineno} caller.may")
        elif isinstance(node, ast.Call):
            f = node.func
            name = f.id if isinstance(f, ast.Name) else f.attr \
                if isinstance(f, ast.Attribute) else ""
            asks = any(isinstance(a, ast.Attribute) and a.attr == "APPROVAL"
                       for a in node.args[:1])
            whose = name == "allowed" and len(node.args) > 1 and \
                isinstance(node.args[1], ast.Attribute) and node.args[1].attr == "allow"
            if name in CHECKS or asks or whose:
                found.append(f"{path.relative_to(root)}:{node.lineno} {name}")
        elif isinstance(node, ast.ExceptHandler) and node.type is not None and \
                "ToolDrifted" in ast.unparse(node.type):
            found.append(f"{path.relative_to(root)}:{node.lineno} except ToolDrifted")
    return sorted(found)


def test_no_policy_budget_approval_or_pin_check_is_outside_the_chains_links() -> None:
    outside = [c for p in sorted(CORRAL.rglob("*.py"))
               if p.relative_to(ROOT).as_posix() not in
               CHAIN_LINKS | NOT_A_CALL
               for c in call_checks(p)]
    # a door checks nothing itself: its skill reads and /mcp/corral's view of an agent
    # included (decisions 1690 and 1691)
    assert outside == []


def test_the_check_scan_sees_a_door_that_checks_a_call_itself(tmp_path: Path) -> None:
    door = tmp_path / "door.py"
    door.write_text("def f(task, r, guard, pins):\n"
                    "    take_tool_call(task, r)\n"
                    "    guard.judge(1, r, None, 'tool', 'x', {})\n"
                    "    ask(AskRequest(AskKind.APPROVAL, None))\n"
                    "    try:\n        pins.call()\n    except ToolDrifted:\n        pass\n"
                    "    HANDED.set((caller.who,)) if caller.anonymous else None\n"
                    "    settings.anonymous\n"
                    "    caller.may('tasks:read')\n"
                    "    allowed(name, ident.allow) and allowed(name, allow)\n")
    assert call_checks(door, tmp_path) == [
        "door.py:11 caller.may", "door.py:12 allowed", "door.py:2 take_tool_call",
        "door.py:3 judge", "door.py:4 AskRequest", "door.py:7 except ToolDrifted",
        "door.py:9 .anonymous", "door.py:9 HANDED.set"]


# Issue 86's "one of each": every HTTP message corral takes is read by llhttp (httptools,
# or aiohttp's parser, which is llhttp too), and every seccomp filter is built by libseccomp
# (supervisor/seccomp.py): a hand parser or a hand-built filter beside them is a second one,
# each with the holes the other closes. An HTTP answer corral's clients take is read by
# one reader, http1answer.py (decision 2200): a response parser made elsewhere is another.
HTTP_TESTS = {"startswith", "endswith", "match", "fullmatch", "search", "compile", "find",
              "index", "split", "partition", "rpartition"}
FILTER_NAMES = ("SECCOMP_RET", "SECCOMP_SET_MODE", "PR_SET_SECCOMP", "BPF_", "sock_filter",
                "sock_fprog")


def _literal(node: ast.AST) -> str:
    value = node.value if isinstance(node, ast.Constant) else None
    return value.decode("latin-1") if isinstance(value, bytes) else \
        value if isinstance(value, str) else ""


def _imports(tree: ast.Module) -> set[str]:
    return {name.split(".")[0] for node in walked(tree) for name in (
        [a.name for a in node.names] if isinstance(node, ast.Import) else
        [node.module or ""] if isinstance(node, ast.ImportFrom) else [])}


def second_parsers(path: Path, root: Path) -> list[str]:
    """A module's reads of HTTP by hand (a literal of HTTP's version tested against what
    was read, in a module llhttp reads nothing for), its answers' readers beside
    http1answer.py's and its seccomp programs built by hand (BPF's names, or pyseccomp
    outside seccomp.py)."""
    rel, tree = path.relative_to(root).as_posix(), file_tree(path)
    imported = _imports(tree)
    by_llhttp = bool(imported & {"httptools", "aiohttp"})  # (its checks bound llhttp's read)
    found: list[str] = []
    if "pyseccomp" in imported and not f"/{rel}".endswith("/supervisor/seccomp.py"):
        found.append(f"{rel} libseccomp outside seccomp.py")
    for node in walked(tree):
        tested = [a for a in node.args if isinstance(node.func, ast.Attribute) and
                  node.func.attr in HTTP_TESTS] if isinstance(node, ast.Call) else \
            [node.left, *node.comparators] if isinstance(node, ast.Compare) else []
        if not by_llhttp and any("HTTP/" in _literal(a) for a in tested):
            found.append(f"{rel}:{node.lineno} HTTP read by hand")
        name = node.id if isinstance(node, ast.Name) else \
            node.attr if isinstance(node, ast.Attribute) else ""
        if any(n in name for n in FILTER_NAMES):
            found.append(f"{rel}:{node.lineno} a filter built by hand")
        if name == "HttpResponseParser" and not rel.endswith("http1answer.py"):
            found.append(f"{rel}:{node.lineno} an answer read beside http1answer.py")
    return found


def test_one_http_parser_and_one_seccomp_builder() -> None:
    assert [f for p in sorted(CORRAL.rglob("*.py")) for f in second_parsers(p, ROOT)] == []


def test_the_parser_scan_sees_a_hand_parser_and_a_hand_filter(tmp_path: Path) -> None:
    (tmp_path / "supervisor").mkdir()
    probe = tmp_path / "probe.py"
    probe.write_text("def f(line, code):\n"
                     "    if line.startswith(b'HTTP/1.1 '):\n"
                     "        return line.split(None, 2)\n"
                     "    return line[:5] == 'HTTP/' or code == 200\n"
                     "ANSWER = b'HTTP/1.1 200 OK' + b'\\r\\n'\n"
                     "READ = httptools.HttpResponseParser\n")
    box = tmp_path / "box.py"
    box.write_text("import pyseccomp\nfrom pyseccomp import SyscallFilter\n"
                   "RET = SECCOMP_RET_KILL\nimport struct\n"
                   "prog = struct.pack('HBBI', BPF_LD | 0x20, 0, 0, 4)\n")
    (tmp_path / "supervisor" / "seccomp.py").write_text("import pyseccomp\n")
    # a module llhttp reads for may bound what it read by the same literals
    (tmp_path / "lean.py").write_text(probe.read_text() + "import httptools\n")
    assert [f for p in sorted(tmp_path.rglob("*.py")) for f in second_parsers(p, tmp_path)] == [
        "box.py libseccomp outside seccomp.py", "box.py:3 a filter built by hand",
        "box.py:5 a filter built by hand",
        "lean.py:6 an answer read beside http1answer.py",
        "probe.py:6 an answer read beside http1answer.py",
        "probe.py:2 HTTP read by hand", "probe.py:4 HTTP read by hand"]


# Issue 86's per-path module counts: the corral modules whose functions run in a real
# daemon (and in the CLI a path starts) during the path, beyond those it runs while idle
# (tests/pathtrace/). Each path is run once before it is measured: what it does only once
# (a lazy import, a session's or a connection's set-up) is not the path's per call.
GATEWAY_CALL_BOUND, APPROVAL_BOUND, RUN_BOUND = 25, 45, 60
GATEWAY_TOKEN = "pathtrace-token-for-tests"


@pytest.fixture(scope="module")
def traced() -> Iterator[tuple[Daemon, Tracer, Control]]:
    tmp = shared_tmpdir()
    tracer = Tracer(tmp)
    token = hashlib.sha256(GATEWAY_TOKEN.encode()).hexdigest()
    (tmp / "tokens.toml").write_text(f'[clients.path]\ntoken_sha256 = "{token}"\n')
    agents = hello("hello") + textwrap.dedent(f"""
        [agents.writer]
        command = ["{PY}", "{EXAMPLES}/misbehave.py"]
        env = {{ PYTHONPATH = "{ROOT}" }}
        tools = ["counting__*"]
        approve = ["counting__bump"]
        stop_timeout = 10.0

        [mcp_servers.counting]
        command = ["{PY}", "{ROOT}/tests/servers/counting_mcp.py", "{tmp}/server-count"]

        [gateway]
        listen = "127.0.0.1:0"
        tokens_file = "tokens.toml"

        # the metrics history's sample (every 10 s by default) runs in every idle window,
        # never now and then in a path's alone
        [http]
        history_interval = 0.5
    """)
    d = Daemon(tmp, agents, wrapper=tracer.wrapper())
    try:
        d.start()
        assert d.proc is not None
        control = tracer.control(d.proc.pid)
        yield d, tracer, control
        control.close()
    finally:
        d.close()
        shutil.rmtree(tmp, ignore_errors=True)


def test_the_tracer_sees_a_threads_calls_and_a_module_body_is_no_call(tmp_path: Path
                                                                       ) -> None:
    """The counts below are not low by a blind hook: a corral function called in a
    thread is seen; a module imported but none of its functions run is not."""
    tracer = Tracer(tmp_path)
    script = ("import threading\nimport corral.redact\nfrom corral import text\n"
              "t = threading.Thread(target=text.plural, args=(2, 'call'))\n"
              "t.start()\nt.join()\n")
    proc = subprocess.run([PY, "-c", script], env={**os.environ, **tracer.env()},
                          timeout=60)
    assert proc.returncode == 0
    # (its pid: the only file the tracer wrote)
    [dumped] = tracer.dir.glob("*.json")
    seen = json.loads(dumped.read_text())["start"]
    assert "corral.text" in seen
    assert "corral.redact" not in seen


def _over(path: str, modules: list[str], bound: int) -> str:
    return f"{path}: {len(modules)} modules (bound {bound}):\n" + "\n".join(modules)


def test_a_gateway_tool_call_runs_few_modules(traced: tuple[Daemon, Tracer, Control]
                                              ) -> None:
    d, _, control = traced
    with McpSession(d.json("mcp", "status")["gateway"]["http"]["url"], GATEWAY_TOKEN) as s:
        s.call_tool("counting__bump", {"i": 1})

        def call() -> set[str]:
            assert s.call_tool("counting__bump", {"i": 2}) == "bumped 2"
            return set()
        modules = path_modules(control, call)
    print(_over("a gateway tool call", modules, GATEWAY_CALL_BOUND))
    # its door, seen in the path's window (not in the count: the door's module is also the
    # gateway's session reaper's, whose wake in an idle window on a loaded host took it
    # off the count)
    assert "corral.daemon.http.mcp" in control.windows()["path"]
    assert len(modules) <= GATEWAY_CALL_BOUND, _over("a gateway tool call", modules,
                                                     GATEWAY_CALL_BOUND)


def _approved_call(d: Daemon, i: int, control: Control | None = None) -> list[str]:
    """A task's tool call that needs approval, from its request to its answer: the call
    made (its gate file made), the ask looked for as a person would, approved, and the
    call run; its path's modules measured with a control (the task's start and end are
    outside it: the task waits at a file before the call and after it)."""
    gates = [d.dir / f"gate-{i}-before", d.dir / f"gate-{i}-after"]
    steps = [{"await": str(gates[0]), "tool": "counting__bump", "arguments": {"i": i}},
             {"await": str(gates[1])}]
    task_id = d.ask("tasks.submit", {"agent": "writer", "input": {
        "do": "sequence", "calls": steps}})["task_id"]
    _until(lambda: d.task(task_id)["status"] == "running", "the task running")

    def approval() -> set[str]:
        gates[0].touch()
        [ask] = _until(lambda: d.ask("approvals.list")["asks"], "the call's ask")
        d.ask("approvals.resolve", {"id": ask["id"], "decision": "approved"})
        count = d.dir / "server-count"  # (made at the server's first call)
        _until(lambda: count.exists() and str(i) in count.read_text().split(),
               "the call made")
        return set()
    modules = [] if control is None else path_modules(control, approval)
    if control is None:
        approval()
    gates[1].touch()
    done = d.ask("tasks.get", {"task_id": task_id, "wait": True})
    assert done["status"] == "succeeded", done
    assert f"bumped {i}" in json.dumps(done["output"]), done
    return modules


def _until(fn: Callable[[], Any], what: str) -> Any:
    deadline = time.monotonic() + 30
    while not (value := fn()):
        assert time.monotonic() < deadline, f"not within 30 s: {what}"
        time.sleep(0.02)
    return value


def _in_each(*measures: list[str]) -> list[str]:
    """The modules each measure of a path counted: the daemon's work that comes round
    rarely (the gateway's session reaper, the journals' prunes), fallen in one measure's
    window, is not the path's."""
    return sorted(set.intersection(*(set(m) for m in measures)))


def test_an_approval_runs_few_modules(traced: tuple[Daemon, Tracer, Control]) -> None:
    d, _, control = traced
    _approved_call(d, 10)
    # (measured twice: the path is at its bound, and one rare wake in its window is one
    # module over)
    modules = _in_each(_approved_call(d, 11, control), _approved_call(d, 12, control))
    print(_over("an approval", modules, APPROVAL_BOUND))
    assert len(modules) <= APPROVAL_BOUND, _over("an approval", modules, APPROVAL_BOUND)


def test_corral_run_runs_few_modules(traced: tuple[Daemon, Tracer, Control]) -> None:
    d, tracer, control = traced
    env = {**os.environ, **tracer.env()}

    def run() -> set[str]:
        cli = subprocess.Popen([PY, "-m", "corral", "--socket", str(d.sock), "run", "hello",
                                "--input", "{}", "--json"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=env)
        out, err = cli.communicate(timeout=60)
        assert cli.returncode == 0, err
        assert json.loads(out)["status"] == "succeeded"
        return set(tracer.exited(cli.pid)["start"])
    run()
    modules = path_modules(control, run)
    print(_over("corral run", modules, RUN_BOUND))
    assert len(modules) <= RUN_BOUND, _over("corral run", modules, RUN_BOUND)
