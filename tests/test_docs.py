"""The docs cannot drift from the code: every key of the config schema (msgspec Structs)
is in docs/config.md with its default, the README links only to files in the repo, and
every test docs/security.md names as holding a promise exists."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import msgspec
import msgspec.inspect as mi

from corral.supervisor.config import (
    A2aAgentSpec,
    AgentSpec,
    Autoscale,
    Config,
    Limits,
    McpServerSpec,
    ModelSpec,
    PolicyMatch,
    PolicyRule,
    PolicyTest,
    SupervisorSettings,
    TenantSpec,
)
from corral.supervisor.schedule import ScheduleSpec
from corral.supervisor.teams import Rule, TeamSpec
from corral.supervisor.workflows import Condition, StepSpec, WorkflowSpec

from . import trees
from .conftest import ROOT

SECTIONS: dict[str, Any] = {
    "[supervisor]": SupervisorSettings,
    "[agents.NAME]": AgentSpec,
    "[agents.NAME.autoscale]": Autoscale,
    "[agents.NAME.limits]": Limits,
    "[mcp_servers.NAME]": McpServerSpec,
    "[tenants.NAME]": TenantSpec,
    "[workflows.NAME]": WorkflowSpec,
    "[workflows.NAME.steps]": StepSpec,
    "[workflows.NAME.steps.when]": Condition,
    "[teams.NAME]": TeamSpec,
    "[teams.NAME.rules]": Rule,
    "[schedules.NAME]": ScheduleSpec,
    "[models.NAME]": ModelSpec,
    "[a2a_agents.NAME]": A2aAgentSpec,
    "[[policy]]": PolicyRule,
    "[[policy]].match": PolicyMatch,
    "[[policy]].when": PolicyTest,
}
for _f in mi.type_info(Config).fields:  # a new top-level table needs a section too
    if _f.name not in ("supervisor", "agents", "mcp_servers", "tenants", "workflows",
                       "teams", "schedules", "models", "policy", "a2a_agents"):
        # an optional table ([cluster]: absent means off) is its Struct or None
        _t = _f.type
        SECTIONS[f"[{_f.name}]"] = next(x.cls for x in _t.types if isinstance(
            x, mi.StructType)) if isinstance(_t, mi.UnionType) else _t.cls


def render_default(f: mi.Field) -> str:
    """A default as docs/config.md writes it."""
    if f.default_factory is not mi.NODEFAULT:
        value = f.default_factory()
    elif f.default is mi.NODEFAULT:
        return "required"
    else:
        value = f.default
    if value is None:
        return "none"
    if isinstance(value, msgspec.Struct):
        return "table"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, str):
        return f'`"{value}"`'
    return f"`{msgspec.json.encode(value).decode()}`"


def _sections(text: str) -> dict[str, dict[str, list[str]]]:
    """heading -> key -> the row's cells."""
    out: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for line in text.splitlines():
        m = re.match(r"^## `(\[[^`]+)`", line)
        if m:
            current = out.setdefault(m.group(1), {})
            continue
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        if current is not None and line.startswith("| `") and len(cells) >= 4:
            current[cells[0].strip("`")] = cells
    return out


def test_every_config_key_is_in_docs_config_md_with_its_default() -> None:
    doc = _sections((ROOT / "docs" / "config.md").read_text())
    missing = []
    for heading, struct in SECTIONS.items():
        rows = doc.get(heading, {})
        for f in mi.type_info(struct).fields:
            if f.name == "name" and "NAME" in heading:  # the table's key, not a field
                continue
            row = rows.get(f.encode_name)
            if row is None:
                missing.append(f"{heading} {f.name}: not documented")
            elif row[2] != render_default(f):
                missing.append(f"{heading} {f.name}: default {row[2]} in the doc, "
                               f"{render_default(f)} in the schema")
            elif not row[3]:
                missing.append(f"{heading} {f.name}: no meaning given")
        documented = set(rows) - {f.encode_name for f in mi.type_info(struct).fields}
        missing += [f"{heading} {k}: documented but not in the schema" for k in documented]
    assert not missing, "docs/config.md is out of date:\n" + "\n".join(missing)


