"""Agent packages as a service of the daemon: deploy, releases, and what start-up finds
(docs/packages.md, "The switch"). A deploy builds (or finds) the release, then switches
the agent to it under the agent's turn (Fleet.changing), the switch recorded and a ROLLOUT
marker written before it is made, so that the next daemon after one that died mid-switch
puts the agent's table back before it starts any agent.
"""

from __future__ import annotations

import asyncio
import functools
import os
import shutil
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ... import jsonrpc
from ... import methods as m
from ...jsonrpc import RpcError
from ...supervisor.config import DEFAULT_TENANT, AgentSpec, ConfigError, PackagesSettings
from ...supervisor.configload import parse_agents
from ...supervisor.errors import NoSuchAgent, SupervisorError
from ...supervisor.parts import Parts
from ...supervisor.process import resolve_user
from ...supervisor.release import SOURCE, VENV
from ...supervisor.sandbox import out_of_reach
from ...text import plural
from ..fleet import Fleet
from ..revisions import Revision, RevisionLog, recording, spec_table, unrecording
from ..store import StateStore
from ..storeschema import StoreError
from .releases import CACHE, Releases, Rollout, remove_tree

if TYPE_CHECKING:
    from .build import Builder, Plan

# seconds the daemon's stop waits for a cancelled build to clean up after itself: within
# the teardown's own step deadline (teardown.TEARDOWN_STEP), which would skip it
BUILD_STOP = 8.0

Say = Callable[[str], None]
Report = Callable[..., None]


