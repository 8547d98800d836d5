"""bench/gateways' holder of a model-gateway token: a corral agent that does nothing but
write its replica's own OPENAI_API_KEY (the token corral's model gateway knows its
callers by) to $TOKEN_FILE, so that the load generator, a process of no agent, can call
the gateway as this replica. Written whole then renamed: a reader never sees half."""

import os
from typing import Any

from corral.worker import run

path = os.environ["TOKEN_FILE"]
with open(path + ".tmp", "w") as f:
    f.write(os.environ["OPENAI_API_KEY"])
os.replace(path + ".tmp", path)


def handle(task_input: Any, ctx: Any) -> None:
    return None


if __name__ == "__main__":
    run(handle)
