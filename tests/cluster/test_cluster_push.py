"""The push configs of a cluster's tasks in Redis (cluster/clusterpush.py), on a real
redis-server: a record whose MAC does not verify with the cluster's key (written by a
Redis writer without it: pointing a task's pushes, and their tokens, at its own URL) is
neither listed nor delivered to, and is counted and said; a task has at most its most;
one node delivers a task's events at a time until its lease lapses."""

from __future__ import annotations

from typing import Any

from corral.cluster.clusterpush import ClusterPush
from corral.cluster.keys import Keys
from corral.cluster.trust import Trust

KEY = b"k" * 32


async def test_a_forged_push_config_is_neither_listed_nor_delivered_to(client: Any) -> None:
    said: list[str] = []
    trust = Trust(KEY, "t", said.append)
    home = ClusterPush(client, Keys("t"), trust)
    assert await home.put("task1", "mine", b'{"url":"https://a.example/"}', 2)
    # a writer without the key: a record of its own, and the node's record changed
    key = Keys("t").push("task1")
    await client.hset(key, "evil", b'1 ' + b"0" * 64 + b' {"url":"https://evil.example/"}')
    kept = await client.hget(key, "mine")
    await client.hset(key, "mine", kept.replace(b"a.example", b"evil.example"))
    assert await home.of("task1") == {}
    assert trust.refused["pushes"] == 2
    # (each said once, in the order Redis gives the hash's fields: none promised)
    assert sorted(said) == [
        f"cluster: refused push config task1/{name} from Redis: its MAC does not verify "
        "with this node's cluster key; it is not listed nor delivered to (a Redis writer "
        "without the key made or changed it, or the nodes' key files differ: see "
        "`corral nodes`)" for name in ("evil", "mine")]
    # made again by a node, it is listed again (and the forged one still is not)
    assert await home.put("task1", "mine", b'{"url":"https://a.example/"}', 3)
    assert await home.of("task1") == {"mine": b'{"url":"https://a.example/"}'}


async def test_a_task_has_at_most_its_most_and_one_node_delivers_at_a_time(
        client: Any) -> None:
    trust = Trust(KEY, "t", lambda _: None)
    home = ClusterPush(client, Keys("t"), trust)
    assert await home.put("task2", "a", b"{}", 2)
    assert await home.put("task2", "b", b"{}", 2)
    assert not await home.put("task2", "c", b"{}", 2)
    assert await home.put("task2", "a", b"[]", 2)  # (its own id: replaced)
    assert list(await home.of("task2")) == ["b", "a"]
    assert await home.tasks() == ["task2"]
    assert await home.lead("task2", "node-a", 30)
    assert not await home.lead("task2", "node-b", 30)
    assert await home.lead("task2", "node-a", 30)  # (said again)
    await client.delete(Keys("t").push_lead("task2"))  # its lease lapsed
    assert await home.lead("task2", "node-b", 30)
    await home.delete("task2", "a")
    await home.drop("task2")
    assert await home.of("task2") == {}
    assert await home.tasks() == []
