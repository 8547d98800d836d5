"""The `corral` command: a thin client of the daemon's control socket.

Exit codes: 0 ok, 1 the operation failed, 2 usage error, 3 cannot reach the daemon.
Each client command's help is its control method's docstring (corral.methods).

The group and what its commands share are in `app.py`, how results are shown in
`render.py`; each command module registers its commands on the group when imported, so
this module imports every one of them.
"""

from __future__ import annotations

from . import (  # noqa: F401  (imported for the commands they register)
    approvals,
    cluster,
    daemon,
    events,
    fleet,
    helping,
    history,
    importing,
    logs,
    mcp,
    packages,
    schedules,
    sessions,
    specs,
    status,
    systemd,
    tasks,
    teams,
    tenants,
    tokens,
    tools,
    top,
    trace,
    upgrading,
    workflows,
)
from .app import cli
from .terminal import guard

__all__ = ["cli", "main"]


def main() -> None:
    guard()
    # click strips no sequence itself (it would, piped, and only some): the guard shows
    # every one, and `--raw` passes every one
    cli(prog_name="corral", color=True)
