"""An agent with a dependency of its own: sizes and durations in words.

corral's worker SDK is not in uv.lock: every release can import the running corral's.
"""

import humanize

from corral.worker import TaskError, run


def handle(task, ctx):
    if not isinstance(task, dict):
        raise TaskError("give {\"bytes\": N} and/or {\"seconds\": S}")
    out = {"humanize": humanize.__version__}
    if "bytes" in task:
        out["size"] = humanize.naturalsize(task["bytes"])
    if "seconds" in task:
        out["duration"] = humanize.precisedelta(task["seconds"])
    return out


run(handle)
