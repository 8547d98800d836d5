"""docs/cluster.md's parity table held (issue 56 item 2, decision 514): every task option
(the fields of the submit params' Struct) and every agent key (AgentSpec's) has its row,
and no row names what the code does not have; walked against two nodes, each option's
verdict is what its probe sees, each refused agent key is refused in the row's words, the
other keys together make a cluster agent that runs a task, and each feature's row names
a test that exists."""

from __future__ import annotations

import re
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import msgspec
import pytest

from corral import methods as m
from corral.cli.client import Client
from corral.supervisor.config import AgentSpec

from ..conftest import EXAMPLES, ROOT
from ..daemon_harness import PY
from ..redis_harness import RedisServer
from ..test_daemon_cli import wait_until
from .harness import STEADY_TTL, Node, nodes, sleeper
from .test_failover import answer_of, error_of

pytestmark = pytest.mark.timeout(180)

DOC = ROOT / "docs" / "cluster.md"
_ROW = re.compile(r"\| (option|agent key|feature) \| `?([^`|]+?)`? \| (cluster|local|refused)"
                  r" \| (.*) \|")
_QUOTED = re.compile(r'"(.+)"')
_AS = re.compile(r"^as `([^`]+)`")
_HELD_BY = re.compile(r"tests/[\w/]+\.py(?:::\w+)?")


class Row(NamedTuple):
    kind: str
    name: str
    verdict: str
    how: str


def table() -> list[Row]:
    text = DOC.read_text()
    section = text[text.index("## Parity: one node and the cluster"):]
    section = section[:section.index("\n## ", 1)]
    return [Row(*found.groups()) for line in section.splitlines()
            if (found := _ROW.fullmatch(line)) is not None]


def said(rows: list[Row], row: Row) -> re.Pattern[str]:
    """The refusal a row quotes (its own, or the row it says it is as): its words in
    order, "…" standing for any words between them."""
    by_name = {(r.kind, r.name): r for r in rows}
    while (same := _AS.match(row.how)) is not None:
        row = by_name[(row.kind, same.group(1))]
    quoted = _QUOTED.search(row.how)
    assert quoted is not None, f"refused row {row.name} quotes no reason"
    return re.compile(".*".join(re.escape(part.strip())
                                for part in quoted.group(1).split("…")), re.S)


def refused_so(rows: list[Row], row: Row, message: str | None) -> bool:
    return message is not None and said(rows, row).search(message) is not None


def test_every_task_option_and_agent_key_has_one_row_and_no_row_more() -> None:
    rows = table()
    options = [r.name for r in rows if r.kind == "option"]
    keys = [r.name for r in rows if r.kind == "agent key"]
    assert len(options) == len(set(options)) and len(keys) == len(set(keys))
    # the code's own definitions: what a submit may say, and an agent's table
    submit = {f.name for f in msgspec.structs.fields(m.TasksSubmit)}
    submit |= {f.name for f in msgspec.structs.fields(m.TasksRun)}
    assert set(options) == submit, (
        f"options without a row: {sorted(submit - set(options))}; rows of no option: "
        f"{sorted(set(options) - submit)}")
    # the cluster keeps every option a task may be given (issue 72)
    assert not [r.name for r in rows if r.kind == "option" and r.verdict == "refused"]
    spec = {f.name for f in msgspec.structs.fields(AgentSpec)}
    assert set(keys) == spec, (
        f"agent keys without a row: {sorted(spec - set(keys))}; rows of no key: "
        f"{sorted(set(keys) - spec)}")


def test_each_feature_row_names_the_test_that_holds_it() -> None:
    """(or is walked here: FEATURE_PROBES)"""
    for row in (r for r in table() if r.kind == "feature"):
        held = _HELD_BY.findall(row.how)
        assert held or row.name in FEATURE_PROBES, f"feature {row.name}: no test named"
        for ref in held:
            path, _, name = ref.partition("::")
            source = (ROOT / path).read_text()
            assert not name or f"def {name}(" in source, f"feature {row.name}: {ref}"


# -- the walk: two nodes, a running no agent, b running w and chat -----------------------
def session_chat() -> str:
    return textwrap.dedent(f"""
        [agents.chat]
        command = ["{PY}", "{ROOT}/tests/session_agent.py"]
        env = {{ PYTHONPATH = "{ROOT}" }}

        [teams.all]
        mode = "broadcast"
        members = ["w"]
    """)


