"""A cluster task's live output in Redis (corral/cluster/clusteroutput.py), its journal
alone on a real redis-server: chunks kept at their positions and read back in order by
any node; a write without the claim's fence refused; a chunk whose MAC does not verify
not streamed; a write Redis does not take (noeviction at its maxmemory) told to the reader
in words, then sent again, with no gap and no duplicate; the stream closed by the task's
end, past which no write lands; a reader elsewhere woken by a chunk and by the end; the
newest chunks of a task gone without an end let go; a Redis away told to the reader."""

from __future__ import annotations

import asyncio
import contextlib
import re
from typing import Any

import msgspec
import pytest

from corral import jsonrpc
from corral.cluster import records
from corral.cluster.clusteroutput import SWEEP_AT, ClusterOutputs
from corral.cluster.connection import connect
from corral.cluster.keys import Keys
from corral.cluster.queue import ClusterTask
from corral.cluster.scripts import Scripts
from corral.cluster.trust import Trust
from corral.jsonrpc import RpcError
from corral.supervisor.config import ClusterSettings
from corral.supervisor.tasks.chunks import START, OutputChunk

from ..redis_harness import RedisServer
from .claimscript import claim_script

pytestmark = pytest.mark.timeout(60)
K = Keys("t")
TID = "0190a5c0-0000-7000-8000-0000000000f1"
KEY = b"k" * 32
BEAT = 0.2


async def claimed(s: Scripts, client: Any) -> ClusterTask:
    """TID submitted and claimed by incarnation n/1: the task as the node holds it."""
    await s.submit(keys=[K.task(TID), K.stream("acme", "w", 0), K.priorities("acme", "w"),
                         K.agents, K.live],
                   args=[TID, "w", b"{}", 0, "", "", "1.0", "n", 0, "0", "", "", "", "", "acme",
                         "mac"])
    entry = await client.hget(K.task(TID), "entry")
    token, *_ = await claim_script(s)(
        keys=[K.task(TID), K.attempts(TID), K.fence, K.stream("acme", "w", 0)],
        args=["n/1", "n", "2.0", entry, records.claimed_attempt("n", 2.0), 2, "30.0", "acme"])
    return ClusterTask(TID, "w", msgspec.Raw(b"{}"), 0, 30.0, 1, 1.0, token=token, base=0,
                       entry=entry.decode(), stream=K.stream("acme", "w", 0),
                       consumer="n/1")


def texts(chunks: list[OutputChunk]) -> list[tuple[str, str]]:
    return [(c.id, c.data) for c in chunks]


async def test_chunks_are_read_back_in_order_and_a_refused_write_is_told_then_sent_again(
        client: Any, redis: RedisServer) -> None:
    s = Scripts(client)
    held = {TID: await claimed(s, client)}
    said: list[str] = []
    out = ClusterOutputs(s, K, Trust(KEY, "t", said.append), held.get, client, BEAT)
    elsewhere = ClusterOutputs(s, K, Trust(KEY, "t", said.append), {}.get, client, BEAT)
    out.put(OutputChunk(TID, 1, 1, "one"))
    out.put(OutputChunk(TID, 1, 2, "two"))
    assert texts(await out.read(TID, START, 10)) == [("1-1", "one"), ("1-2", "two")]
    assert texts(await elsewhere.read(TID, (1, 1), 10)) == [("1-2", "two")]
    assert await elsewhere.holds(TID) and not await elsewhere.holds(TID[:-1] + "0")

    # Redis refuses writes (noeviction at maxmemory): what it holds is read, then the
    # reader is told why the rest is not there, and from where to resubscribe
    await client.config_set("maxmemory", "1")
    try:
        out.put(OutputChunk(TID, 1, 3, "three"))
        assert texts(await out.read(TID, START, 10)) == [("1-1", "one"), ("1-2", "two")]
        with pytest.raises(RpcError) as refused:
            await out.read(TID, (1, 2), 10)
        assert refused.value.code == jsonrpc.UNAVAILABLE
        assert re.fullmatch(
            re.escape(f"the live output of task {TID} after 1-2 is not in the cluster's "
                      "Redis: it did not take its chunks (")
            + re.escape("command not allowed when used memory > 'maxmemory'. script: "
                        f"{s.output.sha}, on @user_script:") + r"\d+"
            + re.escape("); they are sent again each beat: resubscribe after 1-2"),
            refused.value.message), refused.value.message
    finally:
        await client.config_set("maxmemory", "0")
    for _ in range(100):  # sent again within a beat: no gap, no duplicate
        with contextlib.suppress(RpcError):
            if len(got := texts(await out.read(TID, START, 10))) == 3:
                break
        await asyncio.sleep(BEAT / 2)
    assert got == [("1-1", "one"), ("1-2", "two"), ("1-3", "three")]
    assert out.stats()["failed"] >= 1 and out.stats()["waiting_bytes"] == 0

    # a write of a claim this node no longer holds: refused by the fence
    held[TID] = ClusterTask(TID, "w", msgspec.Raw(b"{}"), 0, 30.0, 1, 1.0,
                            token=held[TID].token + 7, base=0, entry="0-1",
                            stream=K.stream("acme", "w", 0), consumer="n/1")
    out.put(OutputChunk(TID, 1, 4, "late"))
    await out.caught_up()
    assert out.stats()["refused"] == 1
    assert [c.id for c in await elsewhere.read(TID, START, 10)] == ["1-1", "1-2", "1-3"]

    # a chunk forged in Redis (no MAC of the cluster's key) is not streamed
    await client.xadd(K.output(TID), {"m": "forged", "d": "evil"}, id="1-9")
    assert [c.id for c in await elsewhere.read(TID, START, 10)] == ["1-1", "1-2", "1-3"]
    assert said == [f"cluster: refused output chunk 1-9 of task {TID} from Redis: its MAC "
                    "does not verify with this node's cluster key; that chunk is not "
                    "streamed (a Redis writer without the key made or changed it, or the "
                    "nodes' key files differ: see `corral nodes`)"], said
    await out.close()


