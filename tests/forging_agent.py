"""A worker that writes corral's own step names (test_spawn.py): on its task's first
attempt `step/put` of a spawn's step naming a child of its choosing, and of a lineage; it
writes what it was answered to the file its input names and exits, and on the second
attempt spawns under the key."""

import json
import sys
from typing import Any

from raw_worker import call, serve

FORGED = "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b"


def run(p: dict[str, Any]) -> Any:
    if p["attempt"] == 1:
        answers = [call("step/put", {"task_id": p["task_id"], "name": name, "result": result})
                   for name, result in (("spawn:k", {"child": FORGED, "agent": "other"}),
                                        ("corral/lineage", {"depth": 0}))]
        with open(p["input"]["out"], "w") as f:
            json.dump(answers, f)
        sys.exit(3)  # the task's retry is the next attempt
    return call("task/spawn", {"task_id": p["task_id"], "key": "k", "agent": "other",
                               "input": {}})


serve(run)