def ran_on_b(got: dict[str, Any]) -> str:
    """A submit's answer with its outcome (wait): its verdict."""
    if "error" in got:
        return f"refused: {got['error']['message']}"
    result = got["result"]
    assert result["attempts"][0]["node"] == "b", result
    return "cluster"


def echo(a: Node, b: Node, **params: Any) -> str:
    task_input = {"do": "echo", "x": 1}
    got = answer_of(a, "tasks.submit", {"agent": "w", "input": task_input, "wait": 60,
                                        **params})
    if "result" in got:
        assert got["result"]["output"] == task_input, got
    return ran_on_b(got)


def timeout(a: Node, b: Node) -> str:
    got = answer_of(a, "tasks.submit", {"agent": "w", "input": {"do": "sleep", "seconds": 60},
                                        "timeout": 0.5, "wait": 60})
    assert got["result"]["status"] == "timed_out", got
    return ran_on_b(got)


def priority(a: Node, b: Node) -> str:
    got = answer_of(a, "tasks.submit", {"agent": "w", "input": {"do": "echo"},
                                        "priority": 7, "wait": 60})
    assert a.call("tasks.get", {"task_id": got["result"]["task_id"]})["priority"] == 7
    return ran_on_b(got)


def tags(a: Node, b: Node) -> str:
    got = answer_of(a, "tasks.submit", {"agent": "w", "input": {"do": "echo"},
                                        "tags": ["parity"], "wait": 60})
    assert b.call("tasks.get", {"task_id": got["result"]["task_id"]})["options"][
        "tags"] == ["parity"], got
    return ran_on_b(got)


def idempotency_key(a: Node, b: Node) -> str:
    asked = {"agent": "w", "input": {"do": "echo"}, "idempotency_key": "parity",
             "wait": 60}
    got = answer_of(a, "tasks.submit", asked)
    again = b.call("tasks.submit", asked)
    assert (again["task_id"], again["replayed"]) == (got["result"]["task_id"], True), again
    return ran_on_b(got)


def local(a: Node, b: Node) -> str:
    assert "no such agent: w" in (error_of(a, "tasks.submit", {
        "agent": "w", "input": {}, "local": True}) or "")
    got = b.call("tasks.submit", {"agent": "w", "input": {}, "local": True, "wait": 60})
    assert got["status"] == "succeeded" and "node" not in got["attempts"][0], got
    return "local"


def session(a: Node, b: Node) -> str:
    """Begun at b, which runs chat (a node that does not is refused: decision 1991), its
    next turn submitted at a."""
    b.call("tasks.submit", {"agent": "chat", "input": {"turn": 1}, "session": "p",
                            "wait": 60})
    got = answer_of(a, "tasks.submit", {"agent": "chat", "input": {"turn": 2},
                                        "session": "p", "wait": 60})
    assert got["result"]["output"]["turns"] == [1, 2], got  # the state went on
    return ran_on_b(got)


def team_call(a: Node, b: Node) -> str:
    """A call of b's team is the cluster's: kept in Redis, read from a too (which has no
    such team: a submit there has nothing to route it to), its member's step a cluster
    task (of w, which b runs)."""
    assert error_of(a, "tasks.submit", {"agent": "all", "input": {"do": "echo"}}) == (
        "no live node of cluster test runs agent all")
    got = b.call("tasks.submit", {"agent": "all", "input": {"do": "echo"}, "wait": 60})
    assert got["status"] == "succeeded", got
    seen = a.call("calls.get", {"call_id": got["task_id"]})
    assert seen["status"] == "succeeded" and seen["output"]["w"]["status"] == "succeeded"
    (step,) = seen["progress"]["steps"]
    assert a.call("tasks.get", {"task_id": step["task_id"]})["attempts"][0]["node"] == "b"
    return "cluster"


def chunks_on(n: Node, task_id: str) -> list[str]:
    """The chunks node `n`'s stream of the task holds, once the task has ended."""
    chunks: list[str] = []

    def took(method: str, params: Any) -> None:
        if method == "tasks.output":
            chunks.append(params["data"])

    with Client(n.sock) as c:
        info = c.call("tasks.stream", {"task_id": task_id}, took)
    assert info["status"] == "succeeded", info
    return chunks


