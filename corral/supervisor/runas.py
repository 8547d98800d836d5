"""Who a process runs as: its own `user`, else its tenant's (docs/tenants.md), and the
process limits that follow. Under its tenant's user RLIMIT_NPROC is the tenant's
`max_processes` (the kernel counts per real uid); a process naming its tenant's user gets
its tenant's cap too, one naming another user keeps its own limits.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import msgspec

from .config import DEFAULT_TENANT, Limits, ProcessSpec, TenantSpec, passwd_of


class RunAs(msgspec.Struct, frozen=True):
    user: str | None
    group: str | None
    limits: Limits
    tenant_user: bool  # the user is the tenant's (its directories are that user's)


def tenant_of(spec: ProcessSpec) -> str:
    return getattr(spec, "tenant", DEFAULT_TENANT)


def run_as(spec: ProcessSpec, tenant: TenantSpec | None) -> RunAs:
    if tenant is None or tenant.user is None or (
            spec.user is not None and not same_user(spec.user, tenant.user)):
        return RunAs(spec.user, spec.group, spec.limits, False)
    limits = spec.limits
    cap = tenant.max_processes
    if cap and (not limits.processes or limits.processes > cap):
        limits = msgspec.structs.replace(limits, processes=cap)
    return RunAs(tenant.user, spec.group, limits, True)


def same_user(a: str, b: str) -> bool:
    """Whether two `user` settings (names, or uids in digits) are one account."""
    if a == b:
        return True
    pa, pb = passwd_of(a), passwd_of(b)
    return pa is not None and pb is not None and pa.pw_uid == pb.pw_uid


def out_of_reach(path: Path, uid: int, gid: int) -> Path | None:
    """The first directory on the way to `path` (itself included) that a process of
    uid/gid (no supplementary groups: how corral starts another user's process) may not
    pass through; None: every one may be."""
    if uid == 0:
        return None
    here = Path("/")
    for part in path.parts[1:]:
        here = here / part
        try:
            st = os.stat(here)
        except OSError:
            return here
        bit = (stat.S_IXUSR if st.st_uid == uid else stat.S_IXGRP if st.st_gid == gid
               else stat.S_IXOTH)
        if stat.S_ISDIR(st.st_mode) and not st.st_mode & bit:
            return here
    return None
