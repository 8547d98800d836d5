"""What of a tenant's agent table would choose its sandbox's binds (issue 88; decision
1128): the sandbox binds the installation of the program it runs and each PYTHONPATH
entry, and its environment names the gateway's socket. A tenant's caller names none of
them outside its agent's cwd, the system's directories and corral's own installation;
`privilege.refusal` asks this with the other keys a tenant may not name.
"""

from __future__ import annotations

import os
import sys

import msgspec

from ..supervisor.config import AgentSpec
from ..supervisor.sandbox import SYSTEM, path_inside, resolve_program

# the environment a tenant's caller never names: corral's own (CORRAL_MCP_SOCKET was bound
# writable into the sandbox), the interpreter's (PYTHONPATH's entries are bound; PYTHONHOME,
# PYTHONSTARTUP run code) and the loader's (LD_PRELOAD, LD_LIBRARY_PATH)
CORRALS_ENV = ("CORRAL_", "PYTHON", "LD_")
# where the worker SDK is imported from: the one PYTHONPATH entry outside its cwd a
# tenant's agent may name (the sandbox binds the SDK anyway)
SDK_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.realpath(__file__))))
# corral's own installation: its interpreter's, which a tenant's agent may run
CORRALS = tuple(dict.fromkeys(os.path.realpath(p) for p in (
    sys.prefix, sys.base_prefix, SDK_ROOT)))


def as_json(value: object) -> str:
    """A value as a refusal quotes it (JSON)."""
    return msgspec.json.encode(value).decode()


def _allowed(path: str, own: tuple[str, ...]) -> bool:
    """Whether `path`, as named and as its links resolve, is in one of the agent's `own`
    directories (its cwd, its release), the system's directories (bound already) or
    corral's own installation."""
    for p in (os.path.normpath(path), os.path.realpath(path)):
        parts = p.split("/")
        if not ((len(parts) > 1 and parts[1] in SYSTEM)
                or any(path_inside(p, root) for root in (*own, *CORRALS))):
            return False
    return True


def binds_refusal(spec: AgentSpec, cwd: str) -> tuple[str, str] | None:
    """The key of a tenant's agent `spec` (its `cwd` resolved) that would choose a bind
    of its sandbox, and why, or None."""
    # (a release's programs are its own: whether it may be given one is the `release`
    # key's rule)
    own = _own(spec, cwd)
    found = _env_refusal(spec.env, cwd, own)
    if found is not None:
        return "env", found
    for key, argv in _commands(spec):
        program = resolve_program(argv[0], {**os.environ, **spec.env}, cwd) if argv else ""
        if program and not _allowed(program, own):
            return key, (f"{as_json(argv[0])} is {program}, outside its cwd ({cwd}), the "
                         "system's directories and corral's own installation: its "
                         "installation would be bound into the sandbox")
    return None


def _commands(spec: AgentSpec) -> list[tuple[str, list[str]]]:
    """(key, argv) of each command the agent's table runs in a sandbox made as its own:
    its command, and each health check's command and recovery (health.py runs them
    beside it)."""
    found = [("command", spec.argv())]
    for kind, check in spec.health.checks() if spec.health is not None else ():
        found += [(f"health.{kind}.{key}", argv) for key in ("command", "exec")
                  if (argv := getattr(check, key))]
    return found


def env_refusal(spec: AgentSpec, cwd: str) -> str | None:
    """Why a tenant's agent `spec` (its `cwd` resolved) may not be given its env, or None:
    the rule of a table restored from the state database too, which may have been stored
    before the rule was."""
    return _env_refusal(spec.env, cwd, _own(spec, cwd))


def _own(spec: AgentSpec, cwd: str) -> tuple[str, ...]:
    return (cwd, *((os.path.realpath(spec.release),) if spec.release else ()))


def _env_refusal(env: dict[str, str], cwd: str, own: tuple[str, ...]) -> str | None:
    """Why a tenant's agent may not be given `env`, or None: a name of corral's, the
    interpreter's or the loader's, but a PYTHONPATH whose every entry is the SDK's
    directory or inside the agent's cwd; a PATH entry outside what it may run."""
    for name in sorted(env):
        if name == "PATH":
            outside = [p for p in env[name].split(os.pathsep)
                       if p and not _allowed(os.path.join(cwd, p), own)]
            if outside:
                return (f"PATH names {as_json(outside[0])}: a tenant's agent runs programs "
                        f"of its cwd ({cwd}), the system's directories and corral's own "
                        "installation alone (a program's installation is bound into the "
                        "sandbox)")
            continue
        if not name.startswith(CORRALS_ENV):
            continue
        if name == "PYTHONPATH":
            outside = [p for p in env[name].split(os.pathsep) if p and not (
                os.path.normpath(p) == SDK_ROOT or
                path_inside(os.path.realpath(os.path.join(cwd, p)), cwd))]
            if not outside:
                continue
            return (f"PYTHONPATH names {as_json(outside[0])}: a tenant's agent imports from "
                    f"its cwd ({cwd}) and corral's SDK ({SDK_ROOT}) alone, which the "
                    "sandbox binds")
        return (f"{name}: names starting {', '.join(CORRALS_ENV)} are corral's and its "
                "operator's to set (what they name is bound into the sandbox or run)")
    return None
