"""The agent of bench/soak.py: one worker for every kind of work the soak makes.

Its input says what to do (`do`), and every answer carries the tenant's `mark`, so a
record read by the wrong tenant gives itself away:
- `hello`: answers the mark (and says it on stderr, a line of the agent's log);
- `turn`: a turn of the task's session: appends the mark to the session's state and
  answers every turn the state held, so a turn given another tenant's state says so;
- `steps`: `n` named steps (`ctx.step`), journaled;
- `spawn`: `n` children of this same agent (`ctx.spawn`, then `ctx.wait`), their ids
  answered;
- `ask`: a question to a person (`ctx.ask`, the tenant answers it), answered back;
- `crash`: the worker exits mid-task (the task fails, the replica is started again);
- `sleep`: `seconds` asleep (past the task's timeout: the cap ends it).
"""

import os
import sys
import time

from corral.worker import run


def handle(task_input, ctx):
    do, mark = task_input.get("do", "hello"), task_input["mark"]
    if do == "turn":
        turns = [*(ctx.session_state or {"turns": []})["turns"], mark]
        ctx.checkpoint_session({"turns": turns})
        return {"mark": mark, "turns": turns}
    if do == "steps":
        got = [ctx.step(f"s{i}", lambda i=i: {"i": i, "mark": mark})
               for i in range(task_input.get("n", 3))]
        return {"mark": mark, "steps": got}
    if do == "spawn":
        ids = [ctx.spawn(ctx.agent, {"do": "hello", "mark": mark})
               for _ in range(task_input.get("n", 2))]
        ctx.wait(ids)
        return {"mark": mark, "children": ids}
    if do == "ask":
        answer = ctx.ask(f"a question of {mark}", {"type": "string"})
        return {"mark": mark, "answer": answer}
    if do == "crash":
        os._exit(3)
    if do == "sleep":
        time.sleep(task_input.get("seconds", 5))
    print(f"hello from {mark}", file=sys.stderr, flush=True)
    return {"mark": mark}


if __name__ == "__main__":
    run(handle)
