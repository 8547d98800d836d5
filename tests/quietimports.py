"""The collector off while a test's server or agent imports an official SDK.

What an SDK's imports make lives as long as the process, and the collector's passes among it
while importing find nothing; a server's is frozen after, out of every later pass, as the
worker freezes its start-up heap (bench/RESULTS.md, the suite: a third of a start's CPU).
The scripts run from tests/ and tests/servers/ (sys.path[0] is theirs), so they import this
as `tests.quietimports`: the checkout's root is on every interpreter's path by its editable
install, and on pytest's by the rootdir."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def collector_off(*, freeze: bool) -> Iterator[None]:
    """The block's imports (and the clients it makes) with the collector off; `freeze`:
    what the process holds then is frozen, as a server's start-up heap."""
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if freeze:
            gc.freeze()
        if collecting:
            gc.enable()
