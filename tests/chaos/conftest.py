"""The chaos cases' scratch directory."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def tmp() -> Iterator[Path]:
    """A short path under TMPDIR (a daemon's unix socket lives in it: pytest's tmp_path
    can be too long for one), empty at the start of each case and gone after it."""
    d = Path(os.environ.get("TMPDIR", "/tmp")) / f"corral-chaos-{os.getpid()}"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    yield d
    shutil.rmtree(d, ignore_errors=True)
