"""A kind of definition that is the config file's and changeable at runtime (a workflow, a
team): those added by a command, each change a revision in the state database committed
before it takes effect and restored by the next daemon; the config file's, changed only by
an edit and a reload. How a definition is checked whole is its kind's (`check`); the
refusals, and the methods that change and show them, are alike for every kind."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any, Generic, Protocol, TypeVar

import msgspec

from .. import jsonrpc, redact
from .. import methods as m
from ..jsonrpc import RpcError
from ..rollbacks import change_of, restored, rolled_back
from ..supervisor.config import ConfigError
from ..supervisor.configload import convert, validate_name
from ..supervisor.errors import refused_definition
from .caller import Caller, Channel
from .definitions import Definitions, DefRevision
from .fleet import merge_patch
from .store import StateStore, row_limit

S = TypeVar("S", bound=msgspec.Struct)
# definitions of a kind added at runtime, at most (each restored, checked and held at
# every start); the daemon's share past the tenants' is the operator's alone
MAX_RUNTIME = 2000  # the daemon's
MAX_TENANTS = 1000  # every tenant's together
MAX_PER_TENANT = 100  # one tenant's
# a definition's table as JSON: held whole in memory and in every revision
MAX_DEFINITION_BYTES = 128 * 1024
KEEP_REVISIONS = 10
# a definition checked whole, with the others of its kind being added beside it: raises
# ValueError saying what is wrong, or answers the tenant whose definition it is
Check = Callable[[str, S, Mapping[str, S]], "str | None"]


def _own(rev: DefRevision, tenant: str | None) -> bool:
    """Whether a revision is the caller's to see (a tenant's: its tenant's alone)."""
    return tenant is None or rev.tenant == tenant


def table_of(spec: msgspec.Struct) -> dict[str, Any]:
    """A definition as a table, its unset keys left out (a config file's, shown)."""
    def bare(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: bare(v) for k, v in value.items() if v is not None}
        if isinstance(value, list):
            return [bare(v) for v in value]
        return value

    out: dict[str, Any] = bare(msgspec.to_builtins(spec))
    return out


