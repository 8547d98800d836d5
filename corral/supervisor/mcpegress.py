"""An MCP server's own egress (issue 88): `egress = "none"` on `[mcp_servers.NAME]` runs
its process as an agent's egress sandbox runs (bubblewrap, the same seccomp filter, the
system read-only, its program's installation and its script's directory read-only, its
cwd writable, corral's files masked), in a network namespace the
daemon holds (as root: egressdoors.py) where the only listeners are the daemon's, one at
each address of `egress_allow`, passing connections on to it; without root, in one of its
own with nothing in it, and `egress_allow` refuses the start."""

from __future__ import annotations

import os

from .config import McpServerSpec
from .sandbox import agents_own, program_paths, resolve_program, sandboxed
from .seccomp import egress_file
from .tuning import Tuning
from .zygote import warm_pythonpath


def server_sandboxed(argv: list[str], env: dict[str, str], uid: int | None,
                     spec: McpServerSpec, tuning: Tuning, held: bool,
                     trips: dict[str, str] | None = None) -> list[str]:
    """The bwrap command line a server with egress = "none" is started by; `held`: in
    the namespace the daemon holds for it (else bwrap makes an empty one); `trips`: its
    trips' binds (egresstrip.py)."""
    argv = [resolve_program(argv[0], env, spec.cwd), *argv[1:]]
    cwd = spec.cwd or os.getcwd()
    # (nothing its writable cwd holds is bound apart, as an agent's: decision 1825)
    read_only = [p for p in (warm_pythonpath(spec.env, cwd) or "").split(os.pathsep)
                 if p and not agents_own(p, [cwd])]
    script = os.path.join(cwd, argv[1]) if len(argv) > 1 else ""
    if os.path.isfile(script) and not agents_own(script, [cwd]):
        read_only.append(os.path.dirname(os.path.abspath(script)))  # an interpreter's
    read_only += program_paths(argv[0], [cwd])
    return sandboxed(argv, program=tuning.sandbox_program, cwd=cwd,
                     env=env, network="held" if held else "none",
                     root=(os.geteuid() if uid is None else uid) == 0, read_only=read_only,
                     protected=tuning.protected_paths, seccomp=egress_file(), trips=trips)
