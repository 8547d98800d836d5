"""A worker for the spawn tests (tests/test_spawn.py, tests/chaos/test_spawn_kills.py):
an orchestrator that starts `children` tasks of `agent` (ctx.spawn, ctx.map), waits for
them (ctx.wait) and returns their outputs. On its first attempt, after spawn `stop_after`,
it writes `marker` and SIGKILLs itself (`how = "hang"`: waits for the test to kill the
daemon). With ORCH_ASYNC set in its environment its handler is a coroutine. `recurse`:
each child is this agent (`self`, else "orch") again, one level less, the deepest
doing `then`. `catch`: a refusal is the output ({"refused": message}) instead of the
task's failure. As a leaf (`leaf` in its input) it
appends its input's `n` to `count` and returns n * 2; with `marks` (a directory, passed
down to the leaves) it also makes a file there named for n, its task and its attempt.
`key`: its spawns' key (else the SDK's count). `or_else`: a spawn refused is made again,
its key and input, of that agent, once the file `or_else_gate` exists (the refusal
written first to the file `or_else_note`, if given).
`gate`: the orchestrator spawns once that file exists (`wait_gate`: and waits for its
children once that one does); `hold`: each leaf runs once that
file exists (the tests make them), `nap`: then sleeps that many seconds. `note`: a file
the refusal it catches is written to."""

import os
import signal
import threading
import time

from corral.worker import RequestError, run


def wait_for(path):
    while path and not os.path.exists(path):
        time.sleep(0.02)


def leaf(task_input, ctx):
    wait_for(task_input.get("hold"))
    time.sleep(task_input.get("nap", 0))
    fd = os.open(task_input["count"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(fd, f"{task_input['n']}\n".encode())
    os.close(fd)
    if task_input.get("marks"):
        name = f"{task_input['n']}.{ctx.task_id}.{ctx.attempt}"
        os.close(os.open(os.path.join(task_input["marks"], name), os.O_CREAT | os.O_WRONLY))
    return task_input["n"] * 2


def leaf_input(task_input, i):
    got = {"leaf": True, "n": i, "count": task_input["count"]}
    for passed in ("marks", "hold", "nap"):
        if task_input.get(passed):
            got[passed] = task_input[passed]
    return got


def die_if(task_input, ctx, i):
    if ctx.attempt == 1 and task_input.get("stop_after") == i:
        with open(task_input["marker"], "w") as f:
            f.write(str(i))
        if task_input.get("how") == "hang":
            threading.Event().wait()  # until the daemon is killed (stdin EOF ends us)
        os.kill(os.getpid(), signal.SIGKILL)


def orchestrate(task_input, ctx):
    n = int(task_input.get("children", 0))
    agent = task_input.get("agent", "leaf")
    if "recurse" in task_input:
        if task_input["recurse"] == 0:
            if "then" in task_input:  # the deepest does this (refusals its output)
                try:
                    return orchestrate(task_input["then"], ctx)
                except RequestError as exc:
                    return {"refused": exc.message, "code": exc.code}
            return 0
        me = task_input.get("self", "orch")
        child = ctx.spawn(me, {**task_input, "recurse": task_input["recurse"] - 1})
        got = ctx.wait([child])[0]
        if got["status"] != "succeeded":
            return got  # the failure of the deepest, up to the root
        out = got["output"]
        return 1 + out if isinstance(out, int) else out
    if task_input.get("wait_for"):
        return ctx.wait([task_input["wait_for"]])
    if task_input.get("map"):
        return ctx.map(agent, [{"leaf": True, "n": i, "count": task_input["count"]}
                               for i in range(n)])
    wait_for(task_input.get("gate"))
    ids = []
    for i in range(n):
        try:
            ids.append(ctx.spawn(agent, leaf_input(task_input, i), key=task_input.get("key")))
        except RequestError as exc:
            if not task_input.get("or_else"):
                raise
            if task_input.get("or_else_note"):  # (the test waits for it, then goes on)
                with open(task_input["or_else_note"], "w") as f:
                    f.write(f"{exc.code} {exc.message}")
            wait_for(task_input.get("or_else_gate"))
            ids.append(ctx.spawn(task_input["or_else"], leaf_input(task_input, i),
                                 key=task_input.get("key")))
        die_if(task_input, ctx, i + 1)
    wait_for(task_input.get("wait_gate"))
    return [r["output"] for r in ctx.wait(ids)]


async def orchestrate_async(task_input, ctx):
    n = int(task_input["children"])
    ids = []
    for i in range(n):
        ids.append(await ctx.spawn("leaf", {"leaf": True, "n": i,
                                            "count": task_input["count"]}))
        die_if(task_input, ctx, i + 1)
    if task_input.get("map"):
        return await ctx.map("leaf", [{"leaf": True, "n": 100 + i,
                                       "count": task_input["count"]} for i in range(3)])
    return [r["output"] for r in await ctx.wait(ids)]


def handle(task_input, ctx):
    if task_input.get("leaf"):
        return leaf(task_input, ctx)
    try:
        return orchestrate(task_input, ctx)
    except RequestError as exc:
        if task_input.get("catch"):
            if task_input.get("note"):  # (an output nobody may be able to read)
                with open(task_input["note"], "w") as f:
                    f.write(f"{exc.code} {exc.message}")
            return {"refused": exc.message, "code": exc.code}
        raise


async def handle_async(task_input, ctx):
    if task_input.get("leaf"):
        return leaf(task_input, ctx)
    return await orchestrate_async(task_input, ctx)


if os.environ.get("ORCH_ASYNC"):
    run(handle_async)
else:
    run(handle)
