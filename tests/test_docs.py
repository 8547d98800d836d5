"""The docs cannot drift from the code: every key of the config schema (msgspec Structs)
is in docs/config.md with its default, and the README links only to files in the repo."""

from __future__ import annotations

import re
from typing import Any

import msgspec
import msgspec.inspect as mi

from corral.supervisor.config import (
    AgentSpec,
    Autoscale,
    Config,
    Limits,
    McpServerSpec,
    SupervisorSettings,
    TenantSpec,
)

from .conftest import ROOT

SECTIONS: dict[str, Any] = {
    "[supervisor]": SupervisorSettings,
    "[agents.NAME]": AgentSpec,
    "[agents.NAME.autoscale]": Autoscale,
    "[agents.NAME.limits]": Limits,
    "[mcp_servers.NAME]": McpServerSpec,
    "[tenants.NAME]": TenantSpec,
}
for _f in mi.type_info(Config).fields:  # a new top-level table needs a section too
    if _f.name not in ("supervisor", "agents", "mcp_servers", "tenants"):
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
        m = re.match(r"^## `(\[[^\]]+\])`", line)
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
            row = rows.get(f.name)
            if row is None:
                missing.append(f"{heading} {f.name}: not documented")
            elif row[2] != render_default(f):
                missing.append(f"{heading} {f.name}: default {row[2]} in the doc, "
                               f"{render_default(f)} in the schema")
            elif not row[3]:
                missing.append(f"{heading} {f.name}: no meaning given")
        documented = set(rows) - {f.name for f in mi.type_info(struct).fields}
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
