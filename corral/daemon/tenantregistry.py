"""The tenants of a running daemon (docs/tenants.md): the config file's and those added or
changed at runtime, kept in the state database (`runtime_tenants`), each change a revision
under `tenant:NAME` (which no agent name can be). A config tenant changed at runtime is
stored with the file's table beside the change: it holds until the file changes that tenant.
"""

from __future__ import annotations

import asyncio
import grp
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import msgspec

from .. import jsonrpc
from .. import methods as m
from ..jsonrpc import RpcError
from ..supervisor.config import DEFAULT_TENANT, Config, ConfigError, TenantSpec
from ..supervisor.configload import parse_tenants
from ..supervisor.parts import Parts
from ..supervisor.quotas import BUDGET_PREFIX
from ..supervisor.tenantcgroups import TenantOomKill, notice
from .sqlwrites import Write, statement
from .store import StateStore

Report = Callable[..., None]
# the keys corral enforces everywhere; the kernel's are in `enforced` where it does
ENFORCED = ("max_agents", "max_replicas", "max_queue", "max_concurrent_tasks",
            "rate_per_minute", "max_task_seconds", "tokens_per_minute", "group",
            "max_memory_mb", "max_cpu_percent", "cpu_weight", "sandbox", "network", "user",
            "max_gateway_sessions", "max_step_bytes", "max_step_journal_bytes",
            "max_stream_bytes", "max_stream_journal_bytes")
REVISION_PREFIX = "tenant:"


def table_of(spec: TenantSpec) -> dict[str, Any]:
    out: dict[str, Any] = msgspec.to_builtins(spec)
    return out


def _change(old: dict[str, Any] | None, new: dict[str, Any]) -> str:
    if old is None:
        return "created"
    keys = sorted(set(old) | set(new))
    said = [f"{k} {old.get(k, 0)} -> {new.get(k, 0)}" for k in keys if old.get(k) != new.get(k)]
    return ", ".join(said) or "no change"


def groups_of(specs: Mapping[str, TenantSpec], report: Report) -> dict[int, str]:
    """Socket peers' groups (gid) -> their tenant."""
    out: dict[int, str] = {}
    for name, spec in specs.items():
        if spec.group is None:
            continue
        try:
            out[grp.getgrnam(spec.group).gr_gid] = name
        except KeyError:
            report(f"tenant {name}: group {spec.group} does not exist; no socket peer is "
                   "of this tenant by its group", priority=4)
    return out


