"""The smallest corral agent: answers every task with a greeting."""

from corral.worker import run


def handle(task_input, ctx):
    if isinstance(task_input, dict) and "parts" in task_input:
        # an A2A message (docs/a2a.md): what its caller wrote is its text parts
        task_input = " ".join(p["text"] for p in task_input["parts"] if "text" in p) or None
    name = (task_input.get("name", "world") if isinstance(task_input, dict)
            else "world" if task_input is None else task_input)
    return {"greeting": f"hello, {name}", "agent": ctx.agent, "replica": ctx.replica}


if __name__ == "__main__":
    run(handle)
