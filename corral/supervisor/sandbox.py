"""`sandbox = "bwrap"`: an agent's process run under bubblewrap (docs/sandbox.md).

bwrap is exec'd by the caps prologue, so rlimits and the cgroup hold before it runs. No
`--new-session`: the agent has no controlling terminal (no TIOCSTI), and it must stay in
corral's process group, which `stop` signals. `--die-with-parent` ties the sandbox's pid
namespace to the outer bwrap: nothing outlives it. Plain values only: configload.py
imports this to check a host.
"""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import NamedTuple
from urllib.parse import urlsplit

# the system directories bound read-only (or recreated as the symlinks they are, where
# the host has merged /usr)
SYSTEM = ("usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32", "etc")
PROBE_TIMEOUT = 10.0
MASK = "mask"  # a mount of one of corral's own paths: hidden, not bound
TRIP = "trip"  # the control socket's path: the replica's listener (egresstrip.py)
# what an exit status above this means, from bwrap: killed by signal (status - 128)
SIGNALLED = 128
# egress = "gateways" over TCP: where the relay and the gateways' socket are bound, inside
RELAY_DIR = "/run/corral"
RELAY_SCRIPT = str(Path(__file__).with_name("egressrelay.py"))
SHELL = "/bin/sh"
SECCOMP_FD = 9  # the descriptor bwrap is told to read an egress filter from
LINKS_FOLLOWED = 40  # the kernel's bound on the links one path's walk follows
# the host settings that forbid unprivileged user namespaces, and the value that does
USERNS_SYSCTLS = (
    ("kernel/unprivileged_userns_clone", "0"),  # Debian's and older Ubuntu's patch
    ("user/max_user_namespaces", "0"),
    ("kernel/apparmor_restrict_unprivileged_userns", "1"),  # Ubuntu 23.10 on
)


def out_of_reach(path: str, uid: int, gid: int) -> str | None:
    """The first directory on the way to `path` (itself included; a relative one from
    the cwd) that a process of uid/gid (no supplementary groups: how corral starts another
    user's process) may not pass through; None: every one may be. Each `..` is passed as
    the kernel does, not folded away. Strings, not pathlib's: it interns every part it
    parses, and an agent's start would churn the interpreter's table of them."""
    if uid == 0:
        return None
    here = ""
    for part in plain(os.path.join(os.getcwd(), path)).split("/")[1:]:
        here = f"{here}/{part}"
        try:
            st = os.stat(here)
        except OSError:
            return here
        bit = (stat.S_IXUSR if st.st_uid == uid else stat.S_IXGRP if st.st_gid == gid
               else stat.S_IXOTH)
        if stat.S_ISDIR(st.st_mode) and not st.st_mode & bit:
            return here
    return None


def plain(path: str) -> str:
    """`path` as pathlib shows it: no empty nor `.` parts; each `..` kept (the kernel
    passes through the directory before it)."""
    parts = "/".join(part for part in path.split("/") if part not in ("", "."))
    return f"/{parts}" if path.startswith("/") else parts or "."


def userns_forbidden(sysctl: Path = Path("/proc/sys")) -> str | None:
    """The host setting that forbids unprivileged user namespaces, as `name = value`."""
    for rel, forbidding in USERNS_SYSCTLS:
        try:
            value = (sysctl / rel).read_text().strip()
        except OSError:
            continue  # not this kernel's (or not this distribution's) setting
        if value == forbidding:
            return f"{rel.replace('/', '.')} = {value}"
    return None


def find_program(program: str) -> str | None:
    """bwrap's absolute path, or None."""
    if "/" in program:
        return program if os.access(program, os.X_OK) and os.path.isfile(program) else None
    return shutil.which(program)


def host_refusal(program: str, user: str | None, *,
                 sysctl: Path = Path("/proc/sys")) -> str | None:
    """Why this host cannot sandbox a process of `user` with bubblewrap, or None. A real
    sandbox is tried as that user rather than the settings guessed at (docs/sandbox.md:
    AppArmor, RestrictNamespaces=); the settings then say why."""
    path = find_program(program)
    if path is None:
        return (f"bubblewrap is not installed ({program} not found; Debian's package is "
                f"bubblewrap)")
    uid = None
    if user is not None:
        uid = pwd.getpwnam(user).pw_uid if not user.isdigit() else int(user)
        if os.geteuid() != 0 and uid != os.geteuid():
            return None  # the user check refuses this, in its own words
    argv = [path, "--unshare-user", "--disable-userns", "--ro-bind", "/", "/", "true"]
    try:
        done = subprocess.run(argv, capture_output=True, timeout=PROBE_TIMEOUT,
                              user=uid, extra_groups=[] if uid is not None else None)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"bubblewrap could not be run ({path}): {exc}"
    if done.returncode == 0:
        return None
    said = done.stderr.decode("utf-8", "replace").strip().splitlines()
    said_last = said[-1] if said else f"status {done.returncode}"
    forbidden = userns_forbidden(sysctl)
    if forbidden:
        return (f"user namespaces are forbidden on this host ({forbidden}); bubblewrap "
                f"needs one to sandbox a process ({said_last})")
    return f"bubblewrap cannot make a sandbox on this host: {said_last}"