class RuntimeCatalog(Generic[S]):
    """The definitions of one kind (`noun`, the config's `[section.NAME]`), each a `struct`."""

    def __init__(self, store: StateStore, noun: str, section: str, struct: type[S]) -> None:
        self.revisions = Definitions(store, noun)
        self.noun, self.section, self.struct = noun, section, struct
        self.config: dict[str, S] = {}  # the config file's (configure)
        # name -> (its spec, its table as given, the revision that made it)
        self.runtime: dict[str, tuple[S, dict[str, Any], DefRevision]] = {}
        self._specs: dict[str, S] | None = None  # both, made again after a change
        self._turn = asyncio.Lock()  # one change at a time: its record, then its effect

    def parse(self, name: str, table: Any, where: str) -> S:
        at = f"{where}: {self.section}.{name}"
        if not isinstance(table, dict):
            raise ConfigError(f"{at}: expected a table")
        if redact.deeper_than(table, redact.MAX_DEPTH):
            raise ConfigError(f"{at}: tables and lists nested more than {redact.MAX_DEPTH} "
                              "deep")
        validate_name(self.section, name, where)
        spec: S = convert(table, self.struct, where=where, prefix=f"{self.section}.{name}")
        return spec

    def _parsed(self, name: str, table: Any, where: str) -> S:
        size = len(msgspec.json.encode(table))
        if size > MAX_DEFINITION_BYTES:
            raise RpcError(jsonrpc.INVALID_PARAMS, f"{where}: {self.section}.{name}: "
                           f"{size} bytes as JSON, past max_definition_bytes "
                           f"({MAX_DEFINITION_BYTES}): a definition is held whole and "
                           "kept in every revision; send data in a run's input instead")
        with jsonrpc.invalid_params(ConfigError):
            return self.parse(name, table, where)

    @staticmethod
    def _owner(check: Check[S], where: str, name: str, spec: S, others: Mapping[str, S],
               tenant: str | None) -> str | None:
        """Whose a definition checked whole is: a tenant's caller's own (it sees its own
        tenant's agents alone), else the tenant `check` answers."""
        try:
            checked = check(name, spec, others)
        except ValueError as exc:  # a referent there is not: a 404, as a method on it
            raise refused_definition(exc, f"{where}: ") from None
        return tenant if tenant is not None else checked

    def restore(self, report: Callable[[str], None]) -> None:
        """The runtime definitions of an earlier daemon (an invalid one reported, left out)."""
        for name, rev in self.revisions.current().items():
            try:
                self._put(name, (self.parse(name, rev.spec, "state database"),
                                 rev.spec or {}, rev))
            except ConfigError as exc:
                report(f"{self.section}: could not restore {self.noun} {name}: {exc}")

    def configure(self, specs: Mapping[str, S]) -> None:
        self.config = dict(specs)
        self._specs = None

    def pinned(self, spec: S, tenant: str | None) -> S:
        """A runtime definition as it is held, once it is known to be `tenant`'s (a kind
        whose definition names its tenant says so in it)."""
        return spec

    def _put(self, name: str, held: tuple[S, dict[str, Any], DefRevision] | None) -> None:
        if held is None:
            self.runtime.pop(name, None)
        else:
            spec, table, rev = held
            self.runtime[name] = (self.pinned(spec, rev.tenant), table, rev)
        self._specs = None

    def specs(self) -> dict[str, S]:
        """Every definition (the config file's wins over a runtime one of its name); read
        on every task's way, so made once per change, and not to be changed."""
        if self._specs is None:
            self._specs = {**{n: s for n, (s, _, _) in self.runtime.items()}, **self.config}
        return self._specs

    def revision_of(self, name: str) -> DefRevision | None:
        """The revision a runtime definition is at (None: the config file's)."""
        held = self.runtime.get(name) if name not in self.config else None
        return held[2] if held is not None else None

    def in_use(self, name: str, removed: list[str]) -> str | None:
        """Why `name` may not be removed with `removed` (another definition uses it)."""
        return None

    def in_config(self, name: str, doing: str) -> RpcError:
        return RpcError(jsonrpc.CONFLICT, f"{self.noun} {name} is declared in the config "
                                          f"file: {doing} it there and `corral reload`")

    # -- changes ----------------------------------------------------------------------------
    async def _record(self, writes: list[tuple[str, dict[str, Any] | None, str | None]],
                      who: str, why: str | None, unchanged: str) -> dict[str, DefRevision]:
        """Each (name, table or None for a removal, its tenant) a revision, committed."""
        made: dict[str, list[DefRevision]] = {n: [] for n, _, _ in writes}
        # a removed name holds no quota: the histories its owner keeps of such are bounded
        # as its definitions are, in the same transaction
        forgotten = {owner for _, t, owner in writes if t is None}
        await self.revisions.store.commit_or_refuse(
            [self.revisions.recording(n, t, who, owner, why, made[n], KEEP_REVISIONS)
             for n, t, owner in writes]
            + [self.revisions.forgetting(o, MAX_PER_TENANT if o is not None else MAX_RUNTIME)
               for o in sorted(forgotten, key=lambda o: o or "")], unchanged)
        return {n: revs[0] for n, revs in made.items() if revs}

    def _room(self, where: str, tenant: str | None, owners: list[str | None]) -> None:
        """Past a bound on how many are added at runtime: refused with its name. The
        operator is bounded by the daemon's count alone, which the tenants' never fill."""
        held = [rev.tenant for _, _, rev in self.runtime.values()]
        if tenant is not None:
            mine = sum(1 for t in held if t == tenant)
            if mine + len(owners) > MAX_PER_TENANT:
                raise self._quota(where, f"at most {MAX_PER_TENANT} {self.section} of a "
                                  f"tenant (max_per_tenant; tenant {tenant} has {mine})")
            theirs = sum(1 for t in held if t is not None)
            if theirs + len(owners) > MAX_TENANTS:
                raise self._quota(where, f"at most {MAX_TENANTS} {self.section} of "
                                  f"tenants together (max_tenants; there are {theirs})")
        if len(held) + len(owners) > MAX_RUNTIME:
            raise self._quota(where, f"at most {MAX_RUNTIME} {self.section} (max_runtime;"
                              f" there are {len(held)})")

    def _quota(self, where: str, bound: str) -> RpcError:
        return RpcError(jsonrpc.QUOTA_EXCEEDED, f"{where}: {bound} are added at runtime: "
                                                "remove some first")

    async def add(self, tables: dict[str, Any], who: str, tenant: str | None,
                  check: Check[S]) -> list[str]:
        """Definitions from [section.NAME] tables, all or nothing, each checked whole;
        each its agents' tenant's (a tenant's caller names its own agents only)."""
        where = f"{self.section}.add"
        if not tables:
            raise RpcError(jsonrpc.INVALID_PARAMS, f"no [{self.section}.NAME] tables to add")
        specs = {n: self._parsed(n, t, where) for n, t in tables.items()}
        async with self._turn:
            there = self.specs()
            taken = [n for n in specs if n in there]
            if taken:
                raise RpcError(jsonrpc.CONFLICT, f"{self.noun} {taken[0]} already exists")
            owners = {name: self._owner(check, where, name, spec, specs, tenant)
                      for name, spec in specs.items()}
            self._room(where, tenant, list(owners.values()))
            made = await self._record([(n, tables[n], owners[n]) for n in specs], who, None,
                                      "nothing was added")
            for name, spec in specs.items():
                self._put(name, (spec, tables[name], made[name]))
        return sorted(specs)

    def _runtime(self, name: str, doing: str) -> tuple[S, dict[str, Any], DefRevision]:
        if name in self.config:
            raise self.in_config(name, doing)
        held = self.runtime.get(name)
        if held is None:
            raise jsonrpc.not_found(self.noun, name)
        return held

    async def update(self, name: str, changes: dict[str, Any], who: str,
                     tenant: str | None, check: Check[S]) -> DefRevision | None:
        """`changes` merged into its table (JSON merge patch); the revision made, or None."""
        where = f"{self.section}.update"
        if not changes:
            raise RpcError(jsonrpc.INVALID_PARAMS, "nothing to change")
        if redact.deeper_than(changes, redact.MAX_DEPTH):
            raise RpcError(jsonrpc.INVALID_PARAMS, f"{where}: {self.section}.{name}: "
                           f"tables and lists nested more than {redact.MAX_DEPTH} deep")
        async with self._turn:
            _, table, _ = self._runtime(name, "change")
            new = merge_patch(table, changes)
            spec = self._parsed(name, new, where)
            owner = self._owner(check, where, name, spec, {}, tenant)
            made = await self._record([(name, new, owner)], who, None,
                                      f"{name} was not changed")
            if name not in made:
                return None
            self._put(name, (spec, new, made[name]))
            return made[name]

    async def remove(self, names: list[str], who: str, tenant: str | None) -> list[str]:
        """Runtime definitions removed (each a revision of its tenant's), unless one is used."""
        async with self._turn:
            owners = {}
            for name in names:
                owners[name] = self._runtime(name, "remove")[2].tenant
                why = self.in_use(name, names)
                if why is not None:
                    raise RpcError(jsonrpc.CONFLICT, why)
            await self._record([(n, None, owners[n]) for n in names], who, None,
                               "nothing was removed")
            for name in names:
                self._put(name, None)
        return names

    def history(self, name: str, limit: int, tenant: str | None) -> list[DefRevision]:
        if name in self.config:
            raise RpcError(jsonrpc.CONFLICT, f"{self.noun} {name} is declared in the config "
                                             "file: its history is the file's")
        revs = self.revisions.history(name, limit, tenant)
        if not revs:
            raise jsonrpc.not_found(self.noun, name)
        return revs

    def last_defined(self, name: str, tenant: str | None) -> tuple[S, str | None] | None:
        """A runtime definition as it is, or as its newest revision of the caller's tenant
        defined it (removed since), and whose: who may see its history."""
        held = self.runtime.get(name)
        if held is not None and _own(held[2], tenant):
            return held[0], held[2].tenant
        rev = next((r for r in reversed(self.revisions.history(name, KEEP_REVISIONS, tenant))
                    if r.spec is not None), None)
        if rev is None:
            return None
        try:
            return self.parse(name, rev.spec, "revision"), rev.tenant
        except ConfigError:
            return None

    async def rollback(self, name: str, revision: int | None, who: str,
                       tenant: str | None, check: Check[S]) -> tuple[int, DefRevision | None]:
        """Back to an earlier revision (default: the one before the newest; a removed one
        comes back so); the revision restored and the one made (None: none)."""
        async with self._turn:
            if name in self.config:
                raise self.in_config(name, "change")
            latest = self.revisions.latest(name)
            if latest is None or not _own(latest, tenant):
                raise jsonrpc.not_found(self.noun, name)
            kept = {r.revision: r for r in self.revisions.history(name, KEEP_REVISIONS,
                                                                  tenant)}
            target = restored(kept, revision, f"{self.noun} {name}",
                              f"corral {self.section} history {name}")
            rev = kept[target]
            if rev.spec is None:
                raise RpcError(jsonrpc.INVALID_PARAMS, f"revision {target} of {self.noun} "
                               f"{name} removed it: name a revision that defines it")
            where = f"{self.section}.rollback"
            spec = self._parsed(name, rev.spec, where)
            owner = self._owner(check, where, name, spec, {}, tenant)
            if name not in self.runtime:
                self._room(where, tenant, [owner])
            made = await self._record([(name, rev.spec, owner)], who, rolled_back(target),
                                      f"{name} was not rolled back")
            self._put(name, (spec, rev.spec, made.get(name, latest)))
            return target, made.get(name)


