"""An agent for tests/test_attack_s18.py: sandbox_agent.py's tries, and one more a tenant's
agent may make in the directory it writes: a path there moved away and a link put in its
place (what another agent of its tenant is given as its cwd)."""

import os
from typing import Any

from corral.worker import run
from tests.sandbox_agent import handle as tried


def handle(task: dict[str, Any], ctx: Any) -> dict[str, Any]:
    if task["do"] != "swap":
        return tried(task, ctx)
    try:
        os.rename(task["path"], task["path"] + ".moved")
        os.symlink(task["target"], task["path"])
        return {"ok": task["path"]}
    except OSError as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}


if __name__ == "__main__":
    run(handle)
