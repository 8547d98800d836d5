"""Tenants: list them with their use beside their quotas, add, set, remove."""

from __future__ import annotations

import click

from .. import methods as m
from .app import Ctx, command, read_tables, said, set_pairs, shows
from .render import table

# each use shown beside its quota: (TenantUse's field, the quota's key)
BESIDE = (("agents", "max_agents"), ("replicas", "max_replicas"), ("queued", "max_queue"),
          ("running", "max_concurrent_tasks"), ("tokens_last_minute", "tokens_per_minute"))


@shows(m.TenantsList, group=True)
def tenants(res: m.TenantList) -> None:
    beside = {quota for _, quota in BESIDE}
    table([[t.name, *(_beside(getattr(t.use, used), t.quotas.get(quota))
                      for used, quota in BESIDE),
            ", ".join(f"{k}={v}" for k, v in t.quotas.items() if k not in beside) or "-"]
           for t in res.tenants],
          ["TENANT", "AGENTS", "REPLICAS", "QUEUED", "RUNNING", "TOKENS/MIN", "OTHER"])


def _beside(used: float, quota: float | None) -> str:
    return f"{used:g}/{quota:g}" if quota else f"{used:g}"


@command(m.TenantsAdd, more="\n\nFILE holds [tenants.NAME] tables.")
@click.argument("file")
def tenants_add(obj: Ctx, file: str) -> None:
    res: m.AddResult = obj.call(m.TenantsAdd(tenants=read_tables(file, "tenants")))
    click.echo(f"added: {', '.join(res.added)}")


@command(m.TenantsSet)
@click.argument("name")
@click.argument("pairs", nargs=-1, required=True, metavar="KEY=VALUE...")
def tenants_set(obj: Ctx, name: str, pairs: tuple[str, ...]) -> None:
    res: m.TenantEntry = obj.call(m.TenantsSet(name=name, set=set_pairs(pairs, "KEY=VALUE")))
    click.echo(f"tenant {res.name}: " + (", ".join(f"{k}={v}" for k, v in res.quotas.items())
                                         or "no quotas"))


said(m.TenantsRemove, "names", lambda res: f"removed: {', '.join(res.removed)}", nargs=-1,
     required=True)