class Packages:
    def __init__(self, settings: PackagesSettings, root: Path, parts: Parts,
                 store: StateStore, revisions: RevisionLog, fleet: Fleet,
                 report: Report, refuse: Callable[[str], Awaitable[None]] | None = None
                 ) -> None:
        """`refuse`: with [cluster], raises RpcError for a name that is the cluster's
        agent (the node's)."""
        self.settings = settings
        self.releases = Releases(root)
        self.agents = parts.agents
        self.quotas = parts.quotas
        self.tuning = parts.tuning  # where the worker SDK is: set at start
        self.zygotes = parts.zygotes
        self.store = store
        self.revisions = revisions
        self.fleet = fleet
        self.report = report
        self.refuse = refuse
        self._sources: dict[str, str | None] = {}
        # the deploys in their plan or build: the daemon's stop ends them and waits for
        # what they leave to be removed (a build's processes killed, its directory gone)
        self._building: set[asyncio.Task[Any]] = set()
        self._cache = Path(settings.cache_dir) if settings.cache_dir else root / CACHE
        self._containment = parts.containment
        self._sdk: str | None = None

    @functools.cached_property
    def builder(self) -> Builder:
        """Made at the first deploy or status that needs it: most daemons never deploy,
        and the build's modules were part of every boot's imports."""
        from .build import Builder

        return Builder(self.releases, self.settings, self._containment, self._cache)

    # -- start-up ------------------------------------------------------------------------
    async def start(self) -> None:
        """Before any agent starts: the directory, what interrupted builds left (removed),
        and interrupted switches (undone). The SDK every release imports is installed at
        the first release's start (`sdk`)."""
        releases = self.releases

        def prepare() -> list[Path]:
            releases.prepare()
            gone = list(releases.incomplete())
            for path in gone:
                remove_tree(path)
            return gone

        try:
            gone = await asyncio.to_thread(prepare)
        except OSError as exc:
            raise StoreError(f"packages directory {releases.root}: {exc.strerror or exc}"
                             ) from None
        self.tuning.release_sdk = self.sdk
        for path in gone:
            self.report(f"removed {path}: its build was interrupted (no READY)", priority=4)
        for name, rollout in (await asyncio.to_thread(releases.rollouts)).items():
            await self._undo_rollout(name, rollout)

    def sdk(self) -> str:
        """The copy of the worker SDK a release's process imports, installed at its first
        ask (a release's start: OSError fails that start): a daemon that runs no release
        copied it at every start (decision 1700)."""
        if self._sdk is None:
            self._sdk = str(self.releases.install_sdk(Path(__file__).resolve().parents[2]))
        return self._sdk

    async def _undo_rollout(self, name: str, rollout: Rollout) -> None:
        was = (f"release {os.path.basename(rollout.previous['release'])}"
               if rollout.previous and rollout.previous.get("release") else
               "its table from before" if rollout.previous else "no agent")
        writes = []
        if rollout.previous is None:
            writes.append(StateStore.forgetting_runtime_agent(name))
        else:
            writes.append(StateStore.saving_runtime_agent(name, rollout.previous))
            try:
                spec = parse_agents({"agents": {name: rollout.previous}}, "ROLLOUT")[name]
            except ConfigError:
                pass  # its table is put back all the same, unrecorded
            else:
                writes.append(recording(spec, "daemon start-up", f"rollout to release "
                                        f"{rollout.release} interrupted by a daemon "
                                        f"restart: back to {was}", None,
                                        self.revisions.kept))
        await self.store.commit(writes)  # StoreError: the daemon does not start
        await asyncio.to_thread(self.releases.end_rollout, name)
        self.report(f"{name}: the rollout to release {rollout.release} (by {rollout.who}) "
                    f"was interrupted by a daemon restart; back to {was}", priority=4)

    # -- deploy --------------------------------------------------------------------------
    async def deploy(self, path: str, name: str | None, who: str, say: Say
                     ) -> m.DeployResult:
        from . import checked
        from .build import BuildError
        from .manifest import read_manifest

        with jsonrpc.invalid_params(ConfigError):
            # a thread no cancelled deploy or daemon exit waits for (checked.in_thread)
            manifest = await checked.in_thread(lambda _: read_manifest(path, name))
        name = manifest.name
        if name in self.fleet.from_config:  # before a build: the switch would refuse
            raise _declared(name)
        self._check_owner(name, manifest.table)
        await asyncio.to_thread(self._check_reach, name, manifest.table)
        if self.refuse is not None:
            await self.refuse(name)
        me = asyncio.current_task()
        if me is not None:
            self._building.add(me)
        try:
            plan = await self.builder.plan(manifest)
            release, built = await self.builder.build(name, plan, who, say)
        except BuildError as exc:
            raise RpcError(jsonrpc.REFUSED, f"deploy of {name}: {exc}; nothing changed"
                           ) from None
        finally:
            if me is not None:
                self._building.discard(me)
        # from here the deploy is the daemon's: a client that goes away (Ctrl-C) does not
        # stop a switch half-way (its record made, its processes started)
        switch = asyncio.ensure_future(self._in_turn(name, plan, release, built, who, say))
        switch.add_done_callback(self._told)
        return await asyncio.shield(switch)

    async def close(self) -> None:
        """A deploy still planning or building is cancelled and its end awaited here: the
        loop's last cancellation would cut its cleanup short."""
        building = list(self._building)
        for task in building:
            task.cancel()
        if building:
            await asyncio.wait(building, timeout=BUILD_STOP)

    def _told(self, switch: asyncio.Future[m.DeployResult]) -> None:
        if switch.cancelled():
            return
        exc = switch.exception()
        if exc is not None:
            why = exc.message if isinstance(exc, RpcError) else f"{type(exc).__name__}: {exc}"
            self.report(why, priority=4)

    async def _in_turn(self, name: str, plan: Plan, release: Path, built: bool, who: str,
                       say: Say) -> m.DeployResult:
        async with self.fleet.changing([name]):
            return await self._switch(name, plan, release, built, who, say)

    def _spec(self, name: str, plan: Plan, release: Path) -> tuple[dict[str, Any], AgentSpec]:
        table = dict(plan.manifest.table)
        table["release"] = str(release)
        if plan.manifest.version is not None:
            table["version"] = plan.manifest.version
        table["cwd"] = str(release / SOURCE / table.get("cwd", ""))
        running = self.agents.get(name)
        if running is not None:  # the count `corral scale` set is kept
            table["replicas"] = len(running.replicas)
        with jsonrpc.invalid_params(ConfigError):
            spec = parse_agents({"agents": {name: table}}, "deploy")[name]
        program = spec.argv()[0]
        search = os.pathsep.join([str(release / VENV / "bin"),
                                  spec.env.get("PATH", os.environ.get("PATH", os.defpath))])
        found = (shutil.which(program, path=search) if "/" not in program else
                 program if os.access(os.path.join(spec.cwd or "", program), os.X_OK)
                 else None)
        if found is None:
            raise RpcError(jsonrpc.INVALID_PARAMS,
                           f"deploy of {name}: command: {program}: not an executable in "
                           f"the release's venv, its source or on PATH; nothing changed")
        return table, spec

    def _check_owner(self, name: str, table: dict[str, Any]) -> None:
        """A deploy never hands an agent to another tenant: the agent of that name is
        its tenant's, and the manifest must name the same one."""
        agent = self.agents.get(name)
        if agent is None:
            return
        owner, wanted = agent.spec.tenant, table.get("tenant", DEFAULT_TENANT)
        if owner != wanted:
            raise RpcError(jsonrpc.CONFLICT, f"agent {name} is tenant {owner}'s: a deploy "
                           f"of a package for tenant {wanted} would take it over; deploy "
                           f"the package under another name (--name), or name its tenant "
                           f"in the manifest (tenant = \"{owner}\"); nothing changed")

    def _check_reach(self, name: str, table: dict[str, Any]) -> None:
        """An agent that runs as another user must reach its release (and the SDK's
        copy): [packages] dir under the 0700 state directory is out of its reach."""
        tenant = self.quotas.specs.get(table.get("tenant", DEFAULT_TENANT))
        user = table.get("user") or (tenant.user if tenant is not None else None)
        if not isinstance(user, str):
            return
        group = table.get("group")
        try:
            uid, gid = resolve_user(user, group if isinstance(group, str) else None)
        except ConfigError:
            return  # the spawn refuses it, in its own words
        if uid is None or gid is None:
            return
        blocked = out_of_reach(str(self.releases.root), uid, gid)
        if blocked is not None:
            raise RpcError(jsonrpc.REFUSED, f"deploy of {name}: it runs as user {user}, "
                           f"who cannot pass through {blocked} to its release in "
                           f"{self.releases.root}: set [packages] dir to a directory every "
                           "agent's user may pass through (docs/packages.md); nothing "
                           "changed")

    async def _switch(self, name: str, plan: Plan, release: Path, built: bool, who: str,
                      say: Say) -> m.DeployResult:
        self._check_owner(name, plan.manifest.table)  # one added during the build
        table, spec = self._spec(name, plan, release)
        agent = self.agents.get(name)
        if agent is not None and self.store.runtime_agents().get(name) is None:
            raise _declared(name)  # by a reload during the build
        previous = agent.spec.release if agent is not None else None
        result = m.DeployResult(
            name=name, release=plan.release, version=plan.manifest.version, built=built,
            changed=False, previous=os.path.basename(previous) if previous else None,
            revision=self.fleet.revision_of(name), removed=[])
        if agent is not None and spec_table(agent.spec) == spec_table(spec):
            say(f"release {plan.release} is {name}'s already: nothing to do")
            return result
        before = self.store.runtime_agents().get(name)
        made: list[Revision] = []
        version = f" (version {plan.manifest.version})" if plan.manifest.version else ""
        writes = [StateStore.saving_runtime_agent(name, table),
                  recording(spec, who, "deployed", made, self.revisions.kept)]
        undo = [StateStore.saving_runtime_agent(name, before) if before is not None
                else StateStore.forgetting_runtime_agent(name)]
        if agent is None:
            self.agents.check_fleet({name: spec.replicas}, f"agent {name}")
        try:
            await asyncio.to_thread(self.releases.begin_rollout, name, Rollout(
                release=plan.release, previous=before, time=time.time(), who=who))
        except OSError as exc:
            raise RpcError(jsonrpc.REFUSED, f"deploy of {name}: cannot write its rollout "
                           f"marker ({exc.strerror}): nothing changed") from None
        keep_marker = False
        try:
            await self.store.commit_or_refuse(writes, "nothing was deployed")
            n = plural(spec.replicas, "process", "processes")
            say(f"starting {n} of release {plan.release} beside the running ones"
                if agent is not None else f"starting {n} of release {plan.release}")
            try:
                await self._act(name, spec, agent)
            except SupervisorError as exc:
                try:
                    await self.store.commit([*undo, *map(unrecording, made)])
                except StoreError as undo_exc:
                    keep_marker = True  # the next daemon takes it back
                    exc.message += (f"; its record could not be taken back ({undo_exc}): "
                                    "the next daemon does it")
                raise RpcError(jsonrpc.REFUSED, f"deploy of {name}: release "
                               f"{plan.release} was not taken: {exc.message}") from None
        finally:
            if not keep_marker:
                await asyncio.shield(asyncio.to_thread(self.releases.end_rollout, name))
        self.fleet.told(made)
        say(f"{name} runs release {plan.release}{version}")
        result.changed = True
        result.revision = self.fleet.revision_of(name)
        result.removed = await self._prune(name, spec)
        return result

    async def _act(self, name: str, spec: AgentSpec, agent: Any) -> None:
        if agent is not None:
            await agent.switch(spec)
            return
        # a first deploy: its processes are the only ones, seen healthy all the same
        new = self.agents.add(spec)
        why = await self.agents.healthy(list(new.replicas), spec, spec.healthy_deadline)
        if why is not None:
            await self.agents.remove(name)
            raise SupervisorError(jsonrpc.REFUSED, f"a new process of {name} did not "
                                                   f"become ready: {why}; the agent was "
                                                   "not added")

    # -- keep_releases -------------------------------------------------------------------
    async def _prune(self, name: str, spec: AgentSpec) -> list[str]:
        """Past keep_releases, the releases least recently made current go (the current
        one never); zygotes of releases no agent runs are stopped."""
        used = {release: max(r.time for r in revs)
                for release, revs in self._by_release(name, spec.tenant).items()}
        current = os.path.basename(spec.release or "")
        kept = await asyncio.to_thread(self.releases.of, name)
        ready = [(p, info) for p, info, ok in kept if ok]
        ready.sort(key=lambda x: max(used.get(x[0].name, 0.0),
                                     x[1].built_at if x[1] else 0.0), reverse=True)
        gone = [p for i, (p, _) in enumerate(ready)
                if i >= spec.keep_releases and p.name != current]
        for p in gone:
            await asyncio.to_thread(remove_tree, p)
        if gone:
            self.report(f"{name}: removed {len(gone)} release(s) past keep_releases "
                        f"({spec.keep_releases}): {', '.join(p.name for p in gone)}")
        self.retire_zygotes()
        return [p.name for p in gone]

    def _by_release(self, name: str, tenant: str) -> dict[str, list[Revision]]:
        out: dict[str, list[Revision]] = {}
        for rev in self.revisions.history(name, tenant):
            if rev.release:
                out.setdefault(rev.release, []).append(rev)
        return out

    def retire_zygotes(self) -> None:
        running = {a.spec.release for a in self.agents.values() if a.spec.release}
        root = str(self.releases.root) + os.sep
        self.zygotes.retire(lambda key: key.interpreter.startswith(root) and not any(
            key.interpreter.startswith(r + os.sep) for r in running))

    # -- releases ------------------------------------------------------------------------
    async def list(self, name: str) -> m.ReleasesResult:
        agent = self.agents.get(name)
        kept = await asyncio.to_thread(self.releases.of, name)
        if agent is None and not kept:
            raise NoSuchAgent(name, self.agents, "and no releases of one")
        current = os.path.basename(agent.spec.release) if agent and agent.spec.release \
            else None
        revisions = {release: [r.revision for r in revs]
                     for release, revs in self._by_release(
                         name, agent.spec.tenant if agent else DEFAULT_TENANT).items()}
        entries = [m.ReleaseEntry(
            release=p.name, current=p.name == current, revisions=revisions.get(p.name, []),
            **{f: getattr(info, f) if info is not None else None for f in  # (no release.json)
               ("version", "built_at", "size_bytes", "python_version", "lock")})
            for p, info, ok in kept if ok]
        keep = (agent.spec if agent is not None else AgentSpec(command="-")).keep_releases
        return m.ReleasesResult(name=name, current=current, keep_releases=keep,
                                releases=entries)

    def source_of(self, release: str) -> str | None:
        if release not in self._sources:
            info = self.releases.info(Path(release))
            self._sources[release] = info.source if info is not None else None
        return self._sources[release]

    def status(self) -> dict[str, Any]:
        b = self.builder
        return {"dir": str(self.releases.root), "uv": b.uv, "cache": str(b.cache),
                "built": b.built, "reused": b.reused, "failed": b.failed,
                "building": b.building}


def _declared(name: str) -> RpcError:
    return RpcError(jsonrpc.CONFLICT, f"agent {name} is declared by the config file: "
                                      "deploy the package under another name (--name)")