def test_the_readme_links_only_to_files_in_the_repository() -> None:
    for doc in ["README.md", *(p.relative_to(ROOT) for p in (ROOT / "docs").glob("*.md"))]:
        text = (ROOT / doc).read_text()
        for target in re.findall(r"\]\(([^)\s#]+)(?:#[^)]*)?\)", text):
            if "://" in target or target.startswith("mailto:"):
                continue
            path = ((ROOT / doc).parent / target).resolve()
            assert path.is_relative_to(ROOT), f"{doc} links outside the repository: {target}"
            assert path.exists(), f"{doc} links to a missing file: {target}"


# Test files docs/security.md may name before they exist (a promise written beside the
# branch that adds its test); empty on main, where every one must exist. A file here that
# exists is checked anyway.
PENDING: list[str] = []
# `tests/FILE.py` or `tests/FILE.py::test_name`, as docs/security.md writes them
TEST_REFERENCE = re.compile(r"\b(tests/[\w/.-]+\.py)(?:::(\w+))?")


def missing_tests(text: str, root: Path, pending: list[str]) -> list[str]:
    """Each reference of `text` to a test file or a test in it that `root` does not hold;
    a file in `pending` is let off while it does not exist."""
    missing = []
    defined: dict[str, set[str]] = {}
    for path, name in TEST_REFERENCE.findall(text):
        file = root / path
        if not file.is_file():
            if path not in pending:
                missing.append(f"{path}: no such file")
            continue
        if not name:
            continue
        if path not in defined:
            tree = trees.file_tree(file)
            defined[path] = {n.name for n in ast.walk(tree) if isinstance(
                n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name.startswith("test")}
        if name not in defined[path]:
            missing.append(f"{path}::{name}: no such test in {path}")
    return list(dict.fromkeys(missing))  # each once, however often the text names it


def test_every_test_docs_security_md_names_exists() -> None:
    """A promise of docs/security.md stands on the test it names: a test renamed or removed
    must take the promise's line with it (or name the test that holds it now)."""
    text = (ROOT / "docs" / "security.md").read_text()
    named = TEST_REFERENCE.findall(text)
    assert len(named) > 50, "docs/security.md names no tests: is the pattern still right?"
    assert not (missing := missing_tests(text, ROOT, PENDING)), (
        "docs/security.md names tests that do not exist:\n" + "\n".join(missing))
    # every "never" of its tables is held by a test
    bare, rows = [], False
    for line in text.splitlines():
        if line.startswith("| never | held by |"):
            rows = True
        elif not line.startswith("|"):
            rows = False
        elif rows and not line.startswith("|---") and not TEST_REFERENCE.search(line):
            bare.append(line)
    assert not bare, "docs/security.md promises held by no test:\n" + "\n".join(bare)
    # the list holds only what the document is waiting for
    assert not (stale := [p for p in PENDING if p not in {path for path, _ in named}]), (
        f"PENDING names files docs/security.md does not: {stale}")


def test_a_misspelt_test_or_file_in_docs_security_md_is_caught() -> None:
    """The check above can fail: a test name one letter off and a file that is not there
    are each reported; a pending file is let off only while it does not exist."""
    real = "tests/test_tokens.py::test_a_token_is_shown_once_kept_as_a_hash_expires_and_is_revoked"
    assert missing_tests(f"`{real}`", ROOT, []) == []
    assert missing_tests(f"`{real}s`", ROOT, []) == [
        f"{real}s: no such test in tests/test_tokens.py"]
    assert missing_tests("`tests/test_nothing_here.py`", ROOT, []) == [
        "tests/test_nothing_here.py: no such file"]
    assert missing_tests("`tests/test_nothing_here.py::test_x`", ROOT,
                         ["tests/test_nothing_here.py"]) == []
    assert missing_tests("`tests/test_nothing_here.py`", ROOT,
                         ["tests/test_nothing_here.py"]) == []
    # a pending file that exists is checked like any other
    assert missing_tests("`tests/test_tokens.py::test_nope`", ROOT,
                         ["tests/test_tokens.py"]) == [
        "tests/test_tokens.py::test_nope: no such test in tests/test_tokens.py"]


def test_the_worker_sdk_runs_without_any_of_the_daemons_dependencies(tmp_path: Any) -> None:
    """`pip install corral` is the SDK alone: the package declares no dependency, and an
    agent serves a task with the daemon's packages made unimportable."""
    import subprocess
    import sys
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["dependencies"] == []
    blocked = [d.split("=")[0].split(">")[0] for d in project["optional-dependencies"]["daemon"]]
    script = (
        "import sys\n"
        f"for m in {blocked!r}: sys.modules[m] = None\n"
        "import runpy\n"
        f"runpy.run_path({str(ROOT / 'examples' / 'hello.py')!r}, run_name='__main__')\n")
    requests = (
        '{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"agent":"a","replica":0,'
        '"protocol_version":"1","config":{},"state":null}}\n'
        '{"jsonrpc":"2.0","id":2,"method":"task/run","params":{"task_id":"t","input":'
        '{"name":"sdk"},"deadline":9e9}}\n')
    p = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env={"PYTHONPATH": str(ROOT)})
    try:
        assert p.stdin is not None and p.stdout is not None
        p.stdin.write(requests)
        p.stdin.flush()
        replies = [msgspec.json.decode(p.stdout.readline()) for _ in range(2)]
        assert replies[1]["result"]["output"]["greeting"] == "hello, sdk", replies
    finally:
        p.kill()
        p.communicate()


