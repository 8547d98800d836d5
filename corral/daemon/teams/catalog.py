"""The teams there are: the config file's, and those added at runtime, kept with revisions
as every such kind is (defcatalog.py). A call keeps the definition it started on, so a
change or a removal is the next calls' (docs/teams.md)."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping

import msgspec

from ...supervisor.teams import TeamSpec, check_team
from ..defcatalog import Check, RuntimeCatalog
from ..store import StateStore

KIND = "team"


class TeamCatalog(RuntimeCatalog[TeamSpec]):
    def __init__(self, store: StateStore) -> None:
        super().__init__(store, KIND, "teams", TeamSpec)

    def pinned(self, spec: TeamSpec, tenant: str | None) -> TeamSpec:
        """A runtime team is its tenant's for good: a call of it runs that tenant's
        agents alone (check_team), whoever takes a member's name later."""
        if spec.tenant is not None or tenant is None:
            return spec
        return msgspec.structs.replace(spec, tenant=tenant)


def against(tenant_of: Callable[[str], str | None], seen: Callable[[str], bool],
            teams: Collection[str], servers: Collection[str]) -> Check[TeamSpec]:
    """A team checked whole as the config loader checks one. Its own name is checked
    against every agent: a team of an agent's name would take that agent's tasks."""
    def check(name: str, spec: TeamSpec, others: Mapping[str, TeamSpec]) -> str | None:
        return check_team(name, spec, teams={*teams, *others}, servers=servers,
                   tenant_of=lambda a: tenant_of(a) if a == name or seen(a) else None)
    return check
