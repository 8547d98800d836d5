"""Changes of the fleet, each one unit of work: record, act, undo on failure.

Every change of what runs (a command's, a reload's, start-up's restore) goes through
`Fleet`. A command's change is committed to the state database BEFORE it is made: a
database that cannot be written refuses it with nothing changed, and a change that then
fails is taken back, record and all. Two changes of one agent take turns (`changing`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterable
from pathlib import Path
from typing import Any

import msgspec

from .. import jsonrpc, redact
from ..jsonrpc import RpcError
from ..methods import AgentsAdd, AgentsUpdate, ReloadResult
from ..rollbacks import change_of, restored, rolled_back
from ..supervisor.config import (
    DEFAULT_TENANT,
    AgentSpec,
    Config,
    ConfigError,
    GatewaySettings,
    default_cwd,
)
from ..supervisor.configload import (
    check_command,
    check_sandboxes,
    isolation_problem,
    parse_agents,
)
from ..supervisor.elastic import scale_refusal
from ..supervisor.errors import SupervisorError, UnreadyKept
from ..supervisor.names import name_problem, shown
from ..supervisor.parts import Parts
from ..supervisor.release import READY
from ..supervisor.replicaparts import Transition
from ..text import plural
from . import privilege
from .revisions import (
    Revision,
    RevisionLog,
    Write,
    forgetting_scaled,
    recording,
    setting_scaled,
    spec_table,
    unrecording,
)
from .stopmarks import Place, StopMark, StopMarks
from .store import StateStore
from .storeschema import StoreError
from .storewriter import StoreWriter
from .tenantbinds import env_refusal

Report = Callable[..., None]  # (text, priority=6): a line of the daemon's own log


class Fleet:
    def __init__(self, parts: Parts, store: StateStore, writer: StoreWriter,
                 revisions: RevisionLog, config_dir: Path, report: Report) -> None:
        self.agents = parts.agents
        self.tools = parts.tools
        self.quotas = parts.quotas
        self.elastic = parts.elastic
        self.tasks = parts.tasks
        self.tuning = parts.tuning
        self.store = store
        self.writer = writer
        self.revisions = revisions
        self.config_dir = config_dir
        self.report = report
        self.stops = StopMarks(store.db, lambda write, kind: writer.submit(write, kind))
        parts.stream.subscribe(self.stops.on_transition, Transition)
        self.gateway = GatewaySettings()  # the config's, which network = "gateway" needs
        self.from_config: set[str] = set()
        # each config-declared agent's replicas in the file (before a kept `corral scale`)
        self.declared_replicas: dict[str, int] = {}
        # agents a change is under way for: name -> [lock, changes holding or awaiting it]
        self._changing: dict[str, tuple[asyncio.Lock, list[int]]] = {}

    # -- the unit of work -------------------------------------------------------------------
    async def _unit(self, writes: list[Write], unchanged: str,
                    act: Callable[[], Awaitable[None]],
                    undo: Callable[[], list[Write]]) -> None:
        """Commit `writes`, then `act`; when the act fails, commit what `undo()` gives and
        say in the error whether that could be done. A database that cannot be written
        refuses the change, `unchanged` saying so."""
        await self.store.commit_or_refuse(writes, unchanged)
        try:
            await act()
        except UnreadyKept:
            raise  # the agent runs what was recorded
        except SupervisorError as exc:
            try:
                await self.store.commit(undo())
            except StoreError as undo_exc:
                text = (f"its record could not be taken back ({undo_exc}): the next daemon "
                        "starts what was recorded")
                self.report(text, priority=3)
                exc.message += f"; {text}"
            raise

    async def _revise(self, name: str, spec: AgentSpec, who: str, why: str | None,
                      writes: list[Write], unchanged: str,
                      act: Callable[[], Awaitable[None]]) -> list[Revision]:
        """A change of the agent to `spec` as a `_unit`: its revision recorded with `writes`
        and taken back with them (its kept scale or runtime table as they are now); told."""
        made: list[Revision] = []
        undo = self._as_kept_now(name)
        await self._unit([*writes, recording(spec, who, why, made, self.revisions.kept)],
                         unchanged, act, lambda: [*undo, *map(unrecording, made)])
        self.told(made)
        return made

    @contextlib.asynccontextmanager
    async def changing(self, names: Iterable[str]) -> AsyncIterator[None]:
        """While a change of these agents records, then acts: another of any waits its turn."""
        waiting: list[str] = []
        acquired: list[asyncio.Lock] = []
        try:
            for name in sorted(set(names)):  # in order: two changes never deadlock
                lock, users = self._changing.setdefault(name, (asyncio.Lock(), [0]))
                users[0] += 1
                waiting.append(name)
                await lock.acquire()
                acquired.append(lock)
            yield
        finally:
            for lock in acquired:
                lock.release()
            for name in waiting:
                users = self._changing[name][1]
                users[0] -= 1
                if not users[0]:
                    del self._changing[name]

    def _as_kept_now(self, name: str) -> list[Write]:
        """The writes that put back the agent's kept scale, or runtime table, as it is now."""
        if name in self.from_config:
            held = self.tenant_of(name)
            was = self.revisions.scaled({name: held}).get(name)
            return [setting_scaled(name, *was, held) if was else forgetting_scaled(name)]
        table = self.store.runtime_agents().get(name)
        return [StateStore.saving_runtime_agent(name, table) if table is not None
                else StateStore.forgetting_runtime_agent(name)]

    # -- commands ---------------------------------------------------------------------------
    def _specs(self, tables: dict[str, dict[str, Any]], what: str, who: str, *,
               check: bool, tenant: str | None) -> dict[str, AgentSpec]:
        """The specs of runtime [agents.NAME] tables: held to a tenant's caller's tenant,
        commands checked, sandboxes possible; INVALID_PARAMS (or FORBIDDEN) otherwise."""
        with jsonrpc.invalid_params(ConfigError):
            for name, t in tables.items():
                if redact.deeper_than(t, redact.MAX_DEPTH):
                    raise ConfigError(f"{what}: agents.{name}: tables and lists nested more "
                                      f"than {redact.MAX_DEPTH} deep")
            specs = parse_agents({"agents": tables}, what)
            for name, spec in specs.items():
                self.fill_cwd(spec)
                self.held_to(spec, who, tenant)
                why = check_command(spec) if check else None
                if why:
                    raise ConfigError(f"{what}: agents.{name}.command: {why} "
                                      f"(--no-check to {what.split('.')[-1]} it anyway)")
                problem = isolation_problem(spec, self.gateway,
                                            self.quotas.specs.get(spec.tenant))
                if problem:
                    raise ConfigError(f"{what}: agents.{name}.{problem}")
            dynamic = self.tuning.dynamic_users
            check_sandboxes(specs, self.tuning.sandbox_program, what,
                            self.tuning.protected_paths, self.quotas.specs,
                            dynamic.uids if dynamic is not None else None)
        return specs

    async def update(self, name: str, changes: dict[str, Any], who: str, *, check: bool,
                     tenant: str | None = None) -> str:
        """Change a runtime agent in place: `changes` merged into its table as a JSON merge
        patch, then rolled out as a reload rolls one; what it changed."""
        if name in self.from_config:
            raise RpcError(jsonrpc.CONFLICT, f"agent {name} is declared in the config file: "
                                             "change it there and `corral reload`")
        if not changes:
            raise RpcError(jsonrpc.INVALID_PARAMS, "nothing to change")
        if redact.deeper_than(changes, redact.MAX_DEPTH):  # before the merge recurses
            raise RpcError(jsonrpc.INVALID_PARAMS, f"agents.update: agents.{name}: tables "
                           f"and lists nested more than {redact.MAX_DEPTH} deep")
        async with self.changing([name]):
            agent = self.agents.agent(name)
            if agent.spec.placement == "cluster":
                raise RpcError(jsonrpc.CONFLICT, f"agent {name} is a cluster agent: change "
                                                 "it with `corral add` of its new table")
            table = merge_patch(self.store.runtime_agents().get(name, {}), changes)
            spec = self._specs({name: table}, AgentsUpdate.declared.name, who, check=check,
                               tenant=tenant)[name]
            if spec.tenant != agent.spec.tenant:
                # another tenant's agent is another agent: its queued tasks, log, budget
                # and sessions are not the new tenant's to take over
                raise RpcError(jsonrpc.CONFLICT, f"agents.update: agents.{name}.tenant: "
                               f"{name} is tenant {agent.spec.tenant}'s and stays so; "
                               f"remove it and add an agent of tenant {spec.tenant}; "
                               "nothing changed")
            if spec.replicas != len(agent.replicas) and not spec.elastic:
                self.agents.check_tenants({name: (spec.tenant, spec.replicas)},
                                       f"updating {name}")
            made = await self._revise(name, spec, who, None,
                                      [StateStore.saving_runtime_agent(name, table)],
                                      f"{name} was not updated",
                                      lambda: self.apply_spec(name, spec))
        return made[0].change if made else "no change"

    async def add(self, tables: dict[str, dict[str, Any]], who: str, *, check: bool,
                  tenant: str | None = None) -> list[str]:
        """Add agents from [agents.NAME] tables, all or nothing; they outlive the daemon.
        `tenant`: a tenant's caller's, whose tables are held to it (privilege.py)."""
        if not tables:
            raise RpcError(jsonrpc.INVALID_PARAMS, "no [agents.NAME] tables to add")
        specs = self._specs(tables, AgentsAdd.declared.name, who, check=check, tenant=tenant)
        made: dict[str, list[Revision]] = {n: [] for n in specs}

        async def act() -> None:
            added: list[str] = []
            try:
                for spec in specs.values():
                    self.agents.add(spec)
                    added.append(spec.name)
            except SupervisorError:  # the fleet grew meanwhile: all or nothing
                await asyncio.gather(*(self.agents.remove(n) for n in added))
                raise

        async with self.changing(specs):
            taken = [n for n in specs if n in self.agents]
            if taken:
                raise RpcError(jsonrpc.CONFLICT, f"agent {taken[0]} already exists")
            self.agents.check_fleet({n: s.replicas for n, s in specs.items()}, "adding them")
            # the whole batch against its tenants' quotas, before any is added: one by one,
            # the first would count against the second and the refusal misstate the use
            self.agents.check_tenants({n: (s.tenant, s.replicas) for n, s in specs.items()},
                                   f"adding {', '.join(specs)}")
            await self._unit(
                [w for n, spec in specs.items() for w in (
                    StateStore.saving_runtime_agent(n, tables[n]),
                    recording(spec, who, None, made[n], self.revisions.kept))],
                "nothing was added", act,
                lambda: [w for n in specs for w in (
                    StateStore.forgetting_runtime_agent(n),
                    *map(unrecording, made[n]))])
        self.told(r for revs in made.values() for r in revs)
        return sorted(specs)

    async def remove(self, names: list[str]) -> list[str]:
        for n in names:
            self.agents.agent(n)

        async def act() -> None:
            await asyncio.gather(*(self.agents.remove(n) for n in names))

        async with self.changing(names):
            # still there after our turn came; whose each is, whose sessions end with it
            owners = {n: self.agents.agent(n).spec.tenant for n in names}
            await self._unit([w for n in names for w in (
                StateStore.forgetting_runtime_agent(n), forgetting_scaled(n),
                StopMarks.forgetting(n))],
                "nothing was removed", act, list)
            for n in names:
                self.stops.forgotten(n)
            await self.tasks.sessions.end_agents(owners)
        self.from_config.difference_update(names)
        return names

    async def scale(self, name: str, replicas: int, who: str) -> None:
        async with self.changing([name]):
            agent = self.agents.agent(name)
            why = scale_refusal(agent.spec, replicas)
            if why:  # the agent's state (its autoscale bounds), not the request's shape
                raise RpcError(jsonrpc.CONFLICT, why)
            self.agents.check_fleet({name: replicas}, f"{plural(replicas, 'replica')} of {name}")
            # recorded before any replica starts or stops
            writes: list[Write] = []
            if name in self.from_config:
                writes.append(setting_scaled(name, replicas,
                                             self.declared_replicas.get(name, 1),
                                             agent.spec.tenant))
            else:
                table = self.store.runtime_agents().get(name)
                if table is not None:
                    writes.append(StateStore.saving_runtime_agent(
                        name, {**table, "replicas": replicas}))
            # the replicas that go take their stops by hand with them
            writes.append(StopMarks.forgetting(name, replicas))
            # the act refuses when another agent's change grew the fleet past max_replicas
            await self._revise(name, msgspec.structs.replace(agent.spec, replicas=replicas),
                               who, None, writes, f"{name} was not scaled",
                               lambda: self.agents.scale(name, replicas))
            self.stops.forgotten(name, replicas)

    def stop_mark(self, name: str, index: int) -> StopMark | None:
        """Who stopped replica `index` of `name` by hand, if one did (a handler asks the
        fleet, not its parts: tests/test_declarations.py)."""
        return self.stops.of(name, index)

    async def stopping(self, places: list[Place], who: str, when: float) -> None:
        """Before an operator's stop of these replicas: its marks committed, so that no
        later daemon starts them. Never refused for want of the database (an operator's
        tool in an outage): its marks then wait in memory."""
        mark = StopMark(who, when)
        await self._keep(StopMarks.marking(places, mark))
        self.stops.marked(places, mark)

    async def starting(self, places: list[Place]) -> None:
        """Before an operator's start of these replicas: their marks taken away."""
        places = [p for p in places if p in self.stops.marks]
        if places:
            await self._keep(StopMarks.unmarking(places))
            self.stops.unmarked(places)

    async def _keep(self, write: Write) -> None:
        try:
            await self.store.commit([write])
        except StoreError:  # (the writer says so in the daemon's log, once each way)
            self.writer.submit(write, "stop mark")

    async def rollback(self, name: str, revision: int | None, who: str,
                       release: str | None = None, *, tenant: str | None = None
                       ) -> tuple[int, str]:
        """Back to an earlier spec revision (default: the one before the current; with
        `release`, the newest that ran it); the revision restored, and what that changed.
        `tenant`: as `add`'s; the releases the agent ran before may be restored."""
        async with self.changing([name]):
            held = self.tenant_of(name)
            kept = {r.revision: r for r in self.revisions.history(name, held)}
            if release is not None:  # the newest revision that ran it (its directory's name)
                ran = [n for n, r in kept.items() if (path := r.spec.get("release"))
                       and os.path.basename(path) == release]
                if not ran:
                    raise RpcError(jsonrpc.NOT_FOUND, f"no revision of {name} ran release "
                                   f"{release} (see `corral releases {name}`)")
                revision = max(ran)
            target = restored(kept, revision, name, f"corral history {name}")
            rev = kept[target]
            with jsonrpc.invalid_params(ConfigError):
                spec = parse_agents({"agents": {name: rev.spec}}, f"revision {target}")[name]
            self.fill_cwd(spec)
            self.held_to(spec, who, tenant, releases={
                r.spec.get("release") for r in kept.values()} if tenant is not None else ())
            if spec.release is not None and not os.path.isfile(
                    os.path.join(spec.release, READY)):
                raise RpcError(jsonrpc.NOT_FOUND, f"revision {target} of {name} runs release "
                               f"{os.path.basename(spec.release)}, which is no longer kept "
                               f"(keep_releases = {spec.keep_releases}; see `corral releases "
                               f"{name}`): deploy it again")
            if name in self.from_config:
                # lasts until the config file changes this agent (a reload applies it)
                writes = [setting_scaled(name, spec.replicas,
                                         self.declared_replicas.get(name, 1), held)]
            else:
                writes = [StateStore.saving_runtime_agent(name, rev.spec)]
            made = await self._revise(name, spec, who, rolled_back(target), writes,
                                      f"{name} was not rolled back",
                                      lambda: self.apply_spec(name, spec))
        return target, change_of(made[0].change, target) if made else "no change"

    # -- the config file --------------------------------------------------------------------
    def start(self, cfg: Config) -> None:
        """Start-up: the config's tool servers and agents, then the runtime agents."""
        for sspec in cfg.mcp_servers.values():
            self.tools.add_server(sspec)
        self._apply_scaled(cfg.agents)
        for name, spec in cfg.agents.items():
            try:
                self._add(spec)
            except SupervisorError as exc:  # e.g. over max_replicas: the others still run
                self.report(f"could not start agent {name}: {exc.message}")
                continue
            self.from_config.add(name)
            self.record(spec, "config file")
        self._restore_runtime_agents()

    def _restore_runtime_agents(self) -> None:
        for name, table in self.store.runtime_agents().items():
            problem = name_problem(name)
            if problem:  # stored by an older corral, before names were checked
                self.report(f"skipped runtime agent {shown(name)} from the state "
                            f"database: {problem}")
                continue
            if name in self.agents:
                continue
            try:
                spec = parse_agents({"agents": {name: table}}, "state database")[name]
                why = self._restored_refusal(spec)
                if why is not None:
                    self.report(f"runtime agent {name} not restored: {why}", priority=3)
                    continue
                self._add(spec)
                self.record(spec, "corral add (restored)")
            except Exception as exc:  # a restore is never fatal: the others still run
                self.report(f"could not restore runtime agent {name}: {exc}", priority=4)

    def _restored_refusal(self, spec: AgentSpec) -> str | None:
        """Why a tenant's runtime agent, stored by an older corral, is not started: its
        env names what would choose its sandbox's binds (issue 88: a tenant's caller's
        CORRAL_MCP_SOCKET or PYTHONPATH, accepted before the rule was), or None."""
        if spec.tenant == DEFAULT_TENANT:
            return None
        self.fill_cwd(spec)
        assert spec.cwd is not None  # (fill_cwd's)
        why = env_refusal(spec, os.path.realpath(spec.cwd))
        if why is None:
            return None
        return (f"agents.{spec.name}.env: {why}; stored before corral refused it of tenant "
                f"{spec.tenant}'s agents: remove it and add it again without (docs/tenants.md)")

    def _apply_scaled(self, agents: dict[str, AgentSpec]) -> None:
        """A `corral scale` of a config-declared agent outlives daemon restarts and
        reloads, until the config file itself changes the agent's replica count."""
        self.declared_replicas = {n: s.replicas for n, s in agents.items()}
        held = {n: s.tenant for n, s in agents.items()}
        for name, (replicas, declared) in self.revisions.scaled(held).items():
            spec = agents.get(name)
            if spec is None:
                continue
            if spec.replicas == declared:
                a = spec.autoscale
                # a kept scale of an autoscaled agent is where it starts, within bounds
                spec.replicas = replicas if a is None else a.within(replicas)
            else:
                # the file says otherwise now: the file wins (kept while the database
                # cannot be written; a restart would decide the same from the file)
                self.writer.submit(forgetting_scaled(name), "kept scale")

    async def reload(self, cfg: Config, who: str) -> ReloadResult:
        """Apply the config file's difference, changed agents without downtime."""
        # every agent's turn, since a reload may add, remove, scale or change any of them
        async with self.changing(set(cfg.agents) | set(self.agents)):
            agents, failed = await self._reload_agents(cfg, who)
        # calls in flight to a removed or changed tool server fail with the reason
        servers = diff({n: e.spec for n, e in self.tools.servers.items()},
                       cfg.mcp_servers)
        # new roots or log level are told to the running server (roots/list_changed)
        restart = [n for n in servers["changed"]
                   if not self.tools.retune(cfg.mcp_servers[n])]
        await asyncio.gather(*(self.tools.remove(n)
                               for n in servers["removed"] + restart))
        for n in servers["added"] + restart:
            self.tools.add_server(cfg.mcp_servers[n])
        self.tuning.heartbeat_interval = cfg.supervisor.heartbeat_interval
        self.tuning.heartbeat_timeout = cfg.supervisor.heartbeat_timeout
        result = ReloadResult(added=agents["added"], removed=agents["removed"],
                              changed=agents["changed"], unchanged=agents["unchanged"],
                              failed=failed, mcp_servers=servers)
        said = [f"{kind} {change} {', '.join(names[change])}"
                for kind, names in (("agents", agents), ("MCP servers", servers))
                for change in ("added", "removed", "changed") if names[change]]
        self.report(f"reloaded: {'; '.join(said) or 'nothing changed'}")
        return result

    async def _reload_agents(self, cfg: Config, who: str
                             ) -> tuple[dict[str, list[str]], dict[str, str]]:
        """A reload's changes of the agents (their turns held): the diff applied, and the
        agents whose change failed (name -> why)."""
        self._apply_scaled(cfg.agents)
        agents = diff({n: self.agents[n].spec for n in self.from_config
                       if n in self.agents}, cfg.agents)
        fresh = agents["added"]
        # an agent the file gives another tenant is another agent: removed, then added
        moved = [n for n in agents["changed"]
                 if self.agents[n].spec.tenant != cfg.agents[n].tenant]
        if moved:
            agents["changed"] = [n for n in agents["changed"] if n not in moved]
            agents["removed"] = sorted([*agents["removed"], *moved])
            agents["added"] = sorted([*fresh, *moved])
        for n in fresh:
            if n in self.agents:  # added at runtime before, declared now: the file wins
                await self.agents.remove(n)
                # kept while the database cannot be written; a restart adds the file's
                # agent first and skips the stored one of the same name anyway
                self.writer.submit(StateStore.forgetting_runtime_agent(n), "runtime agent")
        owners = {n: self.agents[n].spec.tenant for n in agents["removed"]}
        await asyncio.gather(*(self.agents.remove(n) for n in agents["removed"]))
        for n in agents["removed"]:  # (one added again later starts as any new one)
            if self.stops.held(n):
                self.stops.forgotten(n)
                self.writer.submit(StopMarks.forgetting(n), "stop mark")
        await self.tasks.sessions.end_agents(owners)
        for n in agents["added"]:
            self._add(cfg.agents[n])
            self.record(cfg.agents[n], who)
        failed: dict[str, str] = {}

        async def change(name: str) -> None:
            spec = cfg.agents[name]
            self.fill_cwd(spec)
            try:
                await self.apply_spec(name, spec)
            except SupervisorError as exc:
                failed[name] = exc.message
                self.report(f"reload: {exc.message}", priority=4)
                if not isinstance(exc, UnreadyKept):
                    return
            self.record(spec, who)

        await asyncio.gather(*(change(n) for n in agents["changed"]))
        self.from_config = set(cfg.agents)
        return agents, failed

    # -- helpers ----------------------------------------------------------------------------
    async def apply_spec(self, name: str, spec: AgentSpec) -> None:
        """Bring a running agent to `spec` without downtime: a change of `replicas` alone
        scales; any other change replaces replicas one at a time (Agent.roll), then
        scales. Raises SupervisorError when a new process does not become ready."""
        agent = self.agents.agent(name)
        want = spec.replicas  # before the roll, which gives `spec` the running count
        old, new = spec_table(agent.spec), spec_table(spec)
        old.pop("replicas", None)
        new.pop("replicas", None)
        if old != new:
            if old.get("release") != new.get("release"):
                # another release (a rollback of a package): all at once, seen healthy
                # before it takes tasks, never two releases serving together
                await agent.switch(spec)
            else:
                await agent.roll(spec, start_stopped=False)
        if spec.elastic:
            # the count is the autoscaler's: kept, brought within new bounds only
            have = len(agent.replicas)
            a = spec.autoscale
            want = have if a is None else a.within(have)
            if not have and (a is None or not a.min_replicas):
                want = 0  # asleep: the next task wakes it
        await agent.scale(want)
        self.elastic.track(agent)  # autoscale added, changed or taken away
        # its budgets may be others now: tasks a budget held are judged again at once,
        # not when the old window would have let them go (a day, for a day's budget)
        self.tasks.pump(name)

    def fill_cwd(self, spec: AgentSpec) -> None:
        """An agent with no cwd runs in its tenant's dir, else where the config file is."""
        if spec.cwd is None:
            spec.cwd = default_cwd(self.quotas.specs.get(spec.tenant), str(self.config_dir))

    def held_to(self, spec: AgentSpec, who: str, tenant: str | None, *,
                releases: Collection[str | None] = ()) -> None:
        """A table of tenant `tenant`'s caller `who` (None: the operator's, not held)
        names who runs what, where as its tenant does, else FORBIDDEN (privilege.py)."""
        if tenant is not None:
            privilege.check(spec, who, tenant, self.quotas.specs.get(tenant),
                            default_cwd(self.quotas.specs.get(tenant), str(self.config_dir)),
                            {r for r in releases if r is not None})

    def fill_paths(self, spec: AgentSpec) -> None:
        """A cluster agent's paths, as its table gives them (absent or relative), are
        this node's: under where its config file is, as a local agent's would be."""
        spec.cwd = str((self.config_dir / (spec.cwd or "")).resolve())
        spec.sandbox_paths = [str((self.config_dir / p).resolve())
                              for p in spec.sandbox_paths]
        spec.read_paths = [str((self.config_dir / p).resolve()) for p in spec.read_paths]
        spec.write_paths = [str((self.config_dir / p).resolve()) for p in spec.write_paths]

    def _add(self, spec: AgentSpec) -> None:
        """An agent of the config or restored, its replicas stopped by hand held down."""
        self.fill_cwd(spec)
        self.agents.add(spec, held=self.stops.held(spec.name))

    def origin(self, name: str, config_path: Path) -> str:
        return f"file {config_path}" if name in self.from_config else "runtime"

    def tenant_of(self, name: str) -> str:
        """Whose revisions are the agent's (NoSuchAgent when there is none)."""
        return self.agents.agent(name).spec.tenant

    def revision_of(self, name: str) -> int | None:
        agent = self.agents.get(name)
        last = self.revisions.latest(name, agent.spec.tenant) if agent is not None else None
        return last.revision if last is not None else None

    def record(self, spec: AgentSpec, who: str) -> None:
        """A new spec revision of the agent, when its spec changed, through the store's
        writer: for a change the config file made, itself what a restart reads."""
        out: list[Revision] = []
        self.writer.submit(recording(spec, who, None, out, self.revisions.kept),
                           "spec revision", lambda: self.told(out))

    def told(self, revisions: Iterable[Revision]) -> None:
        for rev in revisions:
            self.report(f"{rev.agent}: revision {rev.revision} by {rev.who}: {rev.change}")


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: `patch` applied to `target` (null takes a key away)."""
    if not isinstance(patch, dict):
        return patch
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def diff(old: dict[str, Any], new: dict[str, Any]) -> dict[str, list[str]]:
    """Names added, removed, changed and unchanged between two sets of specs."""
    both = set(old) & set(new)
    changed = sorted(n for n in both if msgspec.json.encode(old[n]) != msgspec.json.encode(new[n]))
    return {"added": sorted(set(new) - set(old)), "removed": sorted(set(old) - set(new)),
            "changed": changed, "unchanged": sorted(both - set(changed))}
