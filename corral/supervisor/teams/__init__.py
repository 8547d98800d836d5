"""Teams (docs/teams.md): agents called as one, by a rule or a router (`route`), all at
once (`broadcast`), or by a leader that calls its members as tools (`coordinate`); a
call planned on the durable engine (runner.py)."""

from .check import TOOL_SEP, check_team
from .definition import Rule, TeamError, TeamSpec

__all__ = ["TOOL_SEP", "Rule", "TeamError", "TeamSpec", "check_team"]