# -- the methods of every kind (teams.update, workflows.update, ...): a kind's handlers
# module registers these over its narrow services, which say what differs (a `Kind`) ------
class Kind(Protocol[S]):
    @property
    def catalog(self) -> RuntimeCatalog[S]: ...

    def defined(self, name: str) -> tuple[S, list[str]]:
        """A definition there is and the agents it runs; NOT_FOUND for none."""

    def tenant(self, name: str) -> str | None: ...

    def check(self, caller: Caller) -> Check[S]:
        """A change checked whole against what `caller` may name."""


async def describe(d: Kind[Any], p: m.DefinitionNamed, caller: Caller, c: Channel
                   ) -> m.DefinitionDescription:
    spec, agents = d.defined(p.name)
    rev = d.catalog.revision_of(p.name)
    return m.DefinitionDescription(
        name=p.name, source="config" if rev is None else "runtime",
        revision=rev.revision if rev is not None else None, tenant=d.tenant(p.name),
        agents=agents, definition=rev.spec or {} if rev is not None else table_of(spec))


async def update(d: Kind[Any], p: m.DefinitionUpdate, caller: Caller, c: Channel
                 ) -> m.UpdateResult:
    d.defined(p.name)
    rev = await d.catalog.update(p.name, p.set, caller.who, caller.tenant, d.check(caller))
    return m.UpdateResult(name=p.name, revision=rev.revision if rev is not None else None,
                          change=rev.change if rev is not None else "no change")


