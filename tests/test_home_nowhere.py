"""A task made apart from an engine's intake and a cluster's claim (a claim given back
as it is made) is kept nowhere (model.NOWHERE, DESIGN 25): its session's turn is given no
state and keeps no checkpoint, and it spawns no child, each refusal in its words (a child
or a state kept on this node would be no other node's to find), and it asks no person."""

from __future__ import annotations

import msgspec
import pytest

from corral import jsonrpc
from corral.askviews import AskKind, AskRequest
from corral.jsonrpc import RpcError
from corral.supervisor.tasks import Task
from corral.supervisor.tasks.model import NOWHERE, Resumer, SpawnOrder
from corral.supervisor.tasks.spawntree import Lineage


def _apart() -> Task:
    task = Task("orch", msgspec.Raw(b"{}"), 0, 10.0, 0, 0, task_id="t1")
    task.session = "s"
    return task


async def test_a_task_kept_nowhere_spawns_nothing_and_its_turns_keep_nothing() -> None:
    task = _apart()
    assert task.home is NOWHERE
    spawns, turns = task.home.spawns, task.home.turns
    refused = "task/spawn: task t1 is the cluster's and its spawns are not kept here"
    with pytest.raises(RpcError) as placed:
        await spawns.placed(task, "k")
    assert (placed.value.code, placed.value.message) == (jsonrpc.REFUSED, refused)
    order = SpawnOrder("leaf", "default", "k", b"{}", None, None, Lineage(1), 5)
    with pytest.raises(RpcError) as spawned:
        await spawns.spawn(task, order)
    assert (spawned.value.code, spawned.value.message) == (jsonrpc.REFUSED, refused)
    assert not await spawns.serves("leaf", "default")
    assert "t2" not in await spawns.children(task)  # task/wait: no child of it
    with pytest.raises(RpcError) as outcome:
        await spawns.outcome("t2")
    assert (outcome.value.code, outcome.value.message) == (
        jsonrpc.INVALID_PARAMS, "task/wait: task t2 is not kept here")
    assert turns.started(task, None) is None  # type: ignore[arg-type]
    with pytest.raises(RpcError) as checkpoint:
        await turns.checkpoint(task, {"n": 1})
    assert (checkpoint.value.code, checkpoint.value.message) == (
        jsonrpc.REFUSED,
        "session/checkpoint: task t1 is the cluster's and its session is not kept here")


async def test_a_task_kept_nowhere_asks_no_one() -> None:
    """Its ask would be this node's, not found by the node that resumes it: refused before
    anything is kept, and no suspension gives it to anyone."""
    task = _apart()
    asks = task.home.asks
    req = AskRequest(AskKind.APPROVAL, None, "t1", 1, "orch", "tool:1", {"tool": "x"}, None)
    with pytest.raises(RpcError) as kept:
        await asks.keep(task, req)
    assert (kept.value.code, kept.value.message) == (
        jsonrpc.REFUSED, "task t1 is the cluster's and its asks of a person are not kept "
                         "here: its approval was not asked")
    assert await asks.find(task, "tool:1") is None
    assert await asks.read("ask-1") is None
    assert await asks.withdraw("t1") == []
    assert await asks.give_back(task, "waited") is Resumer.NOBODY
