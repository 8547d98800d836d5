"""The supervisor outlives the faults of its extras (issue 37, decision 165): an HTTP
server or gateway site that cannot bind is reported everywhere and retried with
backoff, and never keeps the agents from starting."""

from __future__ import annotations

import re
import shutil
import socket
from collections.abc import Iterator

import pytest

from .cluster.harness import cluster_key
from .daemon_harness import Daemon, hello, shared_tmpdir
from .redis_harness import REDIS_SERVER, RedisServer
from .test_daemon_cli import wait_until
from .test_drain import readyz, statuses


@pytest.fixture
def taken() -> Iterator[socket.socket]:
    """A loopback port someone else listens on."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    try:
        yield s
    finally:
        s.close()


def log(d: Daemon) -> str:
    return (d.state / "logs" / "corral.log").read_text()


def test_a_taken_http_port_leaves_every_agent_ready_and_binds_once_freed(
        taken: socket.socket) -> None:
    port = taken.getsockname()[1]
    tmp = shared_tmpdir()
    d = Daemon(tmp, hello("a", 2) + hello("b") + f'\n[http]\nlisten = "127.0.0.1:{port}"\n')
    try:
        d.start()  # READY=1: every agent is up, whatever the HTTP server's fate
        ready = d.notify.wait_for("READY")
        where = f"127.0.0.1:{port}"
        assert ready["STATUS"] == (f"2 agents, 3/3 replicas serving, 0 failed; HTTP server on "
                                   f"{where} not serving (Address already in use)")
        assert {k: v["state"] for k, v in d.status().items()} == {
            "a#0": "ready", "a#1": "ready", "b#0": "ready"}
        notices = d.json("status")["notices"]
        assert len(notices) == 1 and re.fullmatch(
            rf"HTTP server on {where}: not serving \(Address already in use\); retrying "
            r"in \d+ s \(attempt \d+\)", notices[0]), notices
        r = d.cli("status")
        assert r.returncode == 0, r.stderr
        assert (f"corral: HTTP server on {where}: not serving (Address already in use); "
                "retrying") in r.stderr
        extras = d.json("info")["extras"]
        assert [(e["name"], e["address"], e["serving"], e["error"]) for e in extras] == [
            ("HTTP server", where, False, "Address already in use")]
        assert extras[0]["attempts"] >= 1 and extras[0]["retry_in"] is not None
        assert (f"cannot start the HTTP server on {where}: Address already in use; the "
                "agents run without it, and it is retried with backoff") in log(d)
        taken.close()
        info = wait_until(lambda: (i := d.ask("daemon.info"))["extras"][0]["serving"] and i,
                          timeout=30, what="the HTTP server bound")
        assert info["extras"][0]["error"] is None and info["extras"][0]["attempts"] == 0
        assert readyz(port) == (200, {"status": "ready", "detail":
                                      "2 agents, 3/3 replicas serving, 0 failed",
                                      "problems": []})
        assert f"the HTTP server on {where} serves, after" in log(d)
        assert d.json("status")["notices"] == []
        assert d.stop() == 0
    finally:
        d.close()
        shutil.rmtree(tmp, ignore_errors=True)


def test_a_taken_gateway_port_is_told_by_readyz_and_retried(taken: socket.socket) -> None:
    gw = taken.getsockname()[1]
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        http = probe.getsockname()[1]
    tmp = shared_tmpdir()
    d = Daemon(tmp, hello("a") + f'\n[http]\nlisten = "127.0.0.1:{http}"\n'
                                 f'\n[gateway]\nlisten = "127.0.0.1:{gw}"\n')
    try:
        d.start()
        code, body = readyz(http)
        assert code == 200 and body["status"] == "ready"
        assert body["detail"] == (f"1 agent, 1/1 replica serving, 0 failed; gateway on "
                                  f"127.0.0.1:{gw} not serving (Address already in use)")
        assert [p.split(";")[0] for p in body["problems"]] == [
            f"gateway on 127.0.0.1:{gw}: not serving (Address already in use)"]
        taken.close()
        wait_until(lambda: all(e["serving"] for e in d.ask("daemon.info")["extras"]), timeout=30,
                   what="the gateway bound")
        assert readyz(http)[1]["problems"] == []
        assert f"gateway listening on 127.0.0.1:{gw}" in log(d)
        assert d.stop() == 0
    finally:
        d.close()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed")
def test_a_clusters_redis_down_at_start_is_told_and_the_agents_run() -> None:
    tmp = shared_tmpdir()
    redis = RedisServer(tmp / "redis")  # its port chosen, nothing listening there yet
    d = Daemon(tmp, hello("a", 2) + f'\n[cluster]\nredis = "{redis.url}"\nnode = "n1"\n'
                                    'beat = 0.2\nnode_ttl = 1.0\n'
                                    f'key_file = "{cluster_key(redis)}"\n')
    try:
        d.start()
        assert {k: v["state"] for k, v in d.status().items()} == {"a#0": "ready",
                                                                  "a#1": "ready"}
        refused = f"Error 111 connecting to 127.0.0.1:{redis.port}. Connection refused"
        assert d.json("status")["notices"] == [
            f"cluster: Redis does not answer ({refused}); tried again every beat, the "
            "local agents run on"]
        line = f"1 agent, 2/2 replicas serving, 0 failed; cluster Redis not answering ({refused})"
        # READY=1 may have gone out before the first beat failed: a later STATUS= tells it
        # (on a loaded host a first beat's connect may time out before it is refused: the
        # line says so, and the next beat's refusal is told in a line of its own)
        assert statuses(d, line) == line
        redis.start()
        wait_until(lambda: d.status_json()["notices"] == [], timeout=30,
                   what="Redis answering")
        assert "cluster: Redis answers again" in log(d)
        assert d.stop() == 0
    finally:
        d.close()
        redis.kill()
        shutil.rmtree(tmp, ignore_errors=True)

