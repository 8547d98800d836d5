"""docs/migrating.md is held to the importer (issue 57): every key a reader knows, carried
or said not to be, is in its tool's section, each other tool's name beside corral's key
for it; `corral help import` lists the same table."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from corral.importer.keys import known
from corral.othernames import OTHER_NAMES, listing

from .daemon_harness import corral_run
from .forkserver import interpreter_settings

ROOT = Path(__file__).resolve().parent.parent
DOC = (ROOT / "docs" / "migrating.md").read_text()


def section(tool: str) -> str:
    """The doc's `## TOOL` section."""
    m = re.search(rf"(?ms)^## {re.escape(tool)}\n(.*?)(?=^## |\Z)", DOC)
    assert m is not None, f"docs/migrating.md has no `## {tool}` section"
    return m[1]


def named(key: str, text: str) -> bool:
    """`key` is written in `text` as a key (`key`, `Key=`), case aside."""
    return re.search(rf"`{re.escape(key)}=?`", text, re.IGNORECASE) is not None


@pytest.mark.parametrize("tool", sorted(known()))
def test_every_key_the_importer_knows_is_in_its_tools_section(tool: str) -> None:
    text = section(tool)
    assert [k for k in known()[tool] if not named(k, text)] == []


def test_every_other_name_is_beside_corrals_key_in_a_row_of_its_tools_table() -> None:
    rows = {tool: [r for r in section(tool).splitlines() if r.startswith("|")]
            for tool in ("supervisord", "PM2", "systemd")}
    missing = []
    for other in OTHER_NAMES.values():
        for tool in other.tools:
            top = other.key.split(".")[0]
            if not any(named(other.spelling, r) and (named(other.key, r) or named(top, r))
                       for r in rows[tool]):
                missing.append(f"{tool}: {other.spelling} -> {other.key}")
    assert missing == []


def corral(*args: str) -> subprocess.CompletedProcess[str]:
    # (this interpreter's own settings too: forked from the fork server, not started anew)
    return corral_run([*args], env={**interpreter_settings(os.environ),
                                    "PYTHONPATH": str(ROOT), "COLUMNS": "200"})


@pytest.mark.parametrize("how", [("help", "import"), ("import", "--help")])
def test_help_import_lists_the_mapping(how: tuple[str, ...]) -> None:
    r = corral(*how)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("Usage: corral import [OPTIONS] FILE...")
    for line in listing():
        assert line in r.stdout


def test_help_of_a_command_there_is_not_is_refused_naming_it() -> None:
    r = corral("help", "imprt")
    assert r.returncode == 2
    assert "no such command: corral imprt (`corral --help` lists them)" in r.stderr
    assert r.stdout == ""
