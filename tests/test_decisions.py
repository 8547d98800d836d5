"""docs/decisions.md as scripts/decisions.py keeps it: it parses into entries under
subsystem headings, each number once, and its index says what the groups hold; the
script moves an entry appended at the end into its group, and a second run changes
nothing."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "decisions.py"


def script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("decisions_script", SCRIPT)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


D = script()


def index_rows(index: str) -> dict[str, str]:
    """The index's table: a subsystem's heading -> its numbers as written."""
    return {m.group(1): m.group(2)
            for m in re.finditer(r"^\| \[(.+?)\]\(#[\w-]+\) \| (.*) \|$", index, re.M)}


def test_the_file_parses_and_every_number_appears_once() -> None:
    parsed = D.parse((ROOT / "docs" / "decisions.md").read_text())
    numbers = [e.number for e in parsed.entries]
    assert len(numbers) > 300
    assert len(numbers) == len(set(numbers))


def test_the_index_is_true() -> None:
    """Each subsystem's row names exactly the entries under its heading, the unused
    numbers are those no grouped entry has, and the superseded ones say so in their text.
    Entries appended since the last run of the script are not in the index yet."""
    parsed = D.parse((ROOT / "docs" / "decisions.md").read_text())
    grouped: dict[str, list[int]] = {}
    for e in parsed.entries:
        if e.group is not None:
            grouped.setdefault(e.group, []).append(e.number)
    headings = dict(D.SUBSYSTEMS)
    assert index_rows(parsed.index) == {headings[k]: D.numbers_text(v)
                                        for k, v in grouped.items()}
    numbers = {n for v in grouped.values() for n in v}
    unused = sorted(set(range(1, max(numbers) + 1)) - numbers)
    assert f"Unused numbers: {D.numbers_text(unused)}." in parsed.index
    said = {e.number: m.group(1) for e in parsed.entries
            for m in D.STATUS.finditer(e.text)}
    assert said, "no entry is marked superseded"
    for old, new in said.items():
        assert re.search(rf"\b{old} by {new}\b", parsed.index), (old, new)


def test_an_appended_entry_is_moved_into_its_group_and_a_second_run_changes_nothing(
        ) -> None:
    doc = (ROOT / "docs" / "decisions.md").read_text()
    top = max(e.number for e in D.parse(doc).entries)
    n = top + 1
    appended = (doc.rstrip("\n") + f"\n{n}. **A cluster node's new bound.** The pull loop "
                "refuses past it (`cluster/puller.py`); decision 280 superseded.\n"
                f"{n + 1}. **A thing no path names.**\n")
    once = D.render(D.parse(appended))
    parsed = D.parse(once)
    groups = {e.number: e.group for e in parsed.entries}
    assert groups[n] == "cluster"
    assert groups[n + 1] == "other"
    assert None not in groups.values()  # the Appended heading is left empty
    assert index_rows(parsed.index)["Other"].endswith(f", {n + 1}")
    assert "280 by 404" in parsed.index  # the first entry to say so wins
    assert D.render(parsed) == once


def test_a_number_used_twice_is_refused_with_both_named() -> None:
    doc = (ROOT / "docs" / "decisions.md").read_text()
    with pytest.raises(D.Malformed, match=r"numbers used twice: 1$"):
        D.parse(doc.rstrip("\n") + "\n1. **Again.**\n")


def test_a_heading_that_is_no_subsystems_is_refused() -> None:
    doc = (ROOT / "docs" / "decisions.md").read_text()
    with pytest.raises(D.Malformed, match=r"'## Misc' is no subsystem's heading"):
        D.parse(doc + "\n## Misc\n\n999. **x**\n")


def test_the_script_checks_the_file_from_the_command_line() -> None:
    """`--check` answers 0 on a file as the script writes it (the appended entries of
    other streams aside, which the next run sorts in)."""
    doc = (ROOT / "docs" / "decisions.md").read_text()
    if any(e.group is None for e in D.parse(doc).entries):
        pytest.skip("entries appended since the last run wait for the next")
    done = subprocess.run([sys.executable, str(SCRIPT), "--check"], capture_output=True,
                          text=True)
    assert (done.returncode, done.stderr) == (0, "")
