"""The parts of test.sh's set-up that install beside the tests (the MCP servers, the npm
tools, the agent frameworks' venvs): a test that needs one waits for it at its setup.

test.sh runs each part in the background holding an exclusive flock on PARTS/NAME.lock
(taken before pytest starts), and writes its exit status to PARTS/NAME.status as it
ends; PARTS is CORRAL_SETUP_PARTS. A test's shared lock is granted when the part has
ended: the kernel says when, no polling. Outside test.sh (pytest run by hand) there are no
parts: what is installed is what there is."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable
from pathlib import Path

import pytest

VARIABLE = "CORRAL_SETUP_PARTS"


def failed(part: str) -> str | None:
    """Wait for `part` of this run's set-up to end; why it failed, or None."""
    parts = os.environ.get(VARIABLE)
    if not parts or not (Path(parts) / f"{part}.lock").exists():
        return None  # not a part of this run: installed before it, or not at all
    with open(Path(parts) / f"{part}.lock") as lock:
        fcntl.flock(lock, fcntl.LOCK_SH)
    status = (Path(parts) / f"{part}.status").read_text().strip()
    if status == "0":
        return None
    return f"test.sh's set-up part {part!r} failed (exit {status}): its output says why"


def installed(*parts: str, check: Callable[[], str | None] | None = None
              ) -> pytest.MarkDecorator:
    """A test (or a module's pytestmark) that needs `parts` of the set-up: it waits for
    them at its setup, then skips with `check()`'s reason where that is not None (what it
    needs is missing), as a skipif would at collection, before the parts had ended."""
    return pytest.mark.installed(*parts, check=check)


def wait(item: pytest.Item) -> None:
    """The parts a test marked `installed` needs, waited for (before its turn and its
    timeout: tests/conftest.py); wait_for, at its setup, then finds them ended."""
    for mark in item.iter_markers("installed"):
        for part in mark.args:
            failed(part)


def wait_for(item: pytest.Item) -> None:
    """The setup of a test marked `installed`: its parts waited for, its check made."""
    for mark in item.iter_markers("installed"):
        for part in mark.args:
            why = failed(part)
            if why is not None:
                pytest.skip(why)
        check = mark.kwargs.get("check")
        reason = None if check is None else check()
        if reason is not None:
            pytest.skip(reason)
