"""The `corral` command: a thin client of the daemon's control socket.

Exit codes: 0 ok, 1 the operation failed, 2 usage error, 3 cannot reach the daemon.
Each client command's help is its control method's docstring (corral.methods).

The group and what its commands share are in `app.py`, how results are shown in
`render.py`; each command module registers its commands on the group when imported, and
the group imports a command's module when the command is asked for (app.COMMANDS).
"""

from __future__ import annotations

from .app import cli
from .terminal import guard

__all__ = ["cli", "main"]


def main() -> None:
    guard()
    # click strips no sequence itself (it would, piped, and only some): the guard shows
    # every one, and `--raw` passes every one
    cli(prog_name="corral", color=True)
