"""The event bus across the cluster (cluster/events.py): an event published on one node
reaches the subscribers of the others, topic patterns matched on each node; a node that
lost Redis for a while reads on from where it was."""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from ..daemon_harness import free_port
from ..redis_harness import RedisServer
from ..test_daemon_cli import wait_until
from .harness import Node, nodes, sleeper

pytestmark = pytest.mark.timeout(60)


class Follow:
    """`events.follow` on a node's socket: its notifications, read as they come."""

    def __init__(self, n: Node, pattern: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(20)
        self.sock.connect(str(n.sock))
        self.file = self.sock.makefile("rb")
        self.sock.sendall(msgspec.json.encode({"jsonrpc": "2.0", "id": 1,
                                               "method": "events.follow",
                                               "params": {"pattern": pattern}}) + b"\n")

    def next(self) -> dict[str, Any]:
        """The next event delivered (waits up to the socket's timeout)."""
        while True:
            msg = msgspec.json.decode(self.file.readline())
            assert "error" not in msg, msg
            if msg.get("method") == "events.event":
                return dict(msg["params"])

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def followers(n: Node) -> int:
    return len(n.call("stats.get")["events"]["followers"])


def test_an_event_published_on_one_node_reaches_the_others(tmp: Path,
                                                           redis: RedisServer) -> None:
    with nodes(tmp, redis, {"a": "", "b": "", "c": ""}) as ns:
        a, b, c = ns["a"], ns["b"], ns["c"]
        wait_until(lambda: sum(n["alive"] for n in a.nodes()["nodes"]) == 3,
                   what="three nodes alive")
        on_b, on_c = Follow(b, "orders.*"), Follow(c, "billing.*")
        try:
            wait_until(lambda: followers(b) == followers(c) == 1, what="following")
            # b's pattern is matched on b: billing.* never reaches it, orders.* does
            a.call("events.publish", {"topic": "billing.due", "data": {"n": 1}})
            a.call("events.publish", {"topic": "orders.new", "data": {"id": 7}})
            got = on_b.next()
            assert (got["topic"], got["data"]) == ("orders.new", {"id": 7})
            assert got["source"].startswith("a:")  # the node it was published on
            got = on_c.next()
            assert (got["topic"], got["data"]) == ("billing.due", {"n": 1})
            # published on b: its own follower has it once (not again from the stream)
            b.call("events.publish", {"topic": "orders.paid", "data": 2})
            b.call("events.publish", {"topic": "orders.shipped", "data": 3})
            assert [on_b.next()["topic"] for _ in range(2)] == ["orders.paid",
                                                                "orders.shipped"]
            wait_until(lambda: a.call("stats.get")["cluster"]["events"]["received"] == 2,
                       what="a read b's two")
            # b read both of a's from the stream; its follower's pattern let one through
            assert b.call("stats.get")["cluster"]["events"]["received"] == 2
            assert a.call("stats.get")["cluster"]["events"]["sent"] == 2
        finally:
            on_b.close()
            on_c.close()


def test_a_node_reads_on_after_redis_was_away(tmp: Path, redis: RedisServer) -> None:
    with nodes(tmp, redis, {"a": "", "b": ""}) as ns:
        a, b = ns["a"], ns["b"]
        wait_until(lambda: sum(n["alive"] for n in a.nodes()["nodes"]) == 2,
                   what="two nodes alive")
        on_b = Follow(b, "*")
        try:
            wait_until(lambda: followers(b) == 1, what="following")
            redis.kill()
            # published while Redis is away: it waits on a, and goes when Redis is back
            a.call("events.publish", {"topic": "during", "data": 1})
            assert a.call("stats.get")["cluster"]["events"]["waiting"] == 1
            redis.start()
            assert on_b.next()["topic"] == "during"
        finally:
            on_b.close()


def sse_topics(port: int, token: str, until: str) -> Iterator[list[str]]:
    """`/events/stream?pattern=t.*` on a node with `token`: yields once it is open, then
    the topics it was sent up to `until`'s."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        conn.request("GET", "/api/v1/events/stream?pattern=t.*",
                     headers={"Authorization": f"Bearer {token}"})
        resp = conn.getresponse()
        assert resp.status == 200, resp.read()
        topics: list[str] = []
        yield topics
        while not topics or topics[-1] != until:
            line = resp.fp.readline().decode()
            if line.startswith("data: "):
                topics.append(json.loads(line[len("data: "):])["topic"])
        yield topics
    finally:
        conn.close()


@pytest.mark.deadline(120)
def test_a_glob_tokens_stream_has_no_event_of_another_nodes_agent_it_does_not_see(
        tmp: Path, redis: RedisServer) -> None:
    """Issue 52 (4b): an event relayed from another node says its source there
    (`a:b1#0`): it is judged by the agent it is of (b1), as on one node, not by the
    relayed name (which a glob `a*` took for one of its own when the node is `a`); a
    caller's event published under another glob stays out too."""
    port, port_a = free_port(), free_port()
    with nodes(tmp, redis, {"a": sleeper("a1") + sleeper("b1")
                            + f'[http]\nlisten = "127.0.0.1:{port_a}"\n',
                            "b": f'[http]\nlisten = "127.0.0.1:{port}"\n'}) as ns:
        a, b = ns["a"], ns["b"]
        wait_until(lambda: sum(n["alive"] for n in a.nodes()["nodes"]) == 2,
                   what="two nodes alive")
        made = b.cli("token", "create", "glob", "--scope", "events", "--agents", "a*")
        assert made.returncode == 0, made.stderr
        other = a.cli("token", "create", "other", "--scope", "events", "--agents", "b*")
        assert other.returncode == 0, other.stderr
        stream = sse_topics(port, made.stdout.strip(), "t.end")
        next(stream)
        wait_until(lambda: followers(b) == 1, what="the stream following")
        for agent in ("b1", "a1"):
            done = a.call("tasks.run", {"agent": agent, "local": True, "input": {
                "do": "publish", "topic": f"t.{agent}", "data": 0}})
            assert done["status"] == "succeeded", done
        conn = http.client.HTTPConnection("127.0.0.1", port_a, timeout=20)
        try:
            conn.request("POST", "/api/v1/events", body=b'{"topic": "t.other", "data": 0}',
                         headers={"Authorization": f"Bearer {other.stdout.strip()}",
                                  "Content-Type": "application/json"})
            assert conn.getresponse().status == 200
        finally:
            conn.close()
        a.call("events.publish", {"topic": "t.end", "data": 0})
        assert next(stream) == ["t.a1", "t.end"]
