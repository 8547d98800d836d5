"""test_attack_s16.py's agent: a task reads the resource its input names ({"server",
"uri"}) on the worker link; its output the read's answer, or {"error": code, "message"}."""

from corral.worker import run


def handle(task, ctx):
    try:
        return ctx.read_resource(task["server"], task["uri"])
    except Exception as exc:  # the refusal is the answer under test
        return {"error": getattr(exc, "code", None), "message": str(exc)}


if __name__ == "__main__":
    run(handle)
