"""A worker that speaks the protocol by hand, with no SDK (tests' raw workers import it:
forging_agent.py, replaying_agent.py): `serve(run)` answers `initialize`, gives each
`task/run`'s params to `run` and answers with what it returns as the output, and
answers any other request (a ping) with an empty result; `call` is a request of the
worker's own, its answer returned (pings meanwhile answered)."""

import json
import sys
from collections.abc import Callable
from typing import Any

_next = [1000]


def send(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def call(method: str, params: dict[str, Any]) -> dict[str, Any]:
    _next[0] += 1
    mine = _next[0]
    send({"jsonrpc": "2.0", "id": mine, "method": method, "params": params})
    for line in sys.stdin:
        message = json.loads(line)
        if message.get("id") == mine and "method" not in message:
            return message  # type: ignore[no-any-return]
        if "method" in message and "id" in message:  # a ping meanwhile
            send({"jsonrpc": "2.0", "id": message["id"], "result": {}})
    raise SystemExit(1)


def serve(run: Callable[[dict[str, Any]], Any]) -> None:
    for line in sys.stdin:
        msg = json.loads(line)
        method = msg.get("method")
        if method == "initialize":
            send({"jsonrpc": "2.0", "id": msg["id"],
                  "result": {"protocol_version": "1", "capabilities": {}}})
        elif method == "task/run":
            send({"jsonrpc": "2.0", "id": msg["id"], "result": {"output": run(msg["params"])}})
        elif "id" in msg and "method" in msg:
            send({"jsonrpc": "2.0", "id": msg["id"], "result": {}})
