"""A cluster's push configs past a Redis writer's garbage (cluster/clusterpush.py): a
member of the set of tasks with configs, or a config's id in a task's hash, that is no
UTF-8 raised out of the read (UnicodeDecodeError, no error of the home's), and the read
of the set is every node's push lead loop's (a2a/operations.py `_take_up`): it stopped
for good, no lease renewed, no dead node's deliveries taken up. A member that is no
UTF-8 names no task and is dropped; a config whose id is none is refused as unsigned."""

from __future__ import annotations

from typing import Any

from corral.cluster.clusterpush import ClusterPush
from corral.cluster.keys import Keys
from corral.cluster.trust import Trust

K = Keys("t")


async def test_garbage_that_is_no_utf8_stops_no_read_of_the_configs(client: Any) -> None:
    said: list[str] = []
    store = ClusterPush(client, K, Trust(b"k" * 32, "t", said.append))
    assert await store.put("t1", "c1", b'{"kept": 1}', 16)
    await client.sadd(K.pushed, b"\xff\xfe", b"t2")  # (t2's configs expired)
    await client.hset(K.push("t1"), b"\xff", b"1 mac record")
    assert await store.tasks() == ["t1"]
    assert await client.smembers(K.pushed) == {b"t1"}  # (dropped, as an expired one)
    assert await store.of("t1") == {"c1": b'{"kept": 1}'}
    assert said == ["cluster: refused push config t1/\ufffd from Redis: its MAC does not "
                    "verify with this node's cluster key; it is not listed nor delivered "
                    "to (a Redis writer without the key made or changed it, or the nodes' "
                    "key files differ: see `corral nodes`)"]
