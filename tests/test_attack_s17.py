"""An attacker's pass over session 17's surfaces (docs/security.md keeps them): the
nodes' beats as a writer of the cluster's Redis leaves them (decision 2040's `queues`
made the beat a typed record a node reads for every submit), and what else the session
landed. Real daemons, a real redis-server. A hole not yet closed is a strict xfail that
names it; one closed, a test of its refusal."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import redis as redis_py
import yarl

from corral.cluster.keys import GROUP, Keys
from corral.daemon.a2a import push
from corral.daemon.a2a import wire as w
from corral.daemon.a2a.wire import camel
from corral.supervisor.pushstore import MemoryPush
from corral.supervisor.tasks.sessions import SessionKey

from .a2a.harness import a2a_daemon
from .a2a.test_push import message, receiver
from .cluster.harness import STEADY_TTL, nodes, run
from .cluster.test_cluster_elastic import ELASTIC
from .redis_harness import REDIS_SERVER, RedisServer, redis_server
from .test_daemon_cli import wait_until

K = Keys("test")


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    assert REDIS_SERVER is not None, "redis-server is not installed: . scripts/redis.sh"
    with redis_server(tmp_path / "redis") as server:
        yield server


# -- a beat that does not parse -----------------------------------------------------------

# what a writer leaves in the nodes' hash: bytes of no JSON, and a beat of decision
# 2040's shape whose `queues` is no number
GARBLED = {"ghost": b"{not json", "phantom": (
    b'{"node":"phantom","incarnation":1,"capacity":1,"load":0,"agents":["sleepy"],'
    b'"last_beat":0,"queues":{"sleepy":"many"}}')}


@pytest.mark.timeout(90)
def test_a_beat_that_does_not_parse_stops_no_beat_and_no_listing(
        tmp_path: Path, redis: RedisServer) -> None:
    """A writer's beat in the nodes' hash that is no JSON, or one whose max_queue is no
    number, is no node's: `corral nodes` lists the live nodes without it, and the beat's
    steps after the view's read go on (the retention removes a dead consumer)."""
    direct = redis_py.Redis.from_url(redis.url)
    try:
        direct.hset(K.nodes, mapping=GARBLED)
        with nodes(tmp_path, redis, {"b": ELASTIC}, ttl=STEADY_TTL) as ns:
            b = ns["b"]
            # (b's first beat may follow its start: its listing is waited for)
            wait_until(lambda: [n["node"] for n in b.call("nodes.list")["nodes"]] == ["b"],
                       what="b listed, and no garbled beat")
            done = run(b, "sleepy", {"do": "sleep", "seconds": 0.01})
            assert done["status"] == "succeeded"
            stream = K.stream("default", "sleepy", 0)
            direct.xgroup_createconsumer(stream, GROUP, "gone/1")
            wait_until(lambda: b.call("stats.get")["cluster"]["retention"][
                "consumers_removed"] >= 1, what="the dead consumer removed")
    finally:
        direct.close()


@pytest.mark.timeout(90)
def test_a_beat_that_does_not_parse_under_a_nodes_own_name_keeps_it_from_joining_no_more(
        tmp_path: Path, redis: RedisServer) -> None:
    """Bytes of no JSON under the node's own name in the nodes' hash are no daemon's beat
    (decision 2097 has Membership pass over them): the node joins as over no holder."""
    direct = redis_py.Redis.from_url(redis.url)
    try:
        direct.hset(K.nodes, "b", b"{not json")
        with nodes(tmp_path, redis, {"b": ELASTIC}, ttl=STEADY_TTL) as ns:
            wait_until(lambda: [(n["node"], n["alive"]) for n in ns["b"].call(
                "nodes.list")["nodes"]] == [("b", True)], timeout=30, what="b joined")
    finally:
        direct.close()

# -- a push config's token revoked ----------------------------------------------------------


async def _rpc(http: httpx.AsyncClient, url: str, secret: str, method: str,
               params: dict[str, Any]) -> dict[str, Any]:
    r = await http.post(f"{url}/a2a/tck", json={"jsonrpc": "2.0", "id": 1, "method": method,
                                                 "params": params},
                        headers={"Authorization": f"Bearer {secret}"})
    body: dict[str, Any] = r.json()
    assert "result" in body, (method, body)
    return body["result"]


