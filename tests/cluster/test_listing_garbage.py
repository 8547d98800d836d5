"""`corral tasks` of a cluster past a Redis writer's garbage (cluster/listing.py): one
record whose fields do not parse (a priority or a time that is no number, an agent's name
that is no UTF-8) stopped the listing of every task, for every caller, on every node, as
did a member of the listed sets that is no UTF-8. A record that does not parse is passed
over, kept in its set (listed again once it parses); a member that is no UTF-8 names no
task and is dropped, as one whose record expired is."""

from __future__ import annotations

from typing import Any

from corral.cluster.scripts import Scripts

from .test_listing import K, page, submit_many


async def test_a_record_that_does_not_parse_is_passed_over_and_kept(client: Any) -> None:
    s = Scripts(client)
    ids = await submit_many(s, ["w"] * 4)
    for tid, field, garbage in ((ids[0], "priority", b"x"), (ids[1], "created", b"x"),
                                (ids[2], "agent", b"\xff")):
        good = await client.hget(K.task(tid), field)
        await client.hset(K.task(tid), field, garbage)
        assert (await page(client)) == ([t for t in ids if t != tid], None), field
        assert (await page(client, agent="w")) == ([t for t in ids if t != tid], None)
        assert await client.zscore(K.live, tid) == 0, field  # kept, not dropped
        await client.hset(K.task(tid), field, good)
        assert (await page(client)) == (ids, None), field


async def test_a_member_that_is_no_utf8_is_dropped(client: Any) -> None:
    s = Scripts(client)
    ids = await submit_many(s, ["w"] * 2)
    await client.zadd(K.live, {b"\xff\xfe": 0})
    assert (await page(client)) == (ids, None)
    assert await client.zrange(K.live, 0, -1) == [t.encode() for t in ids]
