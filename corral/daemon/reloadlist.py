"""What a reload changed of the definitions it applies at once, with no rollout: the config
file's workflows, teams and schedules, each kind's names added, removed, changed and
unchanged, as the fleet says of agents and MCP servers (ReloadResult)."""

from __future__ import annotations

from ..results import ReloadResult
from ..supervisor.config import Config
from .fleet import diff

KINDS = ("workflows", "teams", "schedules")


def definitions_changed(before: Config, after: Config, result: ReloadResult) -> None:
    """Said in `result`: the file's definitions of each kind in `after` against `before`
    (the config the last start or reload applied)."""
    result.workflows, result.teams, result.schedules = (
        diff(dict(getattr(before, kind)), dict(getattr(after, kind))) for kind in KINDS)
