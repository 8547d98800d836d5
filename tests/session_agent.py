"""A worker for the sessions tests (tests/test_sessions.py): each task is a turn of a
conversation. It appends `turn` to the session's state (`{"turns": [...]}`), checkpoints
it (ctx.checkpoint_session) and answers the turns so far, its pid and whether it was
given a state. Before the checkpoint, on its first attempt: `die` SIGKILLs itself (with
`marker` written), `hang` writes `marker` and waits to be killed (the daemon is); `hold`
(a FIFO's path) waits until the test opens the FIFO for writing, `hold_first` the same on
the first attempt only. `count` (a directory): each attempt leaves a file there named for
its turn, its attempt and its pid; `late` (a path): what the checkpoint of a held first
attempt was answered is written there."""

import os
import signal
import threading

from corral.worker import run


def handle(task_input, ctx):
    given = ctx.session_state
    state = given or {"turns": []}
    how = task_input.get("how")
    if task_input.get("count"):
        name = f"{task_input['turn']}.{ctx.attempt}.{os.getpid()}"
        open(os.path.join(task_input["count"], name), "w").close()
    hold = task_input.get("hold") or (ctx.attempt == 1 and task_input.get("hold_first"))
    if hold:
        with open(hold, "rb") as fifo:  # blocks until the test opens it
            fifo.read()
    if how and ctx.attempt == 1:
        with open(task_input["marker"], "w") as f:
            f.write(str(task_input["turn"]))
        if how == "die":
            os.kill(os.getpid(), signal.SIGKILL)
        threading.Event().wait()  # until the daemon is killed (stdin EOF ends us)
    turns = [*state["turns"], task_input["turn"]]
    late = task_input.get("late") if ctx.attempt == 1 else None
    try:
        ctx.checkpoint_session({"turns": turns})
    except Exception as exc:  # the refusal a fenced claim is given
        if late:
            with open(late, "w") as f:
                f.write(str(exc))
        raise
    if late:
        with open(late, "w") as f:
            f.write("kept")
    return {"turns": turns, "pid": os.getpid(), "given": given is not None,
            "session": ctx.session, "attempt": ctx.attempt}


run(handle)
