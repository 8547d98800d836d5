"""What running an agent from a release means to its process (docs/packages.md): the
release's venv first on PATH (so `python` in its command is the release's, cold or warm)
and the running corral's worker SDK on PYTHONPATH (a package's lock need not name corral).
"""

from __future__ import annotations

import os

SOURCE = "src"  # the package's source: the agent's cwd
VENV = "venv"  # the environment uv built, at its final path
READY = "READY"  # written last: a release without it is not one


def release_environment(env: dict[str, str], release: str, sdk: str | None) -> None:
    """Make `env` (a process's whole environment) run `release`."""
    venv = os.path.join(release, VENV)
    env["VIRTUAL_ENV"] = venv
    env["PATH"] = os.path.join(venv, "bin") + os.pathsep + env.get("PATH", os.defpath)
    env.pop("PYTHONHOME", None)
    if sdk is not None:
        # after the agent's own PYTHONPATH, before the venv's site-packages: the running
        # corral's SDK, whichever the lock may have pinned
        paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        env["PYTHONPATH"] = os.pathsep.join([*paths, sdk])
