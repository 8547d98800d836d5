"""Teams in the daemon (docs/teams.md): their calls kept and resumed, each a task of the
team to the task front's callers."""

from .front import TeamFront
from .service import TeamService

__all__ = ["TeamFront", "TeamService"]