@pytest.mark.timeout(120)
async def test_a_revoked_tokens_push_config_is_posted_nothing_more(tmp_path: Path) -> None:
    """A token's push config of a task waiting for input, the token revoked: the task's
    end, answered by another token of the tenant, is posted to the other's config and
    not to the revoked one's, as the revoked token's streams end (decision 1890)."""
    with a2a_daemon(tmp_path, anonymous="[]") as (d, url):
        # (the answer to the task's question is an approval's: the scope's)
        scopes = ("--scope", "tasks:run", "--scope", "tasks:read", "--scope", "approvals")
        secret = {name: d.json("token", "create", name, *scopes)["token"]
                  for name in ("held", "other")}
        async with receiver() as (hook, got), receiver() as (other_hook, other_got), \
                httpx.AsyncClient(timeout=30) as http:
            asked = await _rpc(http, url, secret["held"], "SendMessage",
                               message("tck-input-required"))
            task_id = asked["task"]["id"]
            await _rpc(http, url, secret["held"], "CreateTaskPushNotificationConfig", {
                "taskId": task_id, "id": "held", "url": hook, "token": "held's"})
            await _rpc(http, url, secret["other"], "CreateTaskPushNotificationConfig", {
                "taskId": task_id, "id": "other", "url": other_hook, "token": "other's"})
            assert d.cli("token", "revoke", "held").returncode == 0
            done = await _rpc(http, url, secret["other"], "SendMessage",
                              message("tck-complete-task", task_id))
            assert done["task"]["status"]["state"] == "TASK_STATE_COMPLETED"
            while True:  # the other token's config is told the end
                _, body = await asyncio.wait_for(other_got.get(), 30)
                if body.get("statusUpdate", {}).get("status", {}).get("state") == \
                        "TASK_STATE_COMPLETED":
                    break
            # every config delivered to: the ended task's configs are forgotten then
            for _ in range(300):
                listed = await _rpc(http, url, secret["other"],
                                    "ListTaskPushNotificationConfigs", {"taskId": task_id})
                if not listed["configs"]:
                    break
                await asyncio.sleep(0.1)
            assert not listed["configs"], listed
            posted = []
            while not got.empty():
                posted.append(got.get_nowait()[1])
            assert not any("Hello from TCK" in json.dumps(b) for b in posted), posted


# -- a push config kept while private addresses were allowed --------------------------------

