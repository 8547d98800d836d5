"""The smallest corral agent: answers every task with a greeting."""

from corral.worker import run


def handle(task_input, ctx):
    name = (task_input.get("name", "world") if isinstance(task_input, dict)
            else "world" if task_input is None else task_input)
    return {"greeting": f"hello, {name}", "agent": ctx.agent, "replica": ctx.replica}


if __name__ == "__main__":
    run(handle)