class GatewayRelay(NamedTuple):
    """The gateways of an egress = "gateways" agent whose gateways are TCP: the address
    its environment names (CORRAL_MCP_URL), what the daemon also serves them on (a unix
    socket), and the interpreter the relay runs on (egressrelay.py)."""

    url: str
    socket: str
    python: str


def _relayed(relay: GatewayRelay, argv: list[str]) -> tuple[list[str], list[str]]:
    """The bwrap arguments that bind the relay in, and the command that runs it first."""
    parts = urlsplit(relay.url)
    if parts.port is None or parts.hostname is None:
        raise OSError(f"egress = \"gateways\": the gateway's URL {relay.url} names no port")
    host = "127.0.0.1" if parts.hostname == "localhost" else parts.hostname
    script, sock = f"{RELAY_DIR}/relay.py", f"{RELAY_DIR}/gateways.sock"
    binds = ["--ro-bind", RELAY_SCRIPT, script, "--bind", relay.socket, sock]
    return binds, [relay.python, "-I", "-S", script, host, str(parts.port), sock, "--",
                   *argv]


def system_args(names: Iterable[str] = SYSTEM) -> list[str]:
    """bwrap's arguments for the system a sandbox has: the directories `names` read-only
    (a link as the link), a /proc, /dev and /tmp of its own (the importer's too: jsbox.py,
    whose names leave /etc out)."""
    out: list[str] = []
    for name in names:
        path = f"/{name}"
        if os.path.islink(path):
            out += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            out += ["--ro-bind", path, path]
    return [*out, "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]


def _prefix(program: str) -> str | None:
    """The installation a program belongs to (the parent of its bin directory, else its
    own directory: a script's grandparent may be a home), None where that is / or under
    the system's directories, bound already. Judged as bound: folded, not as spelt (the
    parent of `/tmp/..`'s bin directory is /, which `tmp` would have passed for apart)."""
    parent = os.path.dirname(os.path.normpath(plain(program)))
    prefix = os.path.dirname(parent) if os.path.basename(parent) == "bin" else parent
    parts = prefix.split("/")
    if not prefix.startswith("/") or parts[1] in ("", *SYSTEM):
        return None
    return prefix


def program_paths(program: str, writable: Iterable[str] = ()) -> list[str]:
    """What running `program` (an absolute path) needs besides the system: its
    installation, as named and as resolved, and where it is a venv's interpreter, that
    venv and its base interpreter's installation (pyvenv.cfg's `home`). Nothing is read
    from where the agent may write (`writable`: its cwd and write_paths), which it would
    choose its next sandbox's binds by: a program there is not followed through its
    links, nor a pyvenv.cfg there read (issue 88; decision 1129), nor an installation
    there bound apart (decision 1825). Strings, not pathlib's (out_of_reach says why)."""
    writable = list(writable)
    named = plain(program)
    real = named if agents_own(named, writable) else os.path.realpath(named)
    out = [_prefix(named), _prefix(real)]
    cfg = os.path.join(os.path.dirname(os.path.dirname(named)), "pyvenv.cfg")
    try:
        if agents_own(cfg, writable):
            lines = []
        else:
            with open(cfg, encoding="utf-8") as f:
                lines = f.read().splitlines()
    except (OSError, ValueError):
        lines = []
    for line in lines:
        key, _, value = line.partition("=")
        if key.strip() == "home" and value.strip():
            out.append(_prefix(os.path.join(value.strip(), "python")))
    return [p for p in out if p is not None and not agents_own(p, writable)]


def agents_own(path: str, writable: Iterable[str]) -> bool:
    """Whether `path`, as named or as its links resolve, is inside one of the `writable`
    directories: the agent's to change (and reached through their binds already)."""
    named, real = os.path.abspath(path), os.path.realpath(path)
    return any(path_inside(p, os.path.realpath(w)) or path_inside(p, os.path.abspath(w))
               for w in writable for p in (named, real))


def resolve_program(argv0: str, env: dict[str, str], cwd: str | None) -> str:
    """argv[0] as an absolute path, looked up as exec would (the agent's PATH): the
    sandbox has none of the host's PATH directories that are not bound."""
    if "/" in argv0:
        return os.path.join(cwd or os.getcwd(), argv0)
    found = shutil.which(argv0, path=env.get("PATH", os.defpath))
    return found if found is not None else argv0


def bound_cwd(cwd: str, tenant_dir: str | None) -> str:
    """The host's directory bound as an agent's `cwd`: resolved now, as bwrap would follow
    it. `tenant_dir`: its tenant's, which that tenant's agents write: a way to the cwd
    through a link there must end there (a link one agent put there chose another's cwd,
    checked at its add alone: decision 2171); OSError where it leaves."""
    real = os.path.realpath(cwd)
    if tenant_dir is None:
        return real
    home = os.path.realpath(tenant_dir)
    if not path_inside(real, home) and any(path_inside(d, home) for d in _links_in(cwd)):
        raise OSError(f"its cwd {cwd} is {real} now, outside its tenant's dir "
                      f"({tenant_dir}) through a link there: a cwd is bound inside its "
                      "tenant's dir alone")
    return real


def _links_in(path: str) -> list[str]:
    """The directory (resolved) of each link followed on the way to `path`, walked as
    the kernel walks it."""
    todo = plain(os.path.join(os.getcwd(), path)).split("/")[1:]
    here = "/"
    found: list[str] = []
    while todo and len(found) <= LINKS_FOLLOWED:  # (past it: the kernel's ELOOP)
        part = todo.pop(0)
        step = os.path.dirname(here) if part == ".." else os.path.join(here, part)
        if part == ".." or not os.path.islink(step):
            here = step
            continue
        found.append(here)
        target = os.readlink(step)
        todo = [p for p in target.split("/") if p not in ("", ".")] + todo
        here = "/" if target.startswith("/") else here
    return found


def path_inside(path: str, root: str) -> bool:
    """Whether `path` is `root` or below it (both as given: strings, not resolved)."""
    return path == root or path.startswith(root.rstrip("/") + "/")


def exposed(cwd: str, protected: Iterable[tuple[str, str]]) -> str | None:
    """Why `cwd` may not be a sandboxed agent's (it is writable there): it holds one of
    corral's own files, as (path, what it is) in `protected` — an agent there would
    rewrite corral's orders (its config, includes, state, socket). None when it holds none."""
    cwd, real = os.path.abspath(cwd), os.path.realpath(cwd)
    for path, what in protected:  # (as named and as resolved: a link names it elsewhere)
        if path_inside(os.path.abspath(path), cwd) or path_inside(os.path.realpath(path), real):
            return (f"{cwd} is writable in the sandbox and holds {what} ({path}): give the "
                    "agent a cwd of its own")
    return None


def sandboxed(argv: list[str], *, program: str, cwd: str, env: dict[str, str],
              network: str, root: bool, read_only: Iterable[str],
              gateway_socket: str | None = None,
              protected: Iterable[tuple[str, str]] = (),
              notify_socket: str | None = None,
              writable: Iterable[str] = (),
              relay: GatewayRelay | None = None,
              seccomp: str | int | None = None,
              trips: Mapping[str, str] | None = None,
              cwd_from: str | None = None) -> list[str]:
    """The bwrap command line that runs `argv` (absolute argv[0]) sandboxed; `cwd` and
    `writable` writable. Mounts are made parents first, so a read-only directory inside
    the cwd (a venv) stays read-only; a path both read-only and writable is writable.
    `relay`: run first where the gateways are TCP (egressrelay.py). `seccomp`: a filter
    (seccomp.py) as a descriptor, or a file opened by a shell that execs bwrap. `trips`:
    path inside -> the host's file bound there, corral's own: the replica's listener at
    the control socket's path, its decoys of the files no agent reads (egresstrip.py).
    `cwd_from`: the host's directory bound at `cwd` (`bound_cwd`'s), else `cwd` itself."""
    protected, writable = list(protected), [cwd, *writable]
    sources = {os.path.abspath(cwd): cwd_from} if cwd_from is not None else {}
    for place in writable:  # (corral's file in a writable bind: the agent moves its mask)
        why = exposed(place, protected)
        if why:
            raise OSError(why)
    found = find_program(program)
    if found is None:
        raise OSError(f"bubblewrap is not installed ({program} not found)")
    args = [found, "--die-with-parent", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
            "--unshare-cgroup-try"]
    # a user namespace of its own for root too: without one, root (even with no
    # capabilities) may make user namespaces, and keeps a full bounding set
    args += ["--unshare-user", "--disable-userns"]
    if root:
        # root in the sandbox's user namespace has all its capabilities unless told
        args += ["--cap-drop", "ALL"]
    # "held": the network namespace the spawn is made in, the daemon's (egressdoors.py)
    if network in ("none", "gateway", "gateways"):
        args.append("--unshare-net")
    args += system_args()
    relay_binds: list[str] = []
    if network == "gateways" and gateway_socket is not None:
        network = "gateway"  # a unix gateway: its socket, as "gateway" binds it
    elif network == "gateways":
        if relay is None:
            raise OSError('egress = "gateways": the gateways have no socket to relay to '
                          "([gateway] listen is not served)")
        relay_binds, argv = _relayed(relay, argv)
        read_only = [*read_only, *program_paths(relay.python)]
    mounts: dict[str, str] = {}
    for path in read_only:
        mounts.setdefault(os.path.abspath(path), "--ro-bind-try")
    # one writable bind inside another is not bound apart, the outer one holds it: a
    # link the agent made on the way to it would choose what was bound (decision 1825)
    kept: list[str] = []
    for path in sorted({os.path.abspath(p) for p in writable}, key=lambda p: p.count("/")):
        if not agents_own(path, kept):
            kept.append(path)
            mounts[path] = "--bind"
        else:
            mounts.pop(path, None)
    if network == "gateway":
        if gateway_socket is None:
            raise OSError('network = "gateway": the MCP gateway has no unix socket '
                          '([gateway] listen = "unix:PATH") to bind in')
        mounts[gateway_socket] = "--bind"
    if notify_socket is not None:  # a plain program's $NOTIFY_SOCKET (notifysock.py)
        mounts[notify_socket] = "--bind"
    # corral's own files inside what it may read are masked: read-only is no guard for a
    # unix socket (connect(2) needs no write permission), nor for secrets
    for path in {q for p, _ in protected for q in (os.path.abspath(p), os.path.realpath(p))}:
        if os.path.lexists(path) and any(path_inside(path, m) for m in mounts):
            mounts[path] = MASK
    trips = {os.path.abspath(inside): host for inside, host in (trips or {}).items()}
    for inside in trips:
        mounts[inside] = TRIP
    for path in sorted(mounts, key=lambda p: (p.count("/"), p)):
        if mounts[path] == TRIP:  # (a socket bound writable: connect(2) writes to it)
            host = trips[path]
            args += ["--bind" if stat.S_ISSOCK(os.stat(host).st_mode) else "--ro-bind",
                     host, path]
        elif mounts[path] == MASK:
            args += (["--tmpfs", path] if os.path.isdir(path)
                     else ["--ro-bind", "/dev/null", path])
        else:
            args += [mounts[path], sources.get(path, path), path]
    # the root is bwrap's scratch tmpfs, holding the mount points: read-only, so that
    # the only places the agent writes are its directory and its /tmp
    args += relay_binds
    args += ["--remount-ro", "/", "--chdir", cwd, "--", *argv]
    if isinstance(seccomp, int):
        args = [args[0], "--seccomp", str(seccomp), *args[1:]]
    elif seccomp is not None:
        # bwrap reads the filter from a descriptor: the shell opens it and becomes bwrap
        args = [SHELL, "-c", f'exec "$@" {SECCOMP_FD}<"$0"', seccomp, args[0],
                "--seccomp", str(SECCOMP_FD), *args[1:]]
    return args


def exit_status(rc: int) -> int:
    """The agent's own exit status from bwrap's: bwrap exits 128 + N when what it ran was
    killed by signal N, and is itself killed by what signals its group."""
    return -(rc - SIGNALLED) if SIGNALLED < rc <= SIGNALLED + 64 else rc


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children", "rb") as f:
            return [int(c) for c in f.read().split()]
    except (OSError, ValueError):
        return []


def sandboxed_pid(outer: int) -> int | None:
    """The host's pid of the program bwrap (pid `outer`) runs, what corral samples and
    looks at: the first child of the sandbox's init; None until both are there."""
    for init in _children(outer):
        for pid in _children(init):
            return pid
    return None
