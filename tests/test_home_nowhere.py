"""A task made apart from an engine's intake and a cluster's claim (a claim given back
as it is made) is kept nowhere (model.NOWHERE, DESIGN 25): its session's turn is given no
state and keeps no checkpoint, and it spawns no child, each refusal in its words (a child
or a state kept on this node would be no other node's to find)."""

from __future__ import annotations

import msgspec
import pytest

from corral import jsonrpc
from corral.jsonrpc import RpcError
from corral.supervisor.tasks import Task
from corral.supervisor.tasks.model import NOWHERE, SpawnOrder
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
    order = SpawnOrder("leaf", "default", "k", b"{}", None, None, Lineage(1), 5, 0)
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
