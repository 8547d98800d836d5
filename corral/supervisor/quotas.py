"""Tenants (docs/tenants.md): the quotas a group of agents shares, checked at admission;
nothing here stops what runs (a quota lowered below the use refuses the next admission).
It raises nothing itself (the caller wraps a refusal in its own error type), so it imports
neither the supervisor nor the task manager.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, NamedTuple

from .. import jsonrpc
from ..jsonrpc import RpcError
from ..ratelimit import TokenBucket
from ..views import TenantUse as TenantUse
from .config import DEFAULT_TENANT, MIB, TenantSpec
from .stream import Stream

if TYPE_CHECKING:
    from .config import McpServerSpec
    from .replica import Replica
    from .tasks.host import AgentLike

NO_QUOTAS = TenantSpec()
# the key of a group's shared Budget (a tenant's): agent names have no spaces
BUDGET_PREFIX = "tenant "
CPU_ROUNDS = 3  # heartbeat rounds a tenant is over max_cpu_percent before a restart


class QuotasChanged(NamedTuple):
    """The tenants' quotas changed (start-up, `tenants.set`, a reload): the tenants'
    cgroups are retuned, the task manager installs or takes away its per-task hooks."""


QUOTAS_CHANGED = QuotasChanged()


def retry_after(seconds: float) -> dict[str, float]:
    """A refusal's `data` when waiting helps: how long (HTTP's Retry-After, rounded up)."""
    return {"retry_after": round(seconds, 3)}


def tenant_queue_full(tenant: str, most: int, queued: int, agent: str) -> RpcError:
    """The refusal of a task past its tenant's max_queue, in every home's words."""
    return RpcError(jsonrpc.REFUSED, f"tenant {tenant}: max_queue {most} reached ({queued} "
                                     f"waiting); a task for {agent} needs 1 more")


class Tenancy:
    """The tenants' specs and the checks of their quotas, over the supervisor's agents;
    each change told on the stream (QuotasChanged)."""

    def __init__(self, agents: Mapping[str, AgentLike], stream: Stream) -> None:
        self.agents = agents
        self.stream = stream
        self.specs: dict[str, TenantSpec] = {}
        self._buckets: dict[str, TokenBucket] = {}
        self._going: dict[str, Replica] = {}  # restarted for its tenant's memory or CPU
        self._cpu_over: dict[str, int] = {}  # rounds a tenant has been over its CPU
        # the controllers a cgroup per tenant has (tenantcgroups.py): the kernel bounds
        # memory (cpu) there, so it is not sampled
        self.kernel: set[str] = set()

    # -- the tenants --------------------------------------------------------------------
    def replace(self, specs: Mapping[str, TenantSpec]) -> None:
        """Every tenant at once (start-up, a reload): a rate whose quota is the same
        keeps its bucket."""
        old = self.specs
        self.specs = dict(specs)
        for name in list(self._buckets):
            if name not in self.specs or self.spec(name).rate_per_minute != \
                    old.get(name, NO_QUOTAS).rate_per_minute:
                del self._buckets[name]
        self.stream.emit(QUOTAS_CHANGED)

    def put(self, name: str, spec: TenantSpec) -> None:
        if self.spec(name).rate_per_minute != spec.rate_per_minute:
            self._buckets.pop(name, None)
        self.specs[name] = spec
        self.stream.emit(QUOTAS_CHANGED)

    def known(self, name: str) -> bool:
        return name == DEFAULT_TENANT or name in self.specs

    def names(self) -> list[str]:
        return sorted({DEFAULT_TENANT, *self.specs})

    def spec(self, name: str) -> TenantSpec:
        return self.specs.get(name, NO_QUOTAS)

    def tenant_of(self, agent: str) -> str | None:
        a = self.agents.get(agent)
        return a.spec.tenant if a is not None else None

    def members(self, tenant: str) -> list[AgentLike]:
        return [a for a in self.agents.values() if a.spec.tenant == tenant]

    def unknown(self, what: str, tenant: str) -> str:
        return (f"{what}: no tenant {tenant} (declared: {', '.join(self.names())}; "
                "add it with [tenants.NAME] or `corral tenants add`)")

    # -- agents and replicas ------------------------------------------------------------
    def refusal(self, want: Mapping[str, tuple[str, int]], what: str) -> str | None:
        """Why agents may not have these (name -> (tenant, replicas)) — an agent added,
        or one scaled — or None. Only growth is refused: a scale down, or anything a
        lowered quota already exceeds, that asks for no more, passes."""
        for name, (tenant, _) in want.items():
            if not self.known(tenant):
                return self.unknown(f"agent {name}", tenant)
        for tenant in sorted({t for t, _ in want.values()}):
            spec = self.spec(tenant)
            if not (spec.max_agents or spec.max_replicas):
                continue
            mine = {n: w for n, (t, w) in want.items() if t == tenant}
            members = {a.name: len(a.replicas) for a in self.members(tenant)}
            new_agents = [n for n in mine if n not in members]
            if spec.max_agents and new_agents:
                used = len(members)
                if used + len(new_agents) > spec.max_agents:
                    return (f"tenant {tenant}: max_agents {spec.max_agents} "
                            f"{_reached(used, spec.max_agents)}({used} in use); {what} "
                            f"needs {len(new_agents)} more")
            used = sum(members.values())
            more = sum(w - members.get(n, 0) for n, w in mine.items())
            if spec.max_replicas and more > 0 and used + more > spec.max_replicas:
                return (f"tenant {tenant}: max_replicas {spec.max_replicas} "
                        f"{_reached(used, spec.max_replicas)}({used} in use); {what} "
                        f"needs {more} more")
        return None

    def replica_room(self, tenant: str) -> tuple[int, int] | None:
        """(replicas the tenant may still add, its max_replicas), None without one."""
        spec = self.specs.get(tenant)
        if spec is None or not spec.max_replicas:
            return None
        used = sum(len(a.replicas) for a in self.members(tenant))
        return max(0, spec.max_replicas - used), spec.max_replicas

    # -- memory and CPU, by sampling -----------------------------------------------------
    def caps(self) -> list[tuple[Replica, str]]:
        """The replicas to restart gracefully for their tenant's sampled memory or CPU
        quota: the largest (busiest, for CPU_ROUNDS rounds) of a tenant over it, one per
        tenant at a time, the next judged once it is back."""
        out: list[tuple[Replica, str]] = []
        for tenant, spec in self.specs.items():
            memory = spec.max_memory_mb if "memory" not in self.kernel else 0
            cpu_quota = spec.max_cpu_percent if "cpu" not in self.kernel else 0
            if not (memory or cpu_quota):
                continue
            going = self._going.get(tenant)
            if going is not None:
                m = going.machine
                if not (m.takes_work or m.failed) and any(
                        going in a.replicas for a in self.members(tenant)):
                    continue  # one at a time: the last one is not back yet
                del self._going[tenant]
            live = [r for a in self.members(tenant) for r in a.replicas
                    if r.machine.takes_work]
            if not live:
                continue
            rss = sum(r.sample.rss_bytes for r in live)
            cpu = sum(r.sample.cpu_percent for r in live)
            over = self._cpu_over[tenant] = (self._cpu_over.get(tenant, 0) + 1 if
                                             cpu_quota and cpu > cpu_quota else 0)
            if memory and rss > memory * MIB:
                r = max(live, key=lambda r: r.sample.rss_bytes)
                why = (f"tenant {tenant}: max_memory_mb {spec.max_memory_mb} exceeded "
                       f"({rss // MIB} MiB in use); its largest replica restarted")
            elif over >= CPU_ROUNDS:
                r = max(live, key=lambda r: r.sample.cpu_percent)
                why = (f"tenant {tenant}: max_cpu_percent {spec.max_cpu_percent:g} "
                       f"exceeded ({cpu:g}% for {CPU_ROUNDS} samples); its busiest replica "
                       "restarted")
            else:
                continue
            self._going[tenant] = r
            self._cpu_over[tenant] = 0
            out.append((r, why))
        return out

    # -- tasks --------------------------------------------------------------------------
    def task_refusal(self, agent: AgentLike, depth: Callable[[str], int]
                     ) -> RpcError | None:
        """The refusal of a task for the tenant of `agent`, if it takes no more now, with
        a Retry-After where it is known; or None (the rate quota's token is then taken)."""
        tenant = agent.spec.tenant
        spec = self.specs.get(tenant)
        if spec is None:
            return None
        if spec.max_queue:
            queued = sum(depth(a.name) for a in self.members(tenant))
            if queued >= spec.max_queue:
                return tenant_queue_full(tenant, spec.max_queue, queued, agent.name)
        if spec.rate_per_minute:
            bucket = self._buckets.get(tenant)
            if bucket is None:
                bucket = self._buckets[tenant] = TokenBucket(spec.rate_per_minute)
            if not bucket.take():
                return RpcError(jsonrpc.REFUSED, f"tenant {tenant}: rate_per_minute "
                                f"{spec.rate_per_minute:g} reached; a task for "
                                f"{agent.name} waits for the next minute's room",
                                retry_after(bucket.wait()))
        return None

    def timeout(self, agent: AgentLike, asked: float) -> float:
        spec = self.specs.get(agent.spec.tenant)
        cap = spec.max_task_seconds if spec is not None else 0
        return min(asked, cap) if cap else asked

    def full(self, agent: AgentLike, running: Callable[[str], int]) -> bool:
        """Whether the tenant of `agent` runs as many tasks as max_concurrent_tasks."""
        spec = self.specs.get(agent.spec.tenant)
        if spec is None or not spec.max_concurrent_tasks:
            return False
        return sum(running(a.name) for a in self.members(agent.spec.tenant)
                   ) >= spec.max_concurrent_tasks

    def budget(self, agent: str) -> tuple[str, int] | None:
        """The shared token budget of the agent's tenant: (its key, tokens_per_minute)."""
        tenant = self.tenant_of(agent)
        if tenant is None:
            return None
        spec = self.specs.get(tenant)
        if spec is None or not spec.tokens_per_minute:
            return None
        return BUDGET_PREFIX + tenant, spec.tokens_per_minute

    def use(self, tenant: str, depth: Callable[[str], int], running: Callable[[str], int]
            ) -> TenantUse:
        members = self.members(tenant)
        return TenantUse(agents=len(members), replicas=sum(len(a.replicas) for a in members),
                         queued=sum(depth(a.name) for a in members),
                         running=sum(running(a.name) for a in members))


AGENTS_VIEW = "corral"  # the gateway's view of the agents as tools (daemon/mcptasks.py)


def visible_allow(allow: list[str], tenant: str, servers: Mapping[str, McpServerSpec]
                  ) -> list[str]:
    """An agent's tools allowlist as its tenant narrows it: each pattern rooted at each
    server of its tenant or shared (`*` -> `notes__*`), so none admits another tenant's
    server; one without SERVER__ other than `*` then admits nothing. Unchanged where the
    agent sees every server. The agents' view is kept (`*` too: `corral__*`, decision
    1790): its reach, its tenant's agents, is judged where agents are called."""
    seen = [n for n, s in servers.items() if s.shared or s.tenant == tenant]
    if len(seen) == len(servers):
        return allow
    out: list[str] = []
    for pattern in allow:
        server, sep, rest = pattern.partition("__")
        if pattern == "*" or (sep and fnmatchcase(AGENTS_VIEW, server)):
            out.append(f"{AGENTS_VIEW}__{rest if sep else '*'}")
        for name in seen:
            if sep and fnmatchcase(name, server):
                out.append(f"{name}__{rest}")
            elif not sep and pattern == "*":
                out.append(f"{name}__*")
    return out


def _reached(used: int, quota: int) -> str:
    return "reached " if used >= quota else ""
