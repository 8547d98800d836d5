"""A worker that asks for the same named step many times (test_durable.py): on its task's
first attempt it keeps step "s" and exits; on the retry it asks for "s" `asks` times and
for corral's own `corral/lineage`, and answers with what it was told."""

import sys
from typing import Any

from raw_worker import call, serve


def run(p: dict[str, Any]) -> Any:
    if p["attempt"] == 1:
        call("step/put", {"task_id": p["task_id"], "name": "s", "result": 42})
        sys.exit(3)
    got = [call("step/get", {"task_id": p["task_id"], "name": "s"})["result"]
           for _ in range(p["input"]["asks"])]
    own = call("step/get", {"task_id": p["task_id"], "name": "corral/lineage"})
    return {"got": got, "own": own.get("error")}


serve(run)