def test_docs_architecture_md_names_every_module() -> None:
    """The map stays true: each module of corral/ is named under its package's heading,
    and nothing named there is gone."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    named: set[str] = set()
    package = None
    for line in text.splitlines():
        head = re.match(r"## `(corral(?:/\w+)*)/`", line)
        if head:
            package = head[1]
        item = re.match(r"- `(\w+\.py)`:", line)
        if item and package is not None:
            named.add(f"{package}/{item[1]}")
    modules = {str(p.relative_to(ROOT)) for p in (ROOT / "corral").rglob("*.py")
               if "__pycache__" not in p.parts and not (
                   p.name == "__init__.py" and not p.read_text().strip())}
    assert not (missing := sorted(modules - named)), (
        f"docs/architecture.md does not name: {missing}")
    assert not (gone := sorted(named - modules)), f"docs/architecture.md names gone: {gone}"


def test_the_readme_names_only_files_that_exist() -> None:
    """A module or file the README names in backquotes (`core.py`, `corral/methods.py`,
    `supervisor/remote.py`) is one of the repository's: by its path from the root or from
    corral/, or, a bare name, a file of that name somewhere in it (issue 57 item 4)."""
    text = (ROOT / "README.md").read_text()
    names = set(re.findall(r"`([\w./-]+\.(?:py|md|toml|sh|png))`", text))
    have = {p.name for p in ROOT.rglob("*") if not {".git", ".venv"} & set(p.parts)}
    # what the README shows a reader writing (its walkthrough's file), not the repo's
    written = {"my_agent.py"}
    missing = sorted(
        n for n in names - written
        if not ((ROOT / n).exists() or (ROOT / "corral" / n).exists()
                or ("/" not in n and n in have)))
    assert missing == []


README_ROOTS = ("docs", "tests", "examples", "scripts", "bench", "corral", "systemd", ".ci")


def _ignored(path: str) -> bool:
    """A path under a directory .gitignore names (`examples/.corral/`, made by a run)."""
    dirs = [line.strip().rstrip("/") for line in (ROOT / ".gitignore").read_text().splitlines()
            if line.strip().endswith("/") and "*" not in line]
    return any(path == d or path.startswith(d + "/") for d in dirs)


def readme_paths(text: str) -> set[str]:
    """The repository paths a text names anywhere (prose, code blocks, links): those under
    one of the repository's top directories, and its scripts at the root (`./test.sh`)."""
    roots = "|".join(re.escape(r) for r in README_ROOTS)
    found = {m.group(1).rstrip(".,;:") for m in re.finditer(
        rf"(?<![\w/.$-])(?:\./)?((?:{roots})/[\w./-]*)", text)}
    found |= set(re.findall(r"(?<![\w/])\./([\w.-]+\.sh)\b", text))
    return found


