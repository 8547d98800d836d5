"""Garbage a Redis writer leaves on the outcomes stream, where every node's tail reads
the outcomes its clients wait for: an entry's attempts are not covered by the outcome's
MAC (a replayed signed outcome carries any bytes there, an insecure cluster's any
outcome), so what does not decode stops neither the tail nor the client's wait."""

from __future__ import annotations

import os
import subprocess
import threading
from pathlib import Path

import msgspec
import pytest

from ..conftest import ROOT
from ..daemon_harness import corral_popen
from ..redis_harness import RedisServer
from ..test_daemon_cli import wait_until
from .harness import nodes, sleeper
from .test_cluster_specs import log
from .test_cluster_trust import INSECURE, K, attacker

pytestmark = pytest.mark.timeout(120)


def test_an_outcome_whose_attempts_do_not_decode_has_the_record_read(
        tmp: Path, redis: RedisServer) -> None:
    """Entries for a task a client waits for whose attempts are no JSON, no list of
    attempts, or none, or (on an insecure cluster) whose status is no UTF-8, and an
    entry whose task is no UTF-8: each raised out of the outcomes loop (said as its failure, the
    entries after it in its read never read: the loop began again at the newest). Now
    such an entry carries no outcome: the waiter reads the record, waits on for the real
    outcome, and hears the progress written after the garbage."""
    r = attacker(redis)
    with nodes(tmp, redis, {"a": sleeper("w")}, extra=INSECURE) as ns:
        a = ns["a"]
        wait_until(lambda: a.nodes()["nodes"], what="a joined")
        gate = tmp / "gate"
        client = corral_popen(
            ["--socket", str(a.sock), "run", "w", "--input",
             msgspec.json.encode({"do": "await", "path": str(gate)}).decode()],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)})
        said: list[str] = []
        assert client.stderr is not None
        reader = threading.Thread(target=lambda: said.extend(client.stderr or ()), daemon=True)
        reader.start()
        try:
            def running() -> list[bytes]:
                return [t for t in r.zrange(K.live, 0, -1)
                        if r.hget(K.task(t.decode()), "status") == b"running"]
            [tid] = wait_until(running, what="the task running")
            forged = {"task": tid, "status": "succeeded", "output": '"forged"', "error": ""}
            for attempts in ({"attempts": "not json"}, {"attempts": '[{"replica": "x"}]'},
                             {}, {"status": b"\xff", "attempts": "[]"}):
                r.xadd(K.outcomes, {**forged, **attempts})
            r.xadd(K.outcomes, {"task": b"\xff", "progress": "{}"})  # (no task's id)
            r.xadd(K.outcomes, {"task": tid, "progress": '{"progress": 1, "message": "past"}'})
            wait_until(lambda: "progress: 1 past\n" in said, what="the progress after them")
            assert client.poll() is None  # still waiting: the record says it runs
            gate.touch()
            client.wait(timeout=30)
        finally:
            if client.poll() is None:
                client.kill()
                client.wait()
            reader.join(10)
        assert client.stdout is not None
        assert (client.returncode, msgspec.json.decode(client.stdout.read())) == (
            0, {"awaited": str(gate)}), said
        assert "the outcomes loop failed" not in log(a)
