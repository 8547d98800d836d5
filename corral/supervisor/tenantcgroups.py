"""A cgroup per tenant where the cgroup v2 subtree is delegated (docs/tenants.md#cgroups):
a `tenant-NAME` node holding no process, its replicas' leaves beneath it, its knobs from
the tenant's quotas. The node enables in its own subtree_control what its parent gives it,
so the leaves keep their own limits; it is removed once empty and its tenant has nothing.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import NamedTuple, Protocol

from .config import DEFAULT_TENANT, MIB, TenantSpec
from .containment import (
    CgroupTree,
    cap_knobs,
    cgroup_kill,
    enable,
    oom_kills,
    remove_cgroup,
    write_knob,
)
from .stream import Stream

log = logging.getLogger("corral.containment")

NODE_PREFIX = "tenant-"
# the quota each controller enforces on a tenant's node, as the start-up notice names it
QUOTAS = {"memory": ("max_memory_mb", "memory_high_mb"), "cpu": ("max_cpu_percent", "cpu_weight"),
          "pids": ("max_processes",)}


class TenantHook(Protocol):
    def tenant_of_process(self, kind: str, name: str) -> str | None:
        """The tenant of an agent or MCP server there is (None: none, or a zygote)."""

    def tenant_spec(self, tenant: str) -> TenantSpec | None: ...

    def tenant_in_use(self, tenant: str) -> bool: ...


class TenantOomKill(NamedTuple):
    """The kernel OOM-killed a process in a tenant's cgroup (its memory.max)."""

    tenant: str
    kills: int  # new since the last look
    total: int  # since the daemon started


def knobs(spec: TenantSpec) -> dict[str, tuple[str, str]]:
    """The files of a tenant's node: file -> (its controller, the value)."""
    return {**cap_knobs(spec.max_memory_mb, spec.max_cpu_percent, spec.max_processes),
            "memory.high": ("memory", str(spec.memory_high_mb * MIB) if spec.memory_high_mb
                            else "max"),
            "cpu.weight": ("cpu", str(spec.cpu_weight or 100))}


class TenantNodes:
    def __init__(self, tree: CgroupTree, hook: TenantHook, stream: Stream) -> None:
        self.tree = tree
        self.hook = hook
        self.stream = stream
        self.inside: dict[str, int] = {}  # tenant -> processes tracked or pending in it
        self.controllers: dict[str, set[str]] = {}  # tenant -> enabled in its subtree
        self.written: dict[str, TenantSpec] = {}  # tenant -> the spec its knobs say
        self.oom_seen: dict[str, int] = {}  # tenant -> memory.events oom_kill last read
        self.oom_total: dict[str, int] = {}  # tenant -> OOM kills since start

    def node(self, tenant: str) -> str:
        return os.path.join(self.tree.root, NODE_PREFIX + tenant)

    def tenant_of(self, kind: str, name: str) -> str | None:
        tenant = self.hook.tenant_of_process(kind, name)
        return tenant if tenant not in (None, DEFAULT_TENANT) else None

    def enter(self, tenant: str) -> tuple[str, set[str]]:
        """A process of `tenant` is about to start: its node (made, its knobs written)
        and the controllers its leaves have."""
        node = self.node(tenant)
        if tenant not in self.controllers or not os.path.isdir(node):
            os.makedirs(node, exist_ok=True)
            self.controllers[tenant] = enable(node, self.tree.controllers)
            self.written.pop(tenant, None)
            self.oom_seen[tenant] = oom_kills(node)
        self.retune(tenant)
        self.inside[tenant] = self.inside.get(tenant, 0) + 1
        return node, self.controllers[tenant]

    def leave(self, tenant: str) -> None:
        self.inside[tenant] = max(0, self.inside.get(tenant, 0) - 1)

    def retune(self, tenant: str) -> None:
        spec = self.hook.tenant_spec(tenant) or TenantSpec()
        if self.written.get(tenant) == spec or tenant not in self.controllers:
            return
        node = self.node(tenant)
        for key, (ctl, value) in knobs(spec).items():
            if ctl in self.tree.controllers:  # the node's own files: its parent's grant
                try:
                    write_knob(os.path.join(node, key), value)
                except OSError as exc:
                    log.warning("cgroups: cannot write %s of tenant %s: %s", key, tenant, exc)
        self.written[tenant] = spec

    def retune_all(self) -> None:
        for tenant in list(self.controllers):
            self.retune(tenant)

    def tick(self) -> None:
        """OOM kills attributed to their tenants; nodes of tenants gone removed."""
        for tenant in list(self.controllers):
            node = self.node(tenant)
            if "memory" in self.tree.controllers:
                seen = oom_kills(node)
                new = seen - self.oom_seen.get(tenant, 0)
                if new > 0:
                    self.oom_seen[tenant] = seen
                    total = self.oom_total[tenant] = self.oom_total.get(tenant, 0) + new
                    self.stream.emit(TenantOomKill(tenant, new, total))
            if self.inside.get(tenant, 0) == 0 and not self.hook.tenant_in_use(tenant):
                cgroup_kill(node)  # (nothing tracked is in it: what is left is stray)
                if remove_cgroup(node):
                    for table in (self.controllers, self.written, self.oom_seen, self.inside):
                        with contextlib.suppress(KeyError):
                            del table[tenant]


def notice(tree: CgroupTree | None, specs: dict[str, TenantSpec], why: str) -> list[str]:
    """What the kernel does not enforce of the tenants' quotas here, and what does instead:
    one sentence per fallback, for the start-up log."""
    fallback = {"max_memory_mb": "sampled (an orderly restart of the largest replica)",
                "max_cpu_percent": "sampled (an orderly restart of the busiest replica)",
                "memory_high_mb": "not enforced", "cpu_weight": "a nice value",
                "max_processes": "RLIMIT_NPROC under the tenant's user, else not enforced"}
    have = tree.controllers if tree is not None else set()
    out: list[str] = []
    for ctl, quotas in QUOTAS.items():
        if ctl in have:
            continue
        for quota in quotas:
            used = sorted(n for n, s in specs.items() if getattr(s, quota))
            if used:
                out.append(f"tenants {', '.join(used)}: {quota} is {fallback[quota]}, not a "
                           f"cgroup's ({why if tree is None else f'no {ctl} controller'})")
    return out
