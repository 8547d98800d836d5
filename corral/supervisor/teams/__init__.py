"""Teams (docs/teams.md): agents called as one (`route`, `broadcast`, `coordinate`), each
call planned on the durable engine (runner.py)."""

from .check import TOOL_SEP, check_team
from .definition import Rule, TeamError, TeamSpec

__all__ = ["TOOL_SEP", "Rule", "TeamError", "TeamSpec", "check_team"]
