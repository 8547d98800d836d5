"""A task's options as one value (corral/taskoptions.py, issue 53): kept by the journal in
one column, refused by name where a transport does not carry one, and spelled in few
files."""

from __future__ import annotations

import re

from .conftest import ROOT


def test_retry_on_is_spelled_in_four_files_of_corral_at_most() -> None:
    """A task option is one field of one value: the retry outcomes' name is written where
    a task's are defined and read (taskoptions.py) and where an agent's are (config.py); it
    was in 12 files."""
    spelled = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "corral").rglob("*")
                     if p.is_file() and p.suffix in (".py", ".lua", ".js", ".html")
                     and re.search(r"retry_on", p.read_text(errors="replace")))
    assert len(spelled) <= 4, spelled
