"""A cluster task's idempotency key in Redis (cluster/submitkeys.py): the same key sent to
another node is the first task, and nothing runs twice, two nodes racing one key among
it; another request with the key is refused naming it. (What every home does alike, its
tenant's bound and a refused submission keeping no key, is tests/contract/
test_submission.py's.)"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import redis as redis_py

from corral.supervisor.tasks import new_id
from corral.taskkeys import KEEP_SECONDS, digest, kept_as
from corral.taskoptions import TaskOptions

from ..redis_harness import RedisServer
from ..test_daemon_cli import wait_until
from ..test_idempotent_submission import recorder, runs
from .harness import STEADY_TTL, nodes


def test_a_key_sent_to_another_node_is_the_first_task_and_runs_nothing_twice(
        tmp: Path, redis: RedisServer) -> None:
    record, record_x = tmp / "record", tmp / "record-x"
    agents = (recorder("rec", record) + recorder("rec-x", record_x, "acme")
              + "\n[tenants.acme]\n")
    with nodes(tmp, redis, {"a": agents, "b": ""}, ttl=STEADY_TTL,
               supervisor="idempotency_keys_per_tenant = 3") as ns:
        a, b = ns["a"], ns["b"]
        wait_until(lambda: len(a.nodes()["nodes"]) == 2, what="both nodes")
        r = a.run("rec", '{"n": 1}', "--idempotency-key", "k1")
        assert r.returncode == 0, r.stderr
        first = json.loads(r.stdout)
        assert (first["status"], first["output"]) == ("succeeded", {"by": "rec"})

        # on the other node: the same task, by the CLI's submit and run and the method
        r = b.cli("submit", "rec", "--input", '{"n": 1}', "--idempotency-key", "k1")
        assert (r.returncode, r.stdout.strip()) == (0, first["task_id"])
        r = b.run("rec", '{"n":1}', "--idempotency-key", "k1")
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout) == first
        again = b.call("tasks.submit", {"agent": "rec", "input": {"n": 1},
                                        "idempotency_key": "k1", "wait": 30})
        assert again == {**first, "replayed": True}
        # (with no wait: the same, its task having ended)
        assert b.call("tasks.submit", {"agent": "rec", "input": {"n": 1},
                                       "idempotency_key": "k1"}) == again
        # another request with the key: refused naming it
        r = b.cli("submit", "rec", "--input", '{"n": 2}', "--idempotency-key", "k1")
        assert r.returncode == 1
        assert ("idempotency key k1 was used for another request: "
                "send a new key") in r.stderr
        assert runs(record) == [{"n": 1}]

        # another tenant's key of the same name is its own
        r = a.run("rec-x", '{"n": 1}', "--idempotency-key", "k1")
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["task_id"] != first["task_id"]
        assert runs(record_x) == [{"n": 1}]

        # two nodes racing one key: one task
        def submit(n: str) -> str:
            r = ns[n].cli("submit", "rec", "--input", '{"n": 3}', "--idempotency-key",
                          "k3")
            assert r.returncode == 0, r.stderr
            return r.stdout.strip()

        with ThreadPoolExecutor(2) as pool:
            ids = list(pool.map(submit, ["a", "b", "a", "b"]))
        assert len(set(ids)) == 1
        assert a.json("task", ids[0], "--wait")["status"] == "succeeded"

        # the default tenant holds k1 and k3; a third key is its bound, a fourth refused
        assert b.cli("submit", "rec", "--input", "4", "--idempotency-key",
                     "k4").returncode == 0
        r = b.cli("submit", "rec", "--input", "5", "--idempotency-key", "k5")
        assert r.returncode == 1
        assert ("tenant default holds 3 idempotency keys of the last 24 h "
                "(idempotency_keys_per_tenant = 3)") in r.stderr
        wait_until(lambda: len(runs(record)) == 3, what="k4's task")
        assert sorted(map(json.dumps, runs(record))) == sorted(
            map(json.dumps, [{"n": 1}, {"n": 3}, 4]))


def test_a_claim_whose_node_died_before_its_submit_is_submitted_by_the_retry(
        tmp: Path, redis: RedisServer) -> None:
    record = tmp / "record"
    with nodes(tmp, redis, {"a": recorder("rec", record)}, ttl=STEADY_TTL) as ns:
        a = ns["a"]
        # what a node killed between its claim and its submit leaves in Redis
        # (submitkeys.py): the key claimed for an id no task has
        claimed = new_id()
        asked = digest("rec", b'{"n": 1}', TaskOptions(idempotency_key="lost"), False)
        direct = redis_py.Redis.from_url(redis.url)
        try:
            kept = kept_as("lost", f"uid {os.getuid()}")  # (the socket peer's: 1792)
            direct.set(f"corral:{{test}}:idem:default:{kept}", f"{claimed} {asked} p",
                       px=int(KEEP_SECONDS * 1000))
        finally:
            direct.close()
        got = a.call("tasks.submit", {"agent": "rec", "input": {"n": 1},
                                      "idempotency_key": "lost", "wait": 30})
        assert (got["task_id"], got["status"]) == (claimed, "succeeded")
        again = a.call("tasks.submit", {"agent": "rec", "input": {"n": 1},
                                        "idempotency_key": "lost"})
        assert (again["task_id"], again["replayed"]) == (claimed, True)
        assert runs(record) == [{"n": 1}]
