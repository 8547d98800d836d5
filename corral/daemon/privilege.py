"""What a tenant's caller may name in an agent's table (docs/tenants.md): every key that
reaches a spawn as a privilege is its tenant's, and a table that names one otherwise is
refused with the key named, never quietly put right. The one rule for every way a tenant's
caller makes or restores a table: `agents.add` and `agents.rollback`.
"""

from __future__ import annotations

import os
from collections.abc import Collection
from typing import Any, NamedTuple

import msgspec

from .. import jsonrpc
from ..jsonrpc import RpcError
from ..supervisor.config import AgentSpec, TenantSpec
from ..supervisor.isolation import isolation
from ..supervisor.runas import same_user
from ..supervisor.sandbox import path_inside
from .revisions import spec_defaults
from .tenantbinds import as_json, binds_refusal


def refusal(spec: AgentSpec, tenant: str, tenant_spec: TenantSpec | None, default_cwd: str,
            releases: Collection[str] = ()) -> tuple[str, str] | None:
    """The first key of `spec` (parsed, its cwd filled) that names who runs what, where
    otherwise than tenant `tenant` does, and why, as (key, text); None when none does.
    `default_cwd`: where the tenant's agents run when they name no cwd; `releases`: the
    releases this agent may be given back (a rollback's)."""
    t = tenant_spec or TenantSpec()
    if spec.placement != "local":
        return "placement", (f"{as_json(spec.placement)}: a cluster's agents are the "
                             "operator's")
    if spec.tenant != tenant:
        return "tenant", _differs(spec.tenant, tenant, tenant, "")
    if spec.user is not None and (t.user is None or not same_user(spec.user, t.user)):
        return "user", _differs(spec.user, tenant, t.user, "none: the daemon's user")
    if spec.group is not None:
        return "group", _differs(spec.group, tenant, None, "none: its user's group")
    own = isolation(spec, t)
    theirs = isolation(msgspec.structs.replace(spec, sandbox=None, network=None), t)
    for key in ("sandbox", "network"):
        if getattr(own, key) != getattr(theirs, key):
            return key, _differs(getattr(own, key), tenant, getattr(theirs, key), "")
    for key in ("sandbox_paths", "read_paths", "write_paths"):  # root binds them: any host file
        if getattr(spec, key):
            return key, _differs(getattr(spec, key), tenant, None, "none")
    # (its `egress` may be stricter than the tenant's, never looser: config.egress_of; but
    # "warn" would run the tenant's floor unenforced where the host cannot enforce it)
    if spec.egress_fallback != "refuse":
        return "egress_fallback", _differs(spec.egress_fallback, tenant, "refuse", "")
    if spec.log_file is not None:  # root appends to it: a file anywhere, its lines the agent's
        return "log_file", _differs(spec.log_file, tenant, None, "none: its log directory")
    if spec.env_file:  # root reads it: /etc/shadow's lines in the agent's environment
        return "env_file", _differs(spec.env_file, tenant, None, "none")
    cwd = os.path.realpath(spec.cwd or default_cwd)
    if t.dir is not None:
        if not path_inside(cwd, os.path.realpath(t.dir)):
            return "cwd", (f"{as_json(spec.cwd)} is outside tenant {tenant}'s dir "
                           f"({as_json(t.dir)})")
    elif cwd != os.path.realpath(default_cwd):
        return "cwd", _differs(spec.cwd, tenant, None,
                               f"it has no dir: its agents run in {default_cwd}")
    binds = binds_refusal(spec, cwd)
    if binds is not None:
        return binds
    if spec.warm:
        return "warm", _differs(True, tenant, False, "")
    if spec.preload:
        return "preload", _differs(spec.preload, tenant, None, "none")
    if spec.watch:  # each an inotify instance of root's, over a tree the agent fills
        return "watch", _differs(spec.watch, tenant, None, "none")
    if spec.release is not None and spec.release not in releases:
        return "release", (f"{as_json(spec.release)}: releases are deployed by the operator "
                           "(a rollback may restore one this agent ran)")
    for ceiling in CEILINGS:
        found = ceiling.refusal(spec, tenant, t)
        if found is not None:
            return found
    return None


class Ceiling(NamedTuple):
    """An agent key bounding what the agent makes the daemon keep, which a tenant's caller
    may lower and never lift."""

    key: str
    # the `[tenants.NAME]` key of the same name bounds it too (0 there: the default does)
    tenant_has: bool
    # 0 is no bound where the agent's machinery reads it (else 0 is the tightest bound)
    zero_unbounded: bool

    def refusal(self, spec: AgentSpec, tenant: str, t: TenantSpec) -> tuple[str, str] | None:
        asked: int = getattr(spec, self.key)
        default: int = spec_defaults()[self.key]
        own: int = getattr(t, self.key) if self.tenant_has else 0
        ceiling = own or default
        if asked == default or (asked <= ceiling and (asked or not self.zero_unbounded)):
            return None
        said = "0 (no bound)" if not asked else str(asked)
        if own:
            theirs = f"tenant {tenant}'s {self.key} {ceiling}"
        elif self.tenant_has:
            theirs = f"the default {ceiling} (tenant {tenant} sets no {self.key})"
        else:
            theirs = f"the default {ceiling}"
        return self.key, f"{said} is past {theirs}"


CEILINGS = (Ceiling("max_step_bytes", tenant_has=True, zero_unbounded=True),
            Ceiling("max_stream_bytes", tenant_has=True, zero_unbounded=True),
            Ceiling("max_sessions", tenant_has=True, zero_unbounded=True),
            Ceiling("max_session_bytes", tenant_has=True, zero_unbounded=True),
            Ceiling("max_children", tenant_has=False, zero_unbounded=False),
            Ceiling("max_spawn_depth", tenant_has=False, zero_unbounded=False))


def _differs(value: Any, tenant: str, theirs: Any, otherwise: str) -> str:
    said = as_json(theirs) if theirs is not None else otherwise
    return f"{as_json(value)} differs from tenant {tenant}'s ({said})"


def check(spec: AgentSpec, who: str, tenant: str, tenant_spec: TenantSpec | None,
          default_cwd: str, releases: Collection[str] = ()) -> None:
    """Raise the refusal (FORBIDDEN: HTTP 403) of a table of tenant `tenant`'s caller
    `who` that names who runs what, where otherwise than the tenant (`refusal`)."""
    found = refusal(spec, tenant, tenant_spec, default_cwd, releases)
    if found is not None:
        key, why = found
        raise RpcError(jsonrpc.FORBIDDEN, f"forbidden: {who} is a caller of tenant {tenant}: "
                                          f"agents.{spec.name}.{key}: {why}; who runs what, "
                                          "where is the operator's (docs/tenants.md)")
