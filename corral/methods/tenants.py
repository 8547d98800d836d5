# ruff: noqa: F405 - the results are corral.results', named by the methods
"""Tenants (docs/tenants.md)."""

from __future__ import annotations

from typing import Any

from ..results import *  # noqa: F403
from .declaration import ONE, Params, method, rest


@method("tenants.list", result=TenantList, scope="agents:read", seen="tenant_use", cli="tenants",
        dashboard=True, routes=(
    rest("GET", "/tenants", "The tenants: quotas beside use"),
))
class TenantsList(Params):
    """The tenants, each with its quotas beside its use (a tenant's caller: its own)."""


@method("tenants.add", result=AddResult, scope="admin", mutating=True, seen=None,
        cli="tenants add", routes=(
    rest("POST", "/tenants", "Add tenants from [tenants.NAME] tables",
         body=("tenants",), idempotent=True),
))
class TenantsAdd(Params):
    """Add tenants at runtime from [tenants.NAME] tables; they survive a daemon restart."""

    tenants: dict[str, dict[str, Any]]


@method("tenants.set", result=TenantEntry, scope="admin", mutating=True, seen=None,
        cli="tenants set", routes=(
    rest("PATCH", "/tenants/{name}", "Set keys of a tenant's table",
         body=("set",)),
))
class TenantsSet(Params):
    """Set keys of a tenant's table (0 or null: no quota); nothing that runs is stopped,
    a quota below the use refuses what comes next."""

    name: str
    set: dict[str, Any]


@method("tenants.remove", result=RemoveResult, scope="admin", mutating=True, seen=None,
        cli="tenants remove", routes=(
    rest("DELETE", "/tenants/{name}", "Remove a runtime tenant",
         path_params=ONE),
))
class TenantsRemove(Params):
    """Remove tenants added at runtime; refused while an agent or MCP server is in one."""

    names: list[str]
