"""A cluster's asks of calls of no task (docs/approvals.md#on-a-cluster, decision 2230):
kept in Redis beside its tasks' asks, their owner (the replica's incarnation) standing in
for a task, so that its end withdraws them at every node: the replica's exit at once, its
node's death once the owner's record lapses; the call's caller gone, that ask alone. test_doors.py's
`test_an_ask_of_a_call_of_no_task_is_every_nodes` lists and decides one at the other
node; here its owner goes. A cluster home of its own: a node is killed."""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from corral import jsonrpc
from corral.supervisor.tasks.replicacalls import CALLER_GONE

from ..cluster.harness import kill9
from ..contract.home import made
from ..test_daemon_cli import wait_until
from ..test_held_call_client_gone import post
from .conftest import TRUSTED, Entry, agents
from .door_agent import VERSION
from .test_doors import PATIENCE, Made

HELD = {"host": "ask.example"}  # (conftest's rule "ask host" holds it for a person)


@pytest.fixture
def cluster() -> Iterator[Entry]:
    tmp = Path(tempfile.mkdtemp(prefix="notask-"))  # short: the daemon's sockets are in it
    (tmp / "description").write_text(TRUSTED)
    try:
        with made("cluster", tmp, agents(tmp)) as home:
            yield Entry(home)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def ended(d: Entry, ask: dict[str, Any]) -> dict[str, Any]:
    """The ask as the first node reads it, once it has ended there."""
    return dict(wait_until(lambda: (lambda a: a if a["end"] is not None else None)(
        d.ask("approvals.get", {"id": ask["id"]})), PATIENCE, f"ask {ask['id']} ended"))


def listed(d: Entry, ask: dict[str, Any]) -> bool:
    return any(a["id"] == ask["id"] for a in d.ask("approvals.list")["asks"])


@pytest.mark.deadline(240)
def test_a_replicas_exit_withdraws_its_ask_at_every_node(cluster: Entry) -> None:
    """The replica whose call of no task waits on the second node is restarted: the ask
    the first node listed is withdrawn there, by corral, and listed no more; the call is
    told its replica exited."""
    d = cluster
    call = Made(d, "caller", "/mcp idle", "pol__http_get", HELD, node=-1)
    held = call.ask(at=-1)
    assert listed(d, held)
    d.home.call("agents.restart", {"names": ["caller"]}, at=-1)
    gone = ended(d, held)
    assert (gone["end"], gone["by"]) == ("withdrawn", "corral"), gone
    assert not listed(d, held)
    assert call.outcome() == {"error": jsonrpc.REQUEST_CANCELLED, "message": (
        f"tool call pol__http_get was not decided before its replica exited "
        f"(ask {held['id']})")}


@pytest.mark.deadline(240)
def test_a_dead_nodes_ask_of_no_task_is_withdrawn_at_the_other(cluster: Entry) -> None:
    """The second node is killed (-9) while its replica's call of no task waits: its
    owner's record, renewed by that node alone, lapses, and the first node withdraws the
    ask as it next reads it: no person is shown a call no one waits on."""
    d = cluster
    call = Made(d, "caller", "/mcp/NAME idle", "pol__http_get", HELD, node=-1)
    held = call.ask(at=-1)
    assert listed(d, held)
    kill9(d.home.entry(-1))
    assert call.future.exception(PATIENCE) is not None  # (its gateway died with it)
    wait_until(lambda: not listed(d, held), PATIENCE, "the dead node's ask not listed")
    gone = ended(d, held)
    assert (gone["end"], gone["by"]) == ("withdrawn", "corral"), gone


@pytest.mark.deadline(240)
def test_an_ask_whose_caller_went_away_is_withdrawn_at_every_node(cluster: Entry) -> None:
    """The HTTP client of a replica's call of no task on the second node closes while the
    call waits (decision 2220): the ask the first node lists is withdrawn there with its
    reason, by corral, and a late approval at the first node is refused as withdrawn."""
    d = cluster
    env = d.home.call("tasks.run", {"agent": "caller", "input": {"env": True},
                                    "local": True}, at=-1)["output"]
    port = urlsplit(env["CORRAL_MCP_URL"]).port
    assert port is not None
    gone = post(port, "/mcp", env["CORRAL_MCP_TOKEN"], {
        "jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
            "name": "pol__http_get", "arguments": HELD, "_meta": {
                "io.modelcontextprotocol/protocolVersion": VERSION,
                "io.modelcontextprotocol/clientCapabilities": {}}}},
        {"Accept": "application/json, text/event-stream", "MCP-Protocol-Version": VERSION,
         "Mcp-Method": "tools/call", "Mcp-Name": "pol__http_get"})
    try:
        held = wait_until(lambda: next((a for a in d.ask("approvals.list")["asks"]
                                        if a["task_id"].startswith("replica:caller#")),
                                       None), PATIENCE, "the call's ask at the first node")
    finally:
        gone.close()  # the client goes away before anyone answers
    ended_ = ended(d, held)
    assert (ended_["end"], ended_["by"], ended_["data"]) == (
        "withdrawn", "corral", {"reason": CALLER_GONE}), ended_
    late = d.cli("approvals", "approve", held["id"])
    assert late.returncode == 1 and re.fullmatch(
        rf"corral: ask {held['id']} has ended: withdrawn by corral at \S+\n", late.stderr), \
        late.stderr