async def remove(d: Kind[Any], p: m.DefinitionsRemove, caller: Caller, c: Channel
                 ) -> m.RemoveResult:
    if not p.names:
        raise RpcError(jsonrpc.INVALID_PARAMS, f"name the {d.catalog.section} to remove")
    for name in p.names:
        d.defined(name)
    return m.RemoveResult(removed=await d.catalog.remove(p.names, caller.who, caller.tenant))


async def history(d: Kind[Any], p: m.DefinitionHistory, caller: Caller, c: Channel
                  ) -> m.DefinitionRevisions:
    """The newest `limit` revisions the caller's tenant may see."""
    revs = d.catalog.history(p.name, row_limit(p.limit), caller.tenant)
    now = d.catalog.revision_of(p.name)
    rows = [m.DefinitionRevision(revision=r.revision, time=r.time, who=r.who,
                                 change=r.change, definition=r.spec, tenant=r.tenant)
            for r in revs]
    return m.DefinitionRevisions(name=p.name, current=now.revision if now is not None
                                 else None, revisions=rows)


async def rollback(d: Kind[Any], p: m.DefinitionRollback, caller: Caller, c: Channel
                   ) -> m.RollbackResult:
    target, made = await d.catalog.rollback(p.name, p.revision, caller.who, caller.tenant,
                                            d.check(caller))
    return m.RollbackResult(name=p.name, restored=target,
                            revision=made.revision if made else None,
                            change=change_of(made.change, target) if made else "no change")
