"""A worker for the sessions tests (tests/test_sessions.py): each task is a turn of a
conversation. It appends `turn` to the session's state (`{"turns": [...]}`), checkpoints
it (ctx.checkpoint_session) and answers the turns so far, its pid and whether it was
given a state. Before the checkpoint, on its first attempt: `die` SIGKILLs itself (with
`marker` written), `hang` writes `marker` and waits to be killed (the daemon is); `hold`
(a FIFO's path) waits until the test opens the FIFO for writing."""

import os
import signal
import threading

from corral.worker import run


def handle(task_input, ctx):
    given = ctx.session_state
    state = given or {"turns": []}
    how = task_input.get("how")
    if task_input.get("hold"):
        with open(task_input["hold"], "rb") as fifo:  # blocks until the test opens it
            fifo.read()
    if how and ctx.attempt == 1:
        with open(task_input["marker"], "w") as f:
            f.write(str(task_input["turn"]))
        if how == "die":
            os.kill(os.getpid(), signal.SIGKILL)
        threading.Event().wait()  # until the daemon is killed (stdin EOF ends us)
    turns = [*state["turns"], task_input["turn"]]
    ctx.checkpoint_session({"turns": turns})
    return {"turns": turns, "pid": os.getpid(), "given": given is not None,
            "session": ctx.session, "attempt": ctx.attempt}


run(handle)
