"""The workflows there are: the config file's, and those added at runtime (`workflows
add`, `POST /api/v1/workflows`, `WorkflowService.add_workflow`), each change of these a
revision in the state database (definitions.py) committed before it takes effect, and
restored by the next daemon. A config file's workflow is the file's: changed by an edit
and a reload, never at runtime. A run keeps the definition it started on, so a change or
a removal is the next runs' (docs/workflows.md)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any

import msgspec

from ... import jsonrpc, redact
from ...jsonrpc import RpcError
from ...supervisor.config import ConfigError
from ...supervisor.configload import convert, validate_name
from ...supervisor.workflows import Workflow, WorkflowError, WorkflowSpec, compile_workflow
from ..definitions import Definitions, DefRevision
from ..fleet import merge_patch
from ..store import StateStore
from ..storeschema import StoreError
from ..storewriter import what_to_do

KIND = "workflow"
# workflows added at runtime, at most: each is a row restored and compiled at every start
# (and up to MAX_STEPS steps), so what a caller may add is bounded as a map's items are
MAX_RUNTIME = 1000
Known = Callable[[str], bool]


def _in_config(name: str, doing: str) -> RpcError:
    return RpcError(jsonrpc.CONFLICT, f"workflow {name} is declared in the config file: "
                                      f"{doing} it there and `corral reload`")


def _spec(name: str, table: Any, where: str) -> WorkflowSpec:
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: workflows.{name}: expected a table")
    if redact.deeper_than(table, redact.MAX_DEPTH):
        raise ConfigError(f"{where}: workflows.{name}: tables and lists nested more than "
                          f"{redact.MAX_DEPTH} deep")
    validate_name("workflows", name, where)
    spec: WorkflowSpec = convert(table, WorkflowSpec, where=where, prefix=f"workflows.{name}")
    return spec


class Catalog:
    def __init__(self, store: StateStore) -> None:
        self.revisions = Definitions(store, KIND)
        self.config: dict[str, WorkflowSpec] = {}
        # name -> (its spec, its table as given, the revision that made it)
        self.runtime: dict[str, tuple[WorkflowSpec, dict[str, Any], DefRevision]] = {}
        self._turn = asyncio.Lock()  # one change at a time: its record, then its effect

    def restore(self, report: Callable[[str], None]) -> None:
        """The workflows added at runtime by an earlier daemon (a table no longer valid
        is reported and left out: the others are restored)."""
        for name, rev in self.revisions.current().items():
            try:
                self.runtime[name] = (_spec(name, rev.spec, "state database"),
                                      rev.spec or {}, rev)
            except ConfigError as exc:
                report(f"workflows: could not restore workflow {name}: {exc}")

    def specs(self) -> dict[str, WorkflowSpec]:
        """Every workflow's definition (the config file's wins over a runtime one of its
        name, which it can only be since a reload added it)."""
        return {**{n: s for n, (s, _, _) in self.runtime.items()}, **self.config}

    def workflow(self, name: str) -> Workflow:
        """A workflow compiled with the others (its nested ones' agents), or NOT_FOUND."""
        specs = self.specs()
        spec = specs.get(name)
        if spec is None:
            raise jsonrpc.not_found("workflow", name)
        try:
            return compile_workflow(name, spec, None, specs)
        except WorkflowError:  # a nested one gone by a reload: said when it is run
            return compile_workflow(name, spec)

    def revision_of(self, name: str) -> DefRevision | None:
        """The revision a runtime workflow is at (None: the config file's)."""
        held = self.runtime.get(name) if name not in self.config else None
        return held[2] if held is not None else None

    def users_of(self, name: str) -> list[str]:
        return sorted(n for n, s in self.specs().items()
                      if any(st.workflow == name for st in s.steps) and n != name)

    # -- changes ----------------------------------------------------------------------------
    async def _record(self, writes: list[tuple[str, dict[str, Any] | None]], who: str,
                      tenant: str | None, why: str | None, unchanged: str
                      ) -> dict[str, DefRevision]:
        made: dict[str, list[DefRevision]] = {n: [] for n, _ in writes}
        try:
            await self.revisions.store.commit(
                [self.revisions.recording(n, t, who, tenant, why, made[n]) for n, t in writes])
        except StoreError as exc:
            raise RpcError(jsonrpc.REFUSED, f"{exc}: {unchanged}; {what_to_do()}") from None
        return {n: revs[0] for n, revs in made.items() if revs}

    def _check(self, where: str, name: str, spec: WorkflowSpec, known_agent: Known,
               others: Mapping[str, WorkflowSpec]) -> None:
        try:
            compile_workflow(name, spec, known_agent, others)
        except WorkflowError as exc:
            raise RpcError(jsonrpc.INVALID_PARAMS, f"{where}: {exc}") from None

    async def add(self, tables: dict[str, Any], who: str, tenant: str | None,
                  known_agent: Known, known: Mapping[str, WorkflowSpec]) -> list[str]:
        """Workflows from [workflows.NAME] tables, all or nothing, each checked whole
        against the agents and workflows the caller sees (`known_agent`, `known`)."""
        if not tables:
            raise RpcError(jsonrpc.INVALID_PARAMS, "no [workflows.NAME] tables to add")
        try:
            specs = {n: _spec(n, t, "workflows.add") for n, t in tables.items()}
        except ConfigError as exc:
            raise RpcError(jsonrpc.INVALID_PARAMS, str(exc)) from None
        async with self._turn:
            there = self.specs()
            taken = [n for n in specs if n in there]
            if taken:
                raise RpcError(jsonrpc.CONFLICT, f"workflow {taken[0]} already exists")
            if len(self.runtime) + len(specs) > MAX_RUNTIME:
                raise RpcError(jsonrpc.QUOTA_EXCEEDED, f"workflows.add: at most "
                               f"{MAX_RUNTIME} workflows are added at runtime (there are "
                               f"{len(self.runtime)}): remove some first")
            for name, spec in specs.items():
                self._check("workflows.add", name, spec, known_agent, {**known, **specs})
            made = await self._record([(n, tables[n]) for n in specs], who, tenant, None,
                                      "nothing was added")
            for name, spec in specs.items():
                self.runtime[name] = (spec, tables[name], made[name])
        return sorted(specs)

    def _runtime(self, name: str, doing: str) -> tuple[WorkflowSpec, dict[str, Any],
                                                       DefRevision]:
        if name in self.config:
            raise _in_config(name, doing)
        held = self.runtime.get(name)
        if held is None:
            raise jsonrpc.not_found("workflow", name)
        return held

    async def update(self, name: str, changes: dict[str, Any], who: str, tenant: str | None,
                     known_agent: Known, known: Mapping[str, WorkflowSpec]
                     ) -> DefRevision | None:
        """`changes` merged into its table (a JSON merge patch: a table merges key by
        key, null takes a key away, a list is replaced whole); the revision made, None
        when nothing changed."""
        if not changes:
            raise RpcError(jsonrpc.INVALID_PARAMS, "nothing to change")
        if redact.deeper_than(changes, redact.MAX_DEPTH):
            raise RpcError(jsonrpc.INVALID_PARAMS, f"workflows.update: workflows.{name}: "
                           f"tables and lists nested more than {redact.MAX_DEPTH} deep")
        async with self._turn:
            _, table, _ = self._runtime(name, "change")
            new = merge_patch(table, changes)
            try:
                spec = _spec(name, new, "workflows.update")
            except ConfigError as exc:
                raise RpcError(jsonrpc.INVALID_PARAMS, str(exc)) from None
            self._check("workflows.update", name, spec, known_agent, known)
            made = await self._record([(name, new)], who, tenant, None,
                                      f"{name} was not changed")
            if name not in made:
                return None
            self.runtime[name] = (spec, new, made[name])
            return made[name]

    async def remove(self, names: list[str], who: str, tenant: str | None) -> list[str]:
        """Runtime workflows removed (a removal is a revision: history and rollback still
        have them); refused while another workflow runs one as a step."""
        async with self._turn:
            for name in names:
                self._runtime(name, "remove")
                users = [u for u in self.users_of(name) if u not in names]
                if users:
                    raise RpcError(jsonrpc.CONFLICT, f"workflow {name} is a step of workflow "
                                   f"{users[0]}: change or remove {users[0]} first")
            await self._record([(n, None) for n in names], who, tenant, None,
                               "nothing was removed")
            for name in names:
                self.runtime.pop(name, None)
        return names

    def history(self, name: str, limit: int, tenant: str | None) -> list[DefRevision]:
        if name in self.config:
            raise RpcError(jsonrpc.CONFLICT, f"workflow {name} is declared in the config "
                                             "file: its history is the file's")
        revs = self.revisions.history(name, limit)
        if tenant is not None:  # another tenant's workflow of this name, before
            revs = [r for r in revs if _own(r, tenant)]
        if not revs:
            raise jsonrpc.not_found("workflow", name)
        return revs

    def last_defined(self, name: str) -> Workflow | None:
        """A runtime workflow as it is, or as its newest revision defined it (removed
        since): what decides who may see its history."""
        if name in self.runtime:
            return self.workflow(name)
        for rev in reversed(self.revisions.history(name, 1 << 30)):
            if rev.spec is not None:
                try:
                    return compile_workflow(name, _spec(name, rev.spec, "revision"))
                except (ConfigError, WorkflowError):
                    return None
        return None

    async def rollback(self, name: str, revision: int | None, who: str, tenant: str | None,
                       known_agent: Known, known: Mapping[str, WorkflowSpec]
                       ) -> tuple[int, DefRevision | None]:
        """Back to an earlier revision (default: the one before the newest; a removed
        workflow comes back so); the revision restored and the one made (None: it was
        that already)."""
        async with self._turn:
            if name in self.config:
                raise _in_config(name, "change")
            latest = self.revisions.latest(name)
            if latest is None or not _own(latest, tenant):
                raise jsonrpc.not_found("workflow", name)
            target = revision if revision is not None else latest.revision - 1
            rev = self.revisions.get(name, target)
            if rev is None or not _own(rev, tenant):
                raise RpcError(jsonrpc.NOT_FOUND, f"no revision {target} of workflow {name} "
                               f"(its revisions: 1..{latest.revision}; see `corral "
                               f"workflows history {name}`)")
            if rev.spec is None:
                raise RpcError(jsonrpc.INVALID_PARAMS, f"revision {target} of workflow "
                               f"{name} removed it: name a revision that defines it")
            try:
                spec = _spec(name, rev.spec, "workflows.rollback")
            except ConfigError as exc:
                raise RpcError(jsonrpc.INVALID_PARAMS, str(exc)) from None
            self._check("workflows.rollback", name, spec, known_agent, known)
            made = await self._record([(name, rev.spec)], who, tenant,
                                      f"rollback to revision {target}",
                                      f"{name} was not rolled back")
            self.runtime[name] = (spec, rev.spec, made.get(name, latest))
            return target, made.get(name)



def _own(rev: DefRevision, tenant: str | None) -> bool:
    """Whether a revision is a tenant's caller's to see: its tenant's, or an operator's
    (of a workflow the caller sees: the handlers ask); another tenant's is not."""
    return tenant is None or rev.tenant in (None, tenant)


def table_of(spec: WorkflowSpec) -> dict[str, Any]:
    """A definition as a table, its unset keys left out (a config file's, shown)."""
    def bare(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: bare(v) for k, v in value.items() if v is not None}
        if isinstance(value, list):
            return [bare(v) for v in value]
        return value

    out: dict[str, Any] = bare(msgspec.to_builtins(spec))
    return out
