"""A worker for the task view's contract (tests/contract/test_task_view.py): each attempt
reports the usage its input lists (ctx.report_usage), then its first attempt fails (the
task's retry runs it again) and a later one returns its attempt."""

from corral.worker import TaskError, run


def handle(task_input, ctx):
    for report in task_input["reports"]:
        ctx.report_usage(**report)
    if ctx.attempt == 1:
        raise TaskError("failed after its usage, on purpose")
    return {"attempt": ctx.attempt}


run(handle)
