"""The tenants methods' handlers: the tenants listed with their use, added, changed and
removed at runtime."""

from __future__ import annotations

from operator import attrgetter

from .. import methods as m
from .api import Commands
from .caller import Caller, Channel
from .services import Services
from .tenantregistry import TenantRegistry

COMMANDS: Commands[Services, TenantRegistry] = Commands(attrgetter("tenants"))
implements = COMMANDS.implements


@implements(m.TenantsList)
async def tenants_list(tenants: TenantRegistry, p: m.TenantsList, caller: Caller, c: Channel
                       ) -> m.TenantList:
    return m.TenantList(tenants=tenants.entries())


@implements(m.TenantsAdd)
async def tenants_add(tenants: TenantRegistry, p: m.TenantsAdd, caller: Caller, c: Channel
                      ) -> m.AddResult:
    return m.AddResult(added=await tenants.add(p.tenants, caller.who))


@implements(m.TenantsSet)
async def tenants_set(tenants: TenantRegistry, p: m.TenantsSet, caller: Caller, c: Channel
                      ) -> m.TenantEntry:
    return await tenants.set(p.name, p.set, caller.who)


@implements(m.TenantsRemove)
async def tenants_remove(tenants: TenantRegistry, p: m.TenantsRemove, caller: Caller, c: Channel
                         ) -> m.RemoveResult:
    return m.RemoveResult(removed=await tenants.remove(p.names))
