# ruff: noqa: F405 - the results are corral.results', named by the methods
"""The daemon's own methods: what it is, its shutdown, its upgrade, a reload, its clock."""

from __future__ import annotations

from ..results import *  # noqa: F403
from .declaration import Params, method, rest


@method("daemon.info", result=DaemonInfoResult, scope="agents:read", seen="unnamed",
        cli="info", routes=(
    rest("GET", "/daemon", "The daemon: version, pid, uptime"),
))
class DaemonInfo(Params):
    """Version, pid, uptime, socket and config of the running daemon."""


@method("daemon.shutdown", result=Stopping, scope="admin", mutating=True, seen=None, cli="shutdown")
class DaemonShutdown(Params):
    """Drain (no new task to a worker; running tasks finish within drain_timeout), stop
    every agent gracefully, then the daemon."""

    wait: bool = False  # answer once the drain is over, with what it did
    now: bool = False  # no drain: running tasks are handed to the next daemon at once


@method("daemon.upgrade", result=UpgradeReport, scope="admin", mutating=True, seen=None,
        cli="upgrade")
class DaemonUpgrade(Params):
    """Re-execute the daemon in place (the same pid) from the installed corral, keeping
    every agent's process, its running tasks and the control socket; a new install that
    does not start is not handed over (or gives the state back). `report`: start none,
    say how the last one went."""

    python: str | None = None  # the interpreter of the new install (default: the daemon's)
    pythonpath: str | None = None  # its PYTHONPATH (default: the daemon's)
    report: bool = False

    def changes(self) -> bool:
        # `corral upgrade` asks for the report every 0.1 s until the new image answers:
        # each ask audited read as an upgrade of its own
        return not self.report


@method("config.reload", result=ReloadResult, scope="admin", mutating=True, seen=None,
        cli="reload", routes=(
    rest("POST", "/config/reload", "Reload the config file"),
))
class ConfigReload(Params):
    """Re-read the config file and apply the difference: add new agents, remove dropped
    ones, restart changed ones; unchanged agents are not touched."""


@method("daemon.clock", result=ClockTime, scope="admin", mutating=True, seen=None,
        cli="clock")
class DaemonClock(Params):
    """The clock a person's waits are measured by (asks' deadlines, suspend_after). With
    --advance (a duration: 90, 90s, 10m, 2h, 1d), a manual clock ([supervisor]
    manual_clock = true, for tests; it stands still between moves) is moved that far
    ahead and the waits it passes fall due at once; without manual_clock, --advance is
    refused. An admin's."""

    advance: float = 0.0

    def changes(self) -> bool:
        return self.advance != 0
