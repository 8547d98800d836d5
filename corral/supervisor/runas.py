"""Who a process runs as: its own `user`, else its tenant's (docs/tenants.md), and the
process limits that follow. Under its tenant's user RLIMIT_NPROC is the tenant's
`max_processes` (the kernel counts per real uid); a process naming its tenant's user gets
its tenant's cap too, one naming another user keeps its own limits.
"""

from __future__ import annotations

import os
import shutil

import msgspec

from .config import DEFAULT_TENANT, AgentSpec, Limits, ProcessSpec, TenantSpec, passwd_of
from .dynamicusers import DynamicUsers
from .process import as_user, resolve_user
from .sandbox import out_of_reach, plain


class RunAs(msgspec.Struct, frozen=True):
    user: str | None
    group: str | None
    limits: Limits
    tenant_user: bool  # the user is the tenant's (its directories are that user's)
    uid: int | None = None  # a dynamic user's (dynamicusers.py): no account names it
    home: str | None = None  # its state directory


def tenant_of(spec: ProcessSpec) -> str:
    return getattr(spec, "tenant", DEFAULT_TENANT)


def run_as(spec: ProcessSpec, tenant: TenantSpec | None,
           dynamic: DynamicUsers | None = None) -> RunAs:
    """Who a process of `spec` runs as; `dynamic`: an agent naming no user (nor its
    tenant one) is given a uid of its own (a daemon running as root's)."""
    if tenant is None or tenant.user is None or (
            spec.user is not None and not same_user(spec.user, tenant.user)):
        if spec.user is None and dynamic is not None and isinstance(spec, AgentSpec):
            uid = dynamic.uid_of(spec.name, spec.tenant)
            return RunAs(None, None, spec.limits, False, uid,
                         str(dynamic.home_of(spec.name, spec.tenant, uid)))
        return RunAs(spec.user, spec.group, spec.limits, False)
    limits = spec.limits
    cap = tenant.max_processes
    if cap and (not limits.processes or limits.processes > cap):
        limits = msgspec.structs.replace(limits, processes=cap)
    return RunAs(tenant.user, spec.group, limits, True)


def ids(run: RunAs) -> tuple[int | None, int | None]:
    """(uid, gid) a process runs as (None: corral's own): a dynamic user's, or its
    account's (ConfigError when there is none)."""
    if run.uid is not None:
        return run.uid, run.uid
    return resolve_user(run.user, run.group)


def environment_of(env: dict[str, str], run: RunAs | None, uid: int | None, name: str,
                   own: dict[str, str]) -> dict[str, str]:
    """`env` naming who the process runs as: a dynamic user's state directory its
    $STATE_DIRECTORY and (unless its own env sets one) $HOME, its name corral-NAME;
    else its account's (process.as_user). `own`: the spec's env."""
    if run is None or run.home is None:
        return as_user(env, uid)
    env["STATE_DIRECTORY"] = run.home
    if "HOME" not in own:
        env["HOME"] = run.home
    env["USER"] = env["LOGNAME"] = f"corral-{name}"
    return env


def same_user(a: str, b: str) -> bool:
    """Whether two `user` settings (names, or uids in digits) are one account."""
    if a == b:
        return True
    pa, pb = passwd_of(a), passwd_of(b)
    return pa is not None and pb is not None and pa.pw_uid == pb.pw_uid


def _may(st: os.stat_result, uid: int, gid: int, access: int) -> bool:
    """Whether uid/gid's class (owner, group, other) has `access` (os.R_OK or X_OK)."""
    shift = 6 if st.st_uid == uid else 3 if st.st_gid == gid else 0
    return bool(st.st_mode >> shift & access)


def reach_refusal(spec: AgentSpec, tenant: TenantSpec | None, dynamic: range | None
                  ) -> str | None:
    """Why the user agent `spec` runs as (its own, its tenant's, else a dynamic uid of
    `dynamic` under a daemon running as root) cannot run it: its command, the
    interpreter it resolves to, its script (the first argument, a file) or its cwd out
    of that user's reach; None when all are in it (or corral is not root: it runs them
    as itself)."""
    if os.geteuid() != 0:
        return None
    run = run_as(spec, tenant)
    if run.user is None:
        if dynamic is None:
            return None
        uid = gid = dynamic.start
        who = "a dynamic uid (it names no user: [supervisor] dynamic_uids)"
    else:
        pw = passwd_of(run.user)
        if pw is None:
            return None  # the spawn refuses it, in its own words
        uid, gid, who = pw.pw_uid, pw.pw_gid, f"user {run.user}"
    if uid == 0:
        return None
    cwd = os.path.abspath(spec.cwd or os.getcwd())
    argv = spec.argv()
    program = argv[0] if "/" in argv[0] else shutil.which(
        argv[0], path=spec.env.get("PATH", os.environ.get("PATH", os.defpath)))
    # (path, what it is, the access it needs: a directory passed, a program run, a
    # script read)
    wanted: list[tuple[str, str, int]] = [(cwd, "its cwd", os.X_OK)]
    if program is not None:
        named = plain(os.path.join(cwd, program))
        wanted += [(named, "its command", os.X_OK),
                   (os.path.realpath(named), "the program its command is", os.X_OK)]
    script = plain(os.path.join(cwd, argv[1])) if len(argv) > 1 else ""
    if script and not argv[1].startswith("-") and os.path.isfile(script):
        wanted.append((script, "its script", os.R_OK))
    for path, what, access in wanted:
        blocked = out_of_reach(path, uid, gid)
        try:
            st = os.stat(path)
        except OSError:
            continue  # not there: the command's check says so
        if blocked is None and not _may(st, uid, gid, access):
            blocked = path
        if blocked is not None:
            return (f"it runs as {who}, who may not reach {what} {path} (no way through "
                    f"{blocked}): give it a user who may, or make it reachable; "
                    f'`user = "root"` runs it as root')
    return None