def live_output(a: Node, b: Node) -> str:
    """A task's live output is kept in the cluster's Redis by the node that runs it (b)
    and read by any: its stream on a holds every chunk, as on b."""
    got = a.call("tasks.submit", {"agent": "w", "input": {"do": "emit", "chunks": ["x", "y"]},
                                  "wait": 60})
    assert got["status"] == "succeeded", got
    assert (chunks_on(a, got["task_id"]), chunks_on(b, got["task_id"])) == (
        ["x", "y"], ["x", "y"])
    return "cluster"


FEATURE_PROBES: dict[str, Callable[[Node, Node], str]] = {"team calls": team_call,
                                                          "live output": live_output}
TRACE = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
OPTION_PROBES: dict[str, Callable[[Node, Node], str]] = {
    "agent": echo, "input": echo, "wait": echo, "timeout": timeout, "priority": priority,
    "local": local, "session": session, "tags": tags, "idempotency_key": idempotency_key,
    "traceparent": lambda a, b: echo(a, b, traceparent=TRACE),
    "tracestate": lambda a, b: echo(a, b, traceparent=TRACE, tracestate="k=v"),
    "delay": lambda a, b: echo(a, b, delay=0.1),
    "not_before": lambda a, b: echo(a, b, not_before=time.time() + 0.1),
    "retry": lambda a, b: echo(a, b, retry={"retries": 1, "retry_on": ["failed"]}),
}
# a value that a cluster agent's table refuses, for each key the table says is refused
REFUSED_KEYS: dict[str, Any] = {
    "protocol": "none", "ready": "notify", "watchdog_sec": 5.0,
    "autoscale": {"min_replicas": 1, "max_replicas": 2}, "hibernate_after": 60.0,
}


def every_key(rows: list[Row]) -> dict[str, Any]:
    """One cluster agent's table giving every key the table does not say is refused,
    each at its default (the process's own where the default cannot run misbehave.py)."""
    default = AgentSpec(command=["x"])
    table = {r.name: msgspec.to_builtins(getattr(default, r.name)) for r in rows
             if r.kind == "agent key" and r.verdict != "refused" and r.name != "name"}
    return {**table, "command": [PY, str(EXAMPLES / "misbehave.py")],
            "env": {"PYTHONPATH": str(ROOT)}, "placement": "cluster"}


def test_the_table_walked_against_two_nodes(tmp: Path, redis: RedisServer) -> None:
    rows = table()
    with nodes(tmp, redis, {"a": "", "b": sleeper("w", concurrency=2) + session_chat()},
               ttl=STEADY_TTL) as ns:
        a, b = ns["a"], ns["b"]
        wait_until(lambda: sum(n["alive"] for n in a.nodes()["nodes"]) == 2,
                   what="both nodes alive")
        for row in (r for r in rows if r.kind == "option"):
            probe = OPTION_PROBES.get(row.name)
            assert probe is not None, f"option {row.name}: no probe walks its row"
            seen = probe(a, b)
            if row.verdict == "refused":
                assert seen.startswith("refused: ") and refused_so(rows, row, seen), (
                    row, seen)
            else:
                assert seen == row.verdict, (row, seen)
        for row in (r for r in rows if r.kind == "agent key" and r.verdict == "refused"):
            assert row.name in REFUSED_KEYS, f"agent key {row.name}: no refused value"
            refused = error_of(a, "agents.add", {
                "agents": {"probe": {"command": [PY, str(EXAMPLES / "misbehave.py")],
                                     row.name: REFUSED_KEYS[row.name]}},
                "cluster": True, "check": False})
            assert refused_so(rows, row, refused), (row, refused)
        for row in (r for r in rows if r.kind == "feature" and r.name in FEATURE_PROBES):
            assert FEATURE_PROBES[row.name](a, b) == row.verdict, row
        # the rest, all at once: the cluster takes the table and runs its task
        a.call("agents.add", {"agents": {"every": every_key(rows)}, "cluster": True})
        got = wait_until(lambda: (lambda got: got if "error" not in got else None)(
            answer_of(a, "tasks.submit", {"agent": "every", "input": {"do": "echo"},
                                          "wait": 30})),
            timeout=60, what="the agent of every key placed and running a task")
        assert got["result"]["status"] == "succeeded", got
