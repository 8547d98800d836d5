"""An attacker's pass over a cluster task's idempotency key (decision 1390's KeyStore in
Redis, issue 86's pass): the key's value names the task a key sent again is answered by,
unsigned, so a writer of the cluster's Redis could point a tenant's key at another
tenant's task and have its signed outcome given to the first tenant's caller. A key sent
again is answered only by its own tenant's task of the agent asked."""

from __future__ import annotations

import json
import os
from pathlib import Path

import redis as redis_py

from corral.taskkeys import KEEP_SECONDS, digest, kept_as
from corral.taskoptions import TaskOptions

from ..redis_harness import RedisServer
from ..test_idempotent_submission import recorder, runs
from .harness import STEADY_TTL, nodes


def test_a_key_forged_to_name_another_tenants_task_gives_its_output_to_no_one(
        tmp: Path, redis: RedisServer) -> None:
    record, record_x = tmp / "record", tmp / "record-x"
    agents = (recorder("rec", record) + recorder("rec-x", record_x, "acme")
              + "\n[tenants.acme]\n")
    with nodes(tmp, redis, {"a": agents}, ttl=STEADY_TTL) as ns:
        a = ns["a"]
        r = a.run("rec-x", '{"secret": 1}')
        assert r.returncode == 0, r.stderr
        theirs = json.loads(r.stdout)
        assert theirs["output"] == {"by": "rec-x"}
        # the operator's key, written by a Redis writer to name acme's task, accepted
        # ('a') and claimed ('p'), with the digest of the request it expects
        for state, key in (("a", "forged"), ("p", "claimed")):
            asked = digest("rec", b'{"n": 1}', TaskOptions(idempotency_key=key), False)
            direct = redis_py.Redis.from_url(redis.url)
            try:
                kept = kept_as(key, f"uid {os.getuid()}")  # (the CLI's: decision 1792)
                direct.set(f"corral:{{test}}:idem:default:{kept}",
                           f"{theirs['task_id']} {asked} {state}",
                           px=int(KEEP_SECONDS * 1000))
            finally:
                direct.close()
            for r in (a.run("rec", '{"n": 1}', "--idempotency-key", key),
                      a.cli("submit", "rec", "--input", '{"n": 1}', "--idempotency-key",
                            key)):
                assert "rec-x" not in r.stdout, r.stdout
                assert r.returncode == 1, r.stdout
                assert (f"idempotency key {key} was used for another request: send a "
                        "new key") in r.stderr
        assert runs(record) == []
        assert runs(record_x) == [{"secret": 1}]
