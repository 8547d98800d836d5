"""Issue 41: a cluster task's trace crosses Redis: submitted on one node with a caller's
`traceparent`, run on another, its spans there are children of the caller's span; a task
submitted with none is traced from its id on the node that runs it."""

from __future__ import annotations

import json
from pathlib import Path

import redis as sync_redis

from corral.cluster.keys import Keys

from ..daemon_harness import hello
from ..redis_harness import RedisServer
from ..test_daemon_cli import wait_until
from .harness import STEADY_TTL, nodes

TRACING = "\n[tracing]\nexport_interval = 0.05\n"
CALLER_TRACE, CALLER_SPAN = "ab" * 16, "cd" * 8


def test_a_callers_context_goes_through_redis_to_the_node_that_runs_the_task(
        tmp: Path, redis: RedisServer) -> None:
    with nodes(tmp, redis, {"a": "", "b": hello("greeter") + TRACING},
               ttl=STEADY_TTL) as ns:
        a, b = ns["a"], ns["b"]
        wait_until(lambda: any(n["node"] == "b" and n["alive"]
                               for n in a.nodes()["nodes"]), what="b alive")
        r = a.run("greeter", '{"name": "t"}', "--traceparent",
                  f"00-{CALLER_TRACE}-{CALLER_SPAN}-01", "--tracestate", "k=v")
        assert r.returncode == 0, r.stderr
        res = json.loads(r.stdout)
        assert [x["node"] for x in res["attempts"]] == ["b"]
        shown = json.loads(b.cli("trace", res["task_id"], "--json").stdout)
        assert shown["trace_id"] == CALLER_TRACE
        task_span = shown["spans"][0]
        assert (task_span["name"], task_span["parent_id"]) == ("invoke_agent greeter",
                                                               CALLER_SPAN)
        assert task_span["attributes"]["corral.task.id"] == res["task_id"]
        # claimed at its submission (on the node that runs it), and a session's turns
        # (their own submit; the session begun where its agent runs, decision 1991, its
        # next turn at the other node): the same
        for node, more in ((b, ()), (b, ("--session", "s1")), (a, ("--session", "s1"))):
            r = node.run("greeter", '{"name": "v"}', "--traceparent",
                         f"00-{CALLER_TRACE}-{CALLER_SPAN}-01", *more)
            assert r.returncode == 0, r.stderr
            ran = json.loads(r.stdout)
            shown = json.loads(b.cli("trace", ran["task_id"], "--json").stdout)
            assert (shown["trace_id"], shown["spans"][0]["parent_id"]) == (
                CALLER_TRACE, CALLER_SPAN), more
        # none given: the trace is the task's id, on the node that ran it
        r = a.run("greeter", '{"name": "u"}')
        assert r.returncode == 0, r.stderr
        plain = json.loads(r.stdout)
        shown = json.loads(b.cli("trace", plain["task_id"], "--json").stdout)
        assert shown["trace_id"] == plain["task_id"].replace("-", "")
        assert shown["spans"][0]["parent_id"] is None


def test_a_bad_context_is_refused_at_the_submit_and_a_good_one_kept_in_its_bounds(
        tmp: Path, redis: RedisServer) -> None:
    """Attacker's pass: a cluster submit's context is checked where it is submitted, as
    a local task's is (refused with the reason, nothing in Redis), and kept as the W3C
    format writes it, its tracestate cut to its bound: a caller cannot store what it
    likes in the record every claim answers."""
    with nodes(tmp, redis, {"a": "", "b": hello("greeter") + TRACING},
               ttl=STEADY_TTL) as ns:
        a = ns["a"]
        wait_until(lambda: any(n["node"] == "b" and n["alive"]
                               for n in a.nodes()["nodes"]), what="b alive")
        r = a.cli("submit", "greeter", "--input", "{}", "--traceparent", "garbage\nx")
        assert (r.returncode, r.stderr) == (1, (
            "corral: traceparent must be the W3C format 00-<32 hex>-<16 hex>-<2 hex>, not "
            "'garbage\\nx'\n"))
        client = sync_redis.Redis.from_url(redis.url)
        keys = Keys("test")
        assert client.zcard(keys.live) + client.zcard(keys.done) == 0
        r = a.run("greeter", "{}", "--traceparent", f"00-{CALLER_TRACE}-{CALLER_SPAN}-01",
                  "--tracestate", "k=" + "v" * 2000)
        assert r.returncode == 0, r.stderr
        task_id = json.loads(r.stdout)["task_id"]
        kept = client.hget(keys.task(task_id), "trace")
        assert kept == (f"00-{CALLER_TRACE}-{CALLER_SPAN}-01\nk=".encode()
                        + b"v" * (512 - 2))
