"""tests/doors/test_spans.py's agent of two task slots: a task makes one `tools/call` on
the worker link naming no task, with its input's `traceparent` in `_meta` (while the
replica could run another task, the call is its replica's, not this task's), and
returns the call's text."""

from corral.worker import run


def handle(task, ctx):
    said = ctx._worker.request("tools/call", {
        "name": task["tool"], "arguments": {}, "_meta": {"traceparent": task["traceparent"]}})
    return said["content"][0]["text"]


run(handle)
