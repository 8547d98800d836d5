"""A worker that writes every input it is given to the file $RECORD, one JSON line each,
and answers which tenant's worker ran it ($WHO) after `hold` seconds (and once the file
its `gate` names exists, where it names one): the cluster's
tenant routing tests (tests/cluster/test_cluster_tenant_routing.py) read what reached
whose process."""

import json
import os
import time

from corral.worker import run


def handle(task_input, ctx):
    with open(os.environ["RECORD"], "a") as f:
        f.write(json.dumps(task_input) + "\n")
    time.sleep(float(task_input.get("hold", 0)))
    gate = task_input.get("gate")
    while gate is not None and not os.path.exists(gate):
        time.sleep(0.02)
    return {"by": os.environ["WHO"]}


run(handle)
