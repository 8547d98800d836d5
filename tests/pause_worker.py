"""A worker that holds PAUSE_MB megabytes (touched, so resident) and tells its pid and
resident memory: what a pause must keep. Tasks: {"do": "info"}, or {"do": "await",
"path": P} (wait until P exists, honouring cancellation)."""

import os
import time

from corral.worker import run

ballast = bytearray(int(os.environ.get("PAUSE_MB", "32")) * 1024 * 1024)
for i in range(0, len(ballast), 4096):
    ballast[i] = 1


def rss_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def handle(task, ctx):
    if task.get("do") == "await":
        while not os.path.exists(task["path"]):
            ctx.check_cancelled()
            time.sleep(0.01)
    return {"pid": os.getpid(), "rss_kb": rss_kb(), "ballast": len(ballast)}


if __name__ == "__main__":
    run(handle)
