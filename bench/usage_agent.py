"""An echo agent that reports a model call's usage (ctx.report_usage) for each task."""

from corral.worker import run


def handle(task, ctx):
    ctx.report_usage(input_tokens=100, output_tokens=20, cost_usd=0.0001, model="m")
    return task


run(handle)