@pytest.mark.timeout(60)
async def test_a_config_kept_under_push_private_is_not_posted_once_it_is_off(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A config made while the operator allowed private addresses, kept in its task's home
    (a node's state database outlives the daemon), and the operator then turns
    `push_private` off and restarts (a reload says it takes one, decision 1921): the
    restarted daemon's deliveries post nothing to the loopback address, said, as a config
    naming it is refused when made."""
    monkeypatch.setattr(push, "RETRIES", 0)  # (one attempt each: the test's minutes)
    async with receiver() as (hook, got):
        home = MemoryPush()  # (the same home across the restart)
        said: list[str] = []
        before = push.PushConfigs(True, said.append, home)
        await before.add("t1", w.PushConfig(url=hook, id="kept"), {"via": "test"})
        await before.close()
        after = push.PushConfigs(False, said.append, home)
        try:
            await after.deliver("t1", {"statusUpdate": {"status": {
                "state": "TASK_STATE_COMPLETED"}}}, final=True)
            async with asyncio.timeout(30):
                while await after.tasks() and got.empty():
                    await asyncio.sleep(0.05)
            assert got.empty(), got.get_nowait()
            assert any(hook in line and "private" in line for line in said), said
        finally:
            await after.close()


# -- a push URL read as two hosts ------------------------------------------------------------

# what a URL's authority may hold between a public address and a loopback one
BETWEEN = ["@", "#", "?", "/", "\\", ":", ";", " ", "\t", "\n", "\r", "\x00", "%40", "%23",
           "[", "]", "%", ".", "&", "\u3002", "\uff20", "\uff03", ":80@", "@@", "#@", "?@",
           "\\@", "]@", "@[", ""]


def test_a_push_url_names_the_host_the_check_read_to_its_client() -> None:
    """The check reads a push URL's host with `urlsplit`, and the client that posts to it
    (aiohttp) with yarl: a URL each reads as another host would have the check pass a
    public address and the post go to a loopback one. 4,500 spellings of the two around
    what an authority may hold: none that yarl reads as an address that is not public is
    read by the check as a public address or a name."""
    public, loopback = "8.8.8.8", "127.0.0.1"
    seen = 0
    for one, two in itertools.product(BETWEEN, repeat=2):
        for url in (f"http://{public}{one}{loopback}{two}/",
                    f"http://{loopback}{one}{public}{two}/",
                    f"http://{public}{one}{two}{loopback}/",
                    f"http://[{public}{one}{loopback}]{two}/",
                    f"http://{one}{public}{two}{loopback}/"):
            try:
                checked, posted = urlsplit(url).hostname, yarl.URL(url).raw_host
            except ValueError:
                continue  # (refused by one: no config is made, or no post)
            if not checked or not posted:
                continue
            try:
                if push._global(posted):
                    continue
            except ValueError:
                continue  # a name: the public resolver answers for it at the post
            seen += 1
            try:
                assert not push._global(checked), url
            except ValueError:
                raise AssertionError(f"{url!r}: checked as the name {checked!r}, posted to "
                                     f"{posted!r}") from None
    assert seen > 300  # (the spellings that reach the loopback address)


# -- a body the decoder takes and the names' walk does not ------------------------------------

@pytest.mark.timeout(120)
async def test_a_body_the_decoder_takes_is_answered_on_both_bindings(tmp_path: Path) -> None:
    """A message nested as deep as the JSON decoder takes, with members named in
    snake_case (`message_id`), which has the door walk its names to camelCase (spec 5.5):
    each binding answers it with its task, as one of a shallow body. The walk recursed two
    frames a level: at 600 levels the request was closed unanswered and a traceback of
    some two thousand lines logged (attacker's pass, session 17)."""
    with a2a_daemon(tmp_path) as (_, url):
        async with httpx.AsyncClient(timeout=30) as http:
            made = []
            for levels in (600, 900):
                nested = '{"a_b":' * levels + "1" + "}" * levels
                message = ('{"message":{"message_id":"deep-%s-%d","role":"ROLE_USER",'
                           '"parts":[{"text":"hi"}]},"deep_member":' + nested + "}")
                r = await http.post(f"{url}/a2a/tck",
                                    headers={"Content-Type": "application/json"},
                                    content='{"jsonrpc":"2.0","id":1,"method":"SendMessage",'
                                            '"params":' + message % ("rpc", levels) + "}")
                assert r.status_code == 200, (levels, r.text[:200])
                task = r.json()["result"]["task"]
                assert task["status"]["state"] == "TASK_STATE_COMPLETED", (levels, task)
                made.append(task["id"])
                r = await http.post(f"{url}/a2a/tck/message:send",
                                    headers={"Content-Type": "application/json"},
                                    content=message % ("http", levels))
                assert r.status_code == 200, (levels, r.text[:200])
                task = r.json()["task"]
                assert task["status"]["state"] == "TASK_STATE_COMPLETED", (levels, task)
                made.append(task["id"])
            listed = await http.get(f"{url}/a2a/tck/tasks")
            assert sorted(t["id"] for t in listed.json()["tasks"]) == sorted(made)


def test_names_walked_to_camelcase_keep_their_places_their_last_value_and_the_callers_own(
        ) -> None:
    """The walk's answers, on its own list as they were on the stack: each name in
    camelCase in its place, a name sent twice (snake_case and camelCase) at its first
    place with its last value, whichever of the two holds an object, a data part's and
    metadata's members as sent; and a value as deep as the decoder takes."""
    assert list(camel({"task_id": 1, "x": 2, "taskId": 3})) == ["taskId", "x"]
    assert camel({"task_id": 1, "x": 2, "taskId": 3}) == {"taskId": 3, "x": 2}
    assert camel({"a_b": {"c_d": 1}, "aB": 2}) == {"aB": 2}
    assert camel({"aB": 2, "a_b": {"c_d": [{"e_f": 1}]}}) == {"aB": {"cD": [{"eF": 1}]}}
    assert camel({"parts": [{"data": {"a_b": 1}, "metadata": {"c_d": [1]}, "media_type": 1}],
                  "params": {"e_f": 2}}) == {
        "parts": [{"data": {"a_b": 1}, "metadata": {"c_d": [1]}, "mediaType": 1}],
        "params": {"e_f": 2}}
    given: Any = "leaf"
    for _ in range(100_000):
        given = {"a_b": [given]}
    walked = camel(given)
    for _ in range(100_000):
        walked = walked["aB"][0]
    assert walked == "leaf"


# -- another caller's push config -----------------------------------------------------------

@pytest.mark.timeout(120)
async def test_a_push_configs_secrets_and_deletion_are_its_makers_alone(
        tmp_path: Path) -> None:
    """Two tokens of one tenant, each seeing the other's task: a push config's token and
    authentication are what its receiver checks a post by, so another caller that reads
    them posts as the daemon; and a config another deletes stops its maker's posts. The
    maker's config is neither listed, got nor deleted by the other (a key is its caller's
    own likewise, decision 1792); its maker still lists it whole."""
    with a2a_daemon(tmp_path, anonymous="[]") as (d, url):
        scopes = ("--scope", "tasks:run", "--scope", "tasks:read")
        secret = {name: d.json("token", "create", name, *scopes)["token"]
                  for name in ("maker", "other")}
        async with httpx.AsyncClient(timeout=30) as http:
            asked = await _rpc(http, url, secret["maker"], "SendMessage",
                               message("tck-input-required"))
            task_id = asked["task"]["id"]
            config = {"taskId": task_id, "id": "mine", "url": "http://8.8.8.8/hook",
                      "token": "the receiver's token",
                      "authentication": {"scheme": "Bearer", "credentials": "hunter2"}}
            await _rpc(http, url, secret["maker"], "CreateTaskPushNotificationConfig",
                       config)
            listed = await _rpc(http, url, secret["other"],
                                "ListTaskPushNotificationConfigs", {"taskId": task_id})
            r = await http.post(f"{url}/a2a/tck", headers={
                "Authorization": f"Bearer {secret['other']}"}, json={
                "jsonrpc": "2.0", "id": 1, "method": "GetTaskPushNotificationConfig",
                "params": {"taskId": task_id, "id": "mine"}})
            seen = json.dumps([listed, r.json()])
            assert "hunter2" not in seen and "the receiver's token" not in seen, seen
            await http.post(f"{url}/a2a/tck", headers={
                "Authorization": f"Bearer {secret['other']}"}, json={
                "jsonrpc": "2.0", "id": 1, "method": "DeleteTaskPushNotificationConfig",
                "params": {"taskId": task_id, "id": "mine"}})
            kept = await _rpc(http, url, secret["maker"], "ListTaskPushNotificationConfigs",
                              {"taskId": task_id})
            assert kept["configs"] == [config], kept


# -- a cluster session that does not parse ----------------------------------------------------

@pytest.mark.timeout(90)
def test_a_cluster_session_that_does_not_parse_stops_no_listing(
        tmp_path: Path, redis: RedisServer) -> None:
    """A writer's session whose record does not parse (a time that is no number), or a
    set of sessions whose name or member is no UTF-8, is no session: the listing answers
    with the sessions that parse (as decision 2047 has a task's listing pass over a
    record that does not parse)."""
    direct = redis_py.Redis.from_url(redis.url)
    try:
        live = time.time() + 3600
        for name, created in (("kept", str(time.time())), ("garbled", "no time")):
            direct.zadd(K.sessions("default", "sleepy"), {name: live})
            direct.hset(K.session(SessionKey("default", "sleepy", name)), mapping={
                "created": created, "tasks": "1", "ttl": "3600"})
        direct.zadd(K.sessions("default", "sleepy"), {b"\xff": live})
        direct.zadd(K.sessions("default", "sleepy").encode() + b"\xff", {"x": live})
        with nodes(tmp_path, redis, {"b": ELASTIC}, ttl=STEADY_TTL) as ns:
            listed = ns["b"].call("sessions.list", {"agent": "sleepy"})
            assert [s["session"] for s in listed["sessions"]] == ["kept"], listed
    finally:
        direct.close()
