"""A worker for the durable-work tests (tests/test_durable.py, tests/chaos/): a task of
`calls` steps, each a tool call (`counting__bump`) or, with `named`, a `ctx.step` around a
counted function (a line appended to `counter`). On its first attempt, after step
`stop_after`, it writes `marker` and then dies (`how = "die"`: SIGKILL of itself) or
waits to be killed (`"hang"`: the test kills the daemon). `diverge_at`: from that call on
a retry passes other arguments. `checkpoint`: each step is checkpointed
(ctx.checkpoint_task), and the output says what the retry was given."""

import os
import signal
import threading

from corral.worker import run


def bump(counter: str, i: int) -> str:
    fd = os.open(counter, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(fd, f"{i}\n".encode())
    os.close(fd)
    return f"counted {i}"


def handle(task_input, ctx):
    calls = int(task_input.get("calls", 10))
    stop_after = task_input.get("stop_after")
    results = []
    for i in range(1, calls + 1):
        if task_input.get("named"):
            results.append(ctx.step(f"s{i}", lambda i=i: bump(task_input["counter"], i)))
        else:
            arg = i
            if ctx.attempt > 1 and task_input.get("diverge_at") and i >= task_input["diverge_at"]:
                arg = i * 100
            res = ctx.call_tool("counting__bump", {"i": arg})
            results.append(res["content"][0]["text"])
        if task_input.get("checkpoint"):
            ctx.checkpoint_task({"done": i})
        if ctx.attempt == 1 and stop_after == i:
            with open(task_input["marker"], "w") as f:
                f.write(str(i))
            if task_input.get("how") == "die":
                os.kill(os.getpid(), signal.SIGKILL)
            threading.Event().wait()  # until the daemon is killed (stdin EOF ends us)
    return {"results": results, "attempt": ctx.attempt, "resumed": ctx.resumed,
            "task_state": ctx.task_state}


run(handle)
