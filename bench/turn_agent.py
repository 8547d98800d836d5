"""A turn of a conversation for bench_cluster_sticky: appends the turn to the session's
state (`ctx.session_state`, a list of turns, each `pad` characters) and checkpoints it;
answers whether this worker process held the conversation already, as given (its own
memory of it, the fast path an agent keeps when its session's turns come back to it)."""

from corral.worker import run

memory: dict[str, list[str]] = {}


def handle(task, ctx):
    given = ctx.session_state or []
    held = memory.get(ctx.session) == given and bool(given)
    turns = [*given, str(task["turn"]) * task.get("pad", 1)]
    ctx.checkpoint_session(turns)
    memory[ctx.session] = turns
    return {"held": held}


run(handle)