def test_every_repository_path_the_readme_names_exists() -> None:
    """Beyond the backquoted names above: every path under the repository's top
    directories the README names, in its prose, its commands and its links, is there (a
    directory a run makes, ignored by git, aside)."""
    paths = readme_paths((ROOT / "README.md").read_text())
    assert len(paths) > 40
    missing = sorted(p for p in paths if not _ignored(p) and not (ROOT / p).exists())
    assert missing == []


def test_the_path_walk_sees_a_path_that_is_gone() -> None:
    paths = readme_paths("run `./gone.sh`, then see docs/gone.md and corral/cli/gone.py.\n"
                         "state stays in examples/.corral/corral.sock")
    assert paths == {"gone.sh", "docs/gone.md", "corral/cli/gone.py",
                     "examples/.corral/corral.sock"}
    assert [p for p in sorted(paths) if not _ignored(p) and not (ROOT / p).exists()] == [
        "corral/cli/gone.py", "docs/gone.md", "gone.sh"]


def layout_names(section: str) -> list[tuple[str, str]]:
    """(the package a name is read in, the name) for each backquoted file or directory of
    the README's Layout: a bare `x.py` or `sub/` is the last named package's
    (`corral/daemon/`), as the section writes them."""
    package = ""
    out = []
    for name in re.findall(r"`([\w./-]+(?:\.py|/))`", section):
        if name.startswith("corral/") and name.endswith("/"):
            package = name
        out.append((package, name))
    return out


def test_the_readmes_layout_names_each_file_in_the_package_it_is_listed_under() -> None:
    """`corral/daemon/` ... `tasks.py` is corral/daemon/tasks.py, not any tasks.py: a
    module moved to another package (or into a package of its own) is caught."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    names = layout_names(section)
    assert len(names) > 40
    # a bare file's name is its package's alone; a path or a directory is the package's,
    # the root's or corral's
    missing = [f"{name} (under {package or 'the root'})" for package, name in names
               if not any((ROOT / base / name).exists() for base in (
                   [package] if package and "/" not in name and name.endswith(".py")
                   else [package, "", "corral"]))]
    assert missing == []


def test_the_guides_walkthroughs_add_each_agent_once() -> None:
    """The guide's walk-throughs run on one Quick start's daemon, whose state persists:
    an agent one adds (`corral add --name`, a REST `{"agents": {NAME`) is added by no
    other and is none of the example config's, or the later add is refused ("agent
    greeter already exists": the first section and the HTTP one both added `greeter`,
    a new user's pass found)."""
    text = (ROOT / "docs" / "guide.md").read_text()
    added = re.findall(r'corral add --name ([\w-]+)|--json \'\{"agents": \{"([\w-]+)"', text)
    names = [cli or rest for cli, rest in added]
    config = re.findall(r"^\[agents\.([\w-]+)\]", (ROOT / "examples" / "corral.toml")
                        .read_text(), re.M)
    assert len(names) >= 3 and "greeter" in names, names
    assert sorted(names) == sorted(set(names)) and not set(names) & set(config), names