async def test_a_reader_elsewhere_is_woken_by_a_chunk_and_ends_with_the_task(
        client: Any, redis: RedisServer) -> None:
    s = Scripts(client)
    held = {TID: await claimed(s, client)}
    out = ClusterOutputs(s, K, Trust(None, "t", print), held.get, client, 10.0)
    elsewhere = ClusterOutputs(s, K, Trust(None, "t", print), {}.get, client, 10.0)
    waiting = asyncio.ensure_future(elsewhere.more(TID, START))
    await asyncio.sleep(0.1)
    assert not waiting.done()
    out.put(OutputChunk(TID, 1, 1, "one"))
    assert await asyncio.wait_for(waiting, 5) is True  # (long before its 10 s beat)
    waiting = asyncio.ensure_future(elsewhere.more(TID, (1, 1)))
    await asyncio.sleep(0.1)
    # the task's end (the FINISH script's fragment, scripts._ended) closes the stream
    task = held[TID]
    assert await s.finish(keys=[K.task(TID), K.attempts(TID), K.stream("acme", "w", 0),
                                K.outcomes, *K.listed],
                          args=[task.token, TID, "succeeded", b"{}", b"", "3.0", task.entry,
                                0, 60, 0, "0", ""]) == 1
    assert await asyncio.wait_for(waiting, 5) is False
    assert await elsewhere.more(TID, (1, 1)) is False
    out.put(OutputChunk(TID, 1, 2, "after the end"))  # not past the end: not kept
    await out.caught_up()
    assert texts(await elsewhere.read(TID, START, 10)) == [("1-1", "one")]
    assert 0 < await client.ttl(K.output(TID)) <= await client.ttl(K.task(TID))
    await out.close()


async def test_the_tail_of_a_task_that_left_without_an_end_is_let_go(
        client: Any, redis: RedisServer) -> None:
    """A task suspended and handed back to the cluster leaves the node without an end
    there: its newest chunks, kept for readers here, go at a later sweep (SWEEP_AT)."""
    s = Scripts(client)
    held: dict[str, ClusterTask] = {TID: await claimed(s, client)}
    out = ClusterOutputs(s, K, Trust(None, "t", print), held.get, client, BEAT)
    out.put(OutputChunk(TID, 1, 1, "one"))
    await out.caught_up()
    del held[TID]  # (as suspension.settle lets it go)
    for i in range(SWEEP_AT):  # other tasks' first chunks (no record: the fence refuses)
        other = f"{TID[:-2]}{i:02x}"
        held[other] = ClusterTask(other, "w", msgspec.Raw(b"{}"), 0, 30.0, 1, 1.0,
                                  token=1, base=0, entry="0-1", stream="s", consumer="n/1")
        out.put(OutputChunk(other, 1, 1, "x"))
    assert out.stats()["tails"] == SWEEP_AT  # TID's gone, the 64 running ones kept
    await out.caught_up()
    assert out.stats()["tails"] == 0 and out.stats()["refused"] == SWEEP_AT
    assert texts(await out.read(TID, START, 10)) == [("1-1", "one")]
    await out.close()


async def test_a_reader_where_redis_does_not_answer_is_told_so() -> None:
    """Redis away: the read, the look for the task and the follow each fail in words."""
    away = connect(ClusterSettings(redis="redis://127.0.0.1:1", name="t", node="n"), "n")
    try:
        reader = ClusterOutputs(Scripts(away), K, Trust(None, "t", print), {}.get, away,
                                BEAT)
        for what, call in (("read from", reader.read(TID, (1, 2), 10)),
                           ("read from", reader.holds(TID)),
                           ("followed in", reader.more(TID, (1, 2)))):
            with pytest.raises(RpcError) as unread:
                await call
            assert unread.value.code == jsonrpc.UNAVAILABLE
            assert re.fullmatch(
                re.escape(f"the live output of task {TID} was not {what} the cluster's "
                          "Redis (") + r"Error 111 connecting to 127\.0\.0\.1:1\. "
                r"Connection refused\)", unread.value.message), unread.value.message
    finally:
        await away.aclose()
