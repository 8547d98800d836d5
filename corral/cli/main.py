"""The `corral` command: a thin client of the daemon's control socket (the group and what
its commands share are in `app.py`).

Exit codes: 0 ok, 1 the operation failed, 2 usage error, 3 cannot reach the daemon.
"""

from __future__ import annotations

from .app import cli
from .terminal import guard


def main() -> None:
    guard()
    # click strips no sequence itself (it would, piped, and only some): the guard shows
    # every one, and `--raw` passes every one
    cli(prog_name="corral", color=True)
