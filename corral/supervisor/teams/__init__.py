"""Teams (docs/teams.md): agents called as one, by a rule or a router (`route`), all at
once (`broadcast`), or by a leader that calls its members as tools (`coordinate`). The
definition, its checks and the routing here have no I/O; `runner.py` plans a call on the
durable engine (supervisor/durable/), its steps kept by a `DurableStore` (the daemon's in
SQLite, daemon/calljournal.py; in memory without one)."""

from .check import TOOL_SEP, check_team
from .definition import Rule, TeamError, TeamSpec

__all__ = ["TOOL_SEP", "Rule", "TeamError", "TeamSpec", "check_team"]
