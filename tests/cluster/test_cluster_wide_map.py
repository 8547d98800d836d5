"""A workflow's map wider than a node's Redis pool on a cluster: each item's step is a
cluster task whose submit takes one of the node's connections while it is in Redis, and
a map of `concurrency` 300 submits them together. The pool makes a submit wait for a
connection rather than fail it (redis-py's pool raises "Too many connections" past its
bound): every item runs and the run succeeds."""

from __future__ import annotations

from pathlib import Path

from ..redis_harness import RedisServer
from ..test_daemon_cli import wait_until
from ..test_workflows import agent_toml
from .harness import STEADY_TTL, nodes

ITEMS = 300

WIDE = f"""
[workflows.wide]
timeout = 300
[[workflows.wide.steps]]
name = "items"
agent = "wf"
input = {{ op = "items", n = {ITEMS} }}
[[workflows.wide.steps]]
name = "squares"
agent = "wf"
map = "$steps.items.output.items"
concurrency = {ITEMS}
input = {{ op = "square", x = "$item" }}
[[workflows.wide.steps]]
name = "total"
agent = "wf"
join = "squares"
input = {{ op = "sum", xs = "$steps.squares.output" }}
"""


def test_a_map_wider_than_the_pool_runs_every_item(tmp: Path, redis: RedisServer) -> None:
    fleet = {}
    for name in ("a", "b"):
        (tmp / name).mkdir()
        fleet[name] = agent_toml(tmp / name, replicas=2) + WIDE
    # (three hundred items at once hold a node's loop: at the short TTL a loaded host's
    # node lapsed, and its writes into the run were refused as no longer its lease's)
    with nodes(tmp, redis, fleet, ttl=STEADY_TTL) as ns:
        a = ns["a"]
        run_id = a.call("workflows.run", {"name": "wide", "input": {}})["run_id"]
        view = dict(wait_until(
            lambda: (v := a.call("runs.get", {"run_id": run_id, "limit": 1}))["status"]
            != "running" and v, timeout=240, what=f"run {run_id} to end"))
        assert view["status"] == "succeeded", (view.get("error"), view["steps"][-3:])
        assert view["output"] == sum(i * i for i in range(ITEMS))
        assert a.call("stats.get")["cluster"]["redis_error"] is None
