"""A worker with health checks the test steers by files in $HEALTH_DIR: `unready-N` makes
replica N's "ready" check fail, `dead-N` its "live" check (N: the replica, or `all`);
a task sleeps `sleep` seconds, or until the file `hold` names is there, and answers with
the worker's pid and replica."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from corral.worker import health_check, run

DIR = Path(os.environ["HEALTH_DIR"])
REPLICA = os.environ.get("CORRAL_REPLICA", "0")


def _flag(kind: str) -> Path | None:
    return next((p for p in (DIR / f"{kind}-{REPLICA}", DIR / f"{kind}-all") if p.exists()),
                None)


@health_check("ready")
def ready() -> Any:
    flag = _flag("unready")
    if flag is not None:
        return {"ok": False, "message": f"{flag.name} is there"}
    return True


@health_check("live")
def live() -> None:
    if _flag("dead") is not None:
        raise RuntimeError("the database is gone")


def handle(task_input: Any, ctx: Any) -> Any:
    time.sleep(float(task_input.get("sleep", 0)))
    while "hold" in task_input and not Path(task_input["hold"]).exists():
        time.sleep(0.01)
    return {"pid": os.getpid(), "replica": ctx.replica}


run(handle)
