"""A team's definition as the config writes it (`[teams.NAME]`, docs/teams.md)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from ..errors import MissingReferent

MAX_MEMBERS = 64
MAX_RULES = 100
Mode = Literal["route", "broadcast", "coordinate"]


class TeamError(ValueError):
    """A definition that cannot run, or a call that cannot go on; the text says why."""


class TeamMissing(TeamError, MissingReferent):
    """A team names an agent there is not."""


class Rule(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A row of a route team's table: when the reference `ref` into the call's input
    (`$input`, `$input.topic`...) equals `equals`, contains `contains` (a text's part, a
    list's item), or exists (neither given), the call goes to `member`."""

    member: str
    ref: str = "$input"
    equals: Any = None
    contains: Any = None


class TeamSpec(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    mode: Mode
    members: Annotated[list[str], msgspec.Meta(min_length=1, max_length=MAX_MEMBERS)]
    description: str = ""
    # route: the rule table, tried in order, the first that holds picks the member...
    rules: Annotated[list[Rule], msgspec.Meta(max_length=MAX_RULES)] = []
    default: str | None = None  # ...this member when none holds
    router: str | None = None  # ...or an agent whose output names the member
    leader: str | None = None  # coordinate: the agent that calls its members as tools
    tenant: str | None = None  # whose team it is (unset: its members' tenant)
    # each member's (and the router's and leader's) task: unset, their agent's own
    timeout: Annotated[float, msgspec.Meta(gt=0)] | None = None
    retries: Annotated[int, msgspec.Meta(ge=0, le=100)] | None = None

    @property
    def agents(self) -> list[str]:
        """Every agent a call of it may run."""
        extra = [a for a in (self.router, self.leader) if a is not None]
        return sorted({*self.members, *extra})
