"""The corral worker of bench/bench_workflow_peers.py, a no-op step: given {"t": [...]}
it answers the list with the wall clock appended (a chain's edges are the differences);
given "block" it holds its replica (the children behind it stay pending); anything else
it answers as it is."""

import time

from corral.worker import run


def handle(task_input, ctx):
    if isinstance(task_input, dict) and "t" in task_input:
        return {"t": [*task_input["t"], time.time()]}
    if task_input == "block":
        time.sleep(3600)
    return task_input


run(handle)
