"""A durable call's new step row written by its task's submit script (cluster/rides.py,
decision 752), against a real redis-server: the row, the call's held ended rows and the
task in one script; a call whose lease another node took writes none of them and makes
no task (both the plain submit and the submit-and-claim), its holder told CONFLICT and
its later writes refused without asking Redis; a call not held is refused before Redis
is asked; the row in the node's journal (the engine told) only once Redis has it."""

from __future__ import annotations

from typing import Any

import pytest

from corral.cluster.rides import REFUSED, Ride, RideScripts
from corral.cluster.trust import TENANT
from corral.jsonrpc import CONFLICT, RpcError
from corral.supervisor.durable import StepRow

from .test_cluster_calls import CALL_ID, K, Node, killed, record, row
from .test_cluster_held_rows import _status, pair  # noqa: F401  (the fixture)

TASK = "0190a5c0-0000-7000-8000-0000000000aa"


def _running(step: str) -> StepRow:
    return StepRow(step, -1, "running", TASK, 1.0)


def _submit(n: Node, ride: Ride, claim: bool) -> tuple[Any, list[str], list[Any]]:
    """The riding submit (or submit-and-claim) of TASK, an agent `w` of the default
    tenant, as ClusterTasks and SubmitClaims lay out their keys and arguments."""
    scripts = RideScripts(n.calls.redis)
    keys = [K.task(TASK), K.stream("default", "w", 0), K.priorities("default", "w"),
            K.agents, K.live]
    args: list[Any] = [TASK, "w", b"{}", 0, "", "", "1.0", "a", 0, "0", ""]
    last = [b"", "", "default", n.calls.trust.sign(TENANT, TASK, "w", "default")]
    if not claim:
        return scripts.submit, [*keys, *ride.keys], [*args, *ride.args(), *last]
    claim_args = [n.membership.consumer, "a", "1.0", b"{}", 0, "0", K.prefix]
    return (scripts.submit_claim, [*keys, K.fence, *ride.keys],
            [*args, *claim_args, *ride.args(), *last])


async def test_a_new_row_and_the_held_rows_ride_with_the_tasks_submit(
        pair: tuple[Node, Node]) -> None:  # noqa: F811
    a, b = pair
    await a.calls.save_call(record())
    await a.calls.save_steps(CALL_ID, [row("first", -1, "out")])  # held
    noted: list[str] = []
    ride = a.calls.ride(CALL_ID, _running("second"), lambda: noted.append("noted"))
    assert a.calls.held == {}  # (taken by the ride)
    assert await _status(b, "first", -1) is None
    [got] = await a.calls.scripts.acknowledged([_submit(a, ride, claim=False)])
    assert got == 1
    assert await a.calls.redis.hget(K.task(TASK), "status") == b"queued"
    fetched = await b.calls.fetch(CALL_ID)
    assert fetched is not None
    assert fetched.rows == {("first", -1): row("first", -1, "out"),
                            ("second", -1): _running("second")}
    assert (noted, a.local.load(CALL_ID).rows.get(("second", -1))) == ([], None)
    await ride.kept()
    assert noted == ["noted"]
    assert a.local.load(CALL_ID).rows[("second", -1)] == _running("second")


@pytest.mark.parametrize("claim", [False, True], ids=["submit", "submit_claim"])
async def test_a_ride_of_a_call_taken_over_writes_nothing_and_makes_no_task(
        pair: tuple[Node, Node], claim: bool) -> None:  # noqa: F811
    a, b = pair
    await a.calls.save_call(record())
    await a.calls.save_steps(CALL_ID, [row("first", -1, "a's")])  # held
    ride = a.calls.ride(CALL_ID, _running("second"), lambda: None)
    await killed(a)
    assert [t.record.call_id for t in await b.calls.orphans()] == [CALL_ID]
    [got] = await a.calls.scripts.acknowledged([_submit(a, ride, claim)])
    assert got == ([REFUSED] if claim else REFUSED)
    assert await a.calls.redis.exists(K.task(TASK)) == 0
    assert await a.calls.redis.xlen(K.stream("default", "w", 0)) == 0
    assert await _status(b, "first", -1) is None
    assert await _status(b, "second", -1) is None
    refused = a.calls.lost_lease(CALL_ID)
    assert (refused.code, refused.message) == (CONFLICT, (
        f"call {CALL_ID} not kept: it is no longer this node's (its lease as a/1, fence "
        "1): another node took it over"))
    assert a.calls.fenced == 1
    with pytest.raises(RpcError) as late:  # refused without asking Redis
        a.calls.ride(CALL_ID, _running("third"), lambda: None)
    assert late.value.message == refused.message


async def test_a_call_not_held_here_is_refused_a_ride(pair: tuple[Node, Node]) -> None:  # noqa: F811
    a, _b = pair
    with pytest.raises(RpcError) as refused:
        a.calls.ride(CALL_ID, _running("first"), lambda: None)
    assert (refused.value.code, refused.value.message) == (
        CONFLICT, f"call {CALL_ID} not kept: another node holds it")