class TenantRegistry:
    def __init__(self, parts: Parts, store: StateStore, config_path: Path,
                 report: Report,
                 on_groups: Callable[[dict[int, str]], None]) -> None:
        """`on_groups`: told the tenants' unix groups each time they change."""
        self.quotas = parts.quotas
        self.tools = parts.tools
        self.tasks = parts.tasks
        self.containment = parts.containment  # its tree: whether tenants get cgroups
        # OOM kills in each tenant's cgroup since start, as the stream tells them
        self.oom_kills: dict[str, int] = {}
        parts.stream.subscribe(self._on_oom, TenantOomKill)
        self.store = store
        self.config_path = config_path
        self.report = report
        self.declared: dict[str, dict[str, Any]] = {}  # the config file's tables
        self.tables: dict[str, dict[str, Any]] = {}  # what applies: file or runtime
        self.runtime: set[str] = set()  # added at runtime (not in the file)
        self.on_groups = on_groups
        self._said: set[str] = set()  # the start-up notices of quotas not in a cgroup
        # one change at a time: each checks and builds on the tables as the last one left
        # them (two sets of one tenant would otherwise each start from the same table and
        # the later would undo the earlier, both answered as done)
        self._changing = asyncio.Lock()

    # -- start-up and reload ------------------------------------------------------------
    def apply_config(self, cfg: Config) -> None:
        """The file's tenants, with what runtime changes of them still hold, and the
        runtime tenants; then the engine and the socket's groups are told."""
        self.declared = {n: table_of(s) for n, s in cfg.tenants.items()}
        tables = dict(self.declared)
        self.runtime = set()
        for name, table, declared in self._stored():
            if name in self.declared:
                if declared == self.declared[name]:
                    tables[name] = table  # the file is as it was: the change holds
                elif self.store.writer is not None:  # the file changed it: the file wins
                    self.store.writer.submit(_forgetting(name), "tenant")
            elif declared is None:
                tables[name] = table
                self.runtime.add(name)
        self._apply(tables)
        for line in notice(self.containment.tree, self.quotas.specs,
                           "no delegated cgroup"):
            if line not in self._said:  # once, not again at every reload
                self._said.add(line)
                self.report(line)

    def check_reload(self, cfg: Config, staying: list[tuple[str, str]]) -> None:
        """Refuse a reload that would drop a tenant an agent staying (added at runtime:
        (name, tenant)) is in."""
        known = {DEFAULT_TENANT, *cfg.tenants, *self.runtime}
        for name, tenant in staying:
            if tenant not in known:
                raise ConfigError(f"{self.config_path}: tenants.{tenant}: agent {name} "
                                  "(added at runtime) is in it: remove the agent first")

    def _stored(self) -> list[tuple[str, dict[str, Any], dict[str, Any] | None]]:
        rows = self.store.db.execute("SELECT name, spec, declared FROM runtime_tenants "
                                     "ORDER BY time")
        return [(n, msgspec.json.decode(s), msgspec.json.decode(d) if d else None)
                for n, s, d in rows]

    def _apply(self, tables: dict[str, dict[str, Any]]) -> None:
        specs: dict[str, TenantSpec] = {}
        for name, table in tables.items():
            try:
                specs[name] = parse_tenants({"tenants": {name: table}}, "state database")[name]
            except ConfigError as exc:  # stored by another corral: the others still apply
                self.report(f"skipped tenant {name}: {exc}", priority=4)
        self.tables = {n: tables[n] for n in specs}
        self.quotas.replace(specs)
        self.on_groups(groups_of(self.quotas.specs, self.report))

    # -- commands -----------------------------------------------------------------------
    async def add(self, tables: dict[str, dict[str, Any]], who: str) -> list[str]:
        async with self._changing:
            if not tables:
                raise RpcError(jsonrpc.INVALID_PARAMS, "no [tenants.NAME] tables to add")
            with jsonrpc.invalid_params(ConfigError):
                specs = parse_tenants({"tenants": tables}, m.TenantsAdd.declared.name)
            for name in specs:
                if self.quotas.known(name):
                    raise RpcError(jsonrpc.CONFLICT, f"tenant {name} already exists")
            made = {n: table_of(s) for n, s in specs.items()}
            await self.store.commit_or_refuse(
                [w for n, t in made.items()
                 for w in (_saving(n, t, None), _revising(n, who, None, t))],
                "nothing was added")
            self.runtime.update(made)
            self._apply({**self.tables, **made})
            return sorted(made)

    async def set(self, name: str, changes: dict[str, Any], who: str) -> m.TenantEntry:
        async with self._changing:
            if name not in self.tables:
                if name == DEFAULT_TENANT:
                    # (a conflict with the state: well-formed, and taken once it is declared)
                    raise RpcError(jsonrpc.CONFLICT, "the default tenant has no quotas "
                                   "until it is declared: add [tenants.default]")
                raise jsonrpc.not_found("tenant", name)
            if not changes:
                raise RpcError(jsonrpc.INVALID_PARAMS, "name at least one key to set")
            old = self.tables[name]
            new = {**old}
            for key, value in changes.items():
                # None or a number 0 resets the key (false is no number: refused as a type)
                if value is None or (value == 0 and type(value) in (int, float)):
                    new.pop(key, None)
                else:
                    new[key] = value
            with jsonrpc.invalid_params(ConfigError):
                spec = parse_tenants({"tenants": {name: new}},
                                     m.TenantsSet.declared.name)[name]
            table = table_of(spec)
            await self.store.commit_or_refuse(
                [_saving(name, table, self.declared.get(name)), _revising(name, who, old, table)],
                f"tenant {name} was not changed")
            self._apply({**self.tables, name: table})
            return self.entry(name)

    async def remove(self, names: list[str]) -> list[str]:
        async with self._changing:
            if not names:
                raise RpcError(jsonrpc.INVALID_PARAMS, "name at least one tenant")
            for name in names:
                if name not in self.tables:
                    raise jsonrpc.not_found("tenant", name)
                if name in self.declared:
                    raise RpcError(jsonrpc.CONFLICT, f"tenant {name} is declared in "
                                   f"{self.config_path}: remove it there and reload")
                users = sorted([a.name for a in self.quotas.members(name)] + [
                    f"MCP server {n}" for n, e in self.tools.servers.items()
                    if e.spec.tenant == name])
                if users:
                    raise RpcError(jsonrpc.CONFLICT, f"tenant {name} is in use by "
                                                     f"{', '.join(users)}")
            await self.store.commit_or_refuse([_forgetting(n) for n in names],
                                              "nothing was removed")
            self.runtime.difference_update(names)
            self._apply({n: t for n, t in self.tables.items() if n not in names})
            return names

    def _on_oom(self, e: TenantOomKill) -> None:
        self.oom_kills[e.tenant] = e.total

    # -- shown --------------------------------------------------------------------------
    def entry(self, name: str) -> m.TenantEntry:
        tasks = self.tasks
        use = self.quotas.use(name, tasks.queue.depth, tasks.running)
        budget = tasks.budgets.windows.get(BUDGET_PREFIX + name)  # Tenancy.budget's key
        if budget is not None:
            use.tokens_last_minute = budget.minute_tokens.used(time.time())
        use.step_journal_bytes = tasks.steps.held.get(name, 0)
        if self.containment.nodes is not None:
            use.oom_kills = self.oom_kills.get(name, 0)
        table = self.tables.get(name, {})
        cgroup = self.quotas.kernel
        kernel = [k for k, on in (("memory_high_mb", "memory" in cgroup),
                                  ("max_processes", "pids" in cgroup or "user" in table))
                  if on and k in table]
        origin = ("runtime" if name in self.runtime else f"file {self.config_path}"
                  if name in self.declared else "default")
        return m.TenantEntry(name=name, origin=origin, revision=self._revision(name),
                             quotas=table, use=msgspec.convert(msgspec.to_builtins(use),
                                                               m.TenantUse),
                             enforced=[k for k in ENFORCED if k in table] + kernel)

    def entries(self) -> list[m.TenantEntry]:
        return [self.entry(n) for n in self.quotas.names()]

    def _revision(self, name: str) -> int | None:
        row = self.store.db.execute("SELECT MAX(revision) FROM revisions WHERE agent = ?",
                                    (REVISION_PREFIX + name,)).fetchone()
        return row[0] if row is not None else None


def _saving(name: str, table: dict[str, Any], declared: dict[str, Any] | None) -> Write:
    return statement("INSERT OR REPLACE INTO runtime_tenants (name, spec, declared, time) "
                     "VALUES (?, ?, ?, ?)", (
                         name, msgspec.json.encode(table).decode(),
                         msgspec.json.encode(declared).decode() if declared is not None
                         else None, time.time()))


def _forgetting(name: str) -> Write:
    return statement("DELETE FROM runtime_tenants WHERE name = ?", (name,))


def _revising(name: str, who: str, old: dict[str, Any] | None, new: dict[str, Any]
              ) -> Write:
    key = REVISION_PREFIX + name
    return statement("INSERT INTO revisions (agent, revision, time, who, change, spec) "
                     "SELECT ?, COALESCE(MAX(revision), 0) + 1, ?, ?, ?, ? FROM revisions "
                     "WHERE agent = ?", (key, time.time(), who, _change(old, new),
                                         msgspec.json.encode(new).decode(), key))
