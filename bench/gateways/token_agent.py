"""bench/gateways' holder of a gateway token: a corral agent that does nothing but write
its replica's own CORRAL_MCP_TOKEN (the token both of corral's gateways know its callers
by: its OPENAI_API_KEY too) to $TOKEN_FILE, so that the load generator, a process of no
agent, can call either gateway as this replica. Written whole then renamed: a reader
never sees half."""

import os
from typing import Any

from corral.worker import run

path = os.environ["TOKEN_FILE"]
with open(path + ".tmp", "w") as f:
    f.write(os.environ["CORRAL_MCP_TOKEN"])
os.replace(path + ".tmp", path)


def handle(task_input: Any, ctx: Any) -> None:
    return None


if __name__ == "__main__":
    run(handle)
