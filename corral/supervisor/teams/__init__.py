"""Teams (docs/teams.md): agents called as one, by a rule or a router (`route`), all at
once (`broadcast`), or by a leader that calls its members as tools (`coordinate`). The
definition, its checks and the routing here have no I/O; `runner.py` drives a call on
the engine's tasks, its steps kept by a `CallStore` (the daemon's in SQLite,
daemon/teams/)."""

from .check import TOOL_SEP, check_team
from .definition import Rule, TeamError, TeamSpec

__all__ = ["TOOL_SEP", "Rule", "TeamError", "TeamSpec", "check_team"]
