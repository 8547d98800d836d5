"""An attacker's pass over the A2A door (issue 88): what a caller who sends bytes the
door does not expect makes it answer. Each was a 500 (an exception out of the handler)
before its fix; each is now the protocol's error, saying what was wrong."""

from __future__ import annotations

import asyncio
import contextlib
import json
import textwrap
from pathlib import Path

import httpx
import pytest

from ..daemon_harness import Daemon, free_port
from .harness import a2a_daemon, tck_agent
from .test_push import message, rpc

JSON = {"Content-Type": "application/json"}


def _nested(depth: int) -> bytes:
    return (b'{"message": {"messageId": "deep", "role": "ROLE_USER", "parts": [{"data": '
            + b"[" * depth + b"]" * depth + b"}]}}")


@pytest.mark.timeout(120)
async def test_a_body_nested_too_deeply_is_a_parse_error_on_both_bindings_not_a_500(
        tmp_path: Path) -> None:
    with a2a_daemon(tmp_path) as (_, url):
        async with httpx.AsyncClient(timeout=30) as http:
            for depth in (1000, 200_000):  # past msgspec's limit, the first and far
                params = _nested(depth)
                r = await http.post(f"{url}/a2a/tck", headers=JSON, content=(
                    b'{"jsonrpc": "2.0", "id": 1, "method": "SendMessage", "params": '
                    + params + b"}"))
                assert r.status_code == 200, (depth, r.status_code, r.text[:200])
                error = r.json()["error"]
                assert (error["code"], error["message"]) == (
                    -32700, "parse error: JSON nested too deeply"), depth
                r = await http.post(f"{url}/a2a/tck/message:send", headers=JSON,
                                    content=params)
                assert r.status_code == 400, (depth, r.status_code, r.text[:200])
                assert r.json()["error"]["message"] == (
                    "the body is not JSON: JSON nested too deeply"), depth
            # nothing was made of them, and the door still serves
            listed = await http.get(f"{url}/a2a/tck/tasks")
            assert (listed.status_code, listed.json()["tasks"]) == (200, [])


@pytest.mark.timeout(120)
async def test_a_non_utf8_a2a_version_header_is_refused_saying_so_not_a_500(
        tmp_path: Path) -> None:
    with a2a_daemon(tmp_path) as (_, url):
        async with httpx.AsyncClient(timeout=30) as http:
            r = await http.post(f"{url}/a2a/tck", headers={**JSON, "A2A-Version": b"\xff1"},
                                json={"jsonrpc": "2.0", "id": 1, "method": "ListTasks",
                                      "params": {}})
            assert r.status_code == 200, r.text
            error = r.json()["error"]
            assert (error["code"], error["message"]) == (
                -32009, "A2A-Version '\\udcff1' is not served: this agent speaks 1.0")
            r = await http.get(f"{url}/a2a/tck/tasks", headers={"A2A-Version": b"\xff1"})
            assert r.status_code == 400, r.text
            assert r.json()["error"]["message"] == (
                "A2A-Version '\\udcff1' is not served: this agent speaks 1.0")


@pytest.mark.timeout(120)
async def test_a_push_configs_huge_or_header_breaking_strings_are_refused_and_nothing_kept(
        tmp_path: Path) -> None:
    """A config is kept in memory and in its task's file, after the task's end too (the
    kit reads a completed task's configs back): each of its strings is bounded, and what
    is sent as a header is printable ASCII (a line break was an exception at each
    delivery)."""
    with a2a_daemon(tmp_path) as (_, url):
        async with httpx.AsyncClient(timeout=30) as http:
            done = await rpc(http, url, "SendMessage", message("tck-complete-task"))
            task_id = done["result"]["task"]["id"]
            hook = "http://127.0.0.1:9/hook"
            for given, said in (
                    ({"token": "t" * (1 << 20)}, "token is 1048576 characters, past its 4096"),
                    ({"url": hook + "?" + "q" * 4096}, "url is 4120 characters, past its 2048"),
                    ({"id": "i" * 129}, "id is 129 characters, past its 128"),
                    ({"token": "a\r\nX-Injected: 1"}, "token is sent as an HTTP header: "
                     "printable ASCII only"),
                    ({"authentication": {"scheme": "Bearer", "credentials": "c" * 4097}},
                     "authentication.credentials is 4097 characters, past its 4096"),
                    ({"authentication": {"scheme": "Bearer\n", "credentials": "c"}},
                     "authentication.scheme is sent as an HTTP header: printable ASCII "
                     "only")):
                refused = await rpc(http, url, "CreateTaskPushNotificationConfig", {
                    "taskId": task_id, "url": hook} | given, ok=False)
                assert refused["error"]["code"] == -32602, refused
                assert refused["error"]["message"] == (
                    f"invalid params: the push config's {said}")
                # a message naming such a config is refused before its task is made
                sent = message("tck-complete-task") | {"configuration": {
                    "taskPushNotificationConfig": {"url": hook} | given}}
                refused = await rpc(http, url, "SendMessage", sent, ok=False)
                assert refused["error"]["message"] == (
                    f"invalid params: the push config's {said}")
            listed = await rpc(http, url, "ListTaskPushNotificationConfigs",
                               {"taskId": task_id})
            assert listed["result"]["configs"] == []
            tasks = await rpc(http, url, "ListTasks", {})
            assert [t["id"] for t in tasks["result"]["tasks"]] == [task_id]
            # within the bounds, kept
            made = await rpc(http, url, "CreateTaskPushNotificationConfig", {
                "taskId": task_id, "url": hook, "id": "i" * 128, "token": "t" * 4096})
            assert made["result"]["id"] == "i" * 128


@pytest.mark.timeout(120)
async def test_a_callers_open_a2a_streams_are_bounded_as_rests_are(tmp_path: Path) -> None:
    """SubscribeToTask and SendStreamingMessage each hold a stream of the task's journal
    open: one caller held as many as it opened (REST's are max_streams_per_token)."""
    port = free_port()
    d = Daemon(tmp_path, tck_agent(), extra=textwrap.dedent(f"""
        [http]
        listen = "127.0.0.1:{port}"
        max_streams_per_token = 2
        [a2a]
        anonymous = ["tck"]
    """))
    d.start()
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(timeout=30) as http, contextlib.AsyncExitStack() as held:
            asked = await rpc(http, url, "SendMessage", message("tck-input-required"))
            task_id = asked["result"]["task"]["id"]
            subscribe = {"jsonrpc": "2.0", "id": 1, "method": "SubscribeToTask",
                         "params": {"id": task_id}}
            for _ in range(2):
                r = await held.enter_async_context(http.stream(
                    "POST", f"{url}/a2a/tck", json=subscribe))
                assert r.headers["content-type"].startswith("text/event-stream")
            said = ("a2a anonymous tck holds 2 streams, its limit (max_streams_per_token): "
                    "close one, or try again later")
            r = await http.post(f"{url}/a2a/tck", json=subscribe)
            error = r.json()["error"]
            assert (error["code"], error["message"]) == (-32603, said)
            r = await http.post(f"{url}/a2a/tck/tasks/{task_id}:subscribe")
            assert (r.status_code, r.json()["error"]["message"]) == (503, said)
            # a streamed message is refused before its task is made
            r = await http.post(f"{url}/a2a/tck", json={
                "jsonrpc": "2.0", "id": 2, "method": "SendStreamingMessage",
                "params": message("tck-complete-task")})
            assert r.json()["error"]["message"] == said
            listed = await rpc(http, url, "ListTasks", {})
            assert [t["id"] for t in listed["result"]["tasks"]] == [task_id]
            await held.aclose()  # the two closed: once the daemon sees them go, a stream
            # is opened again
            deadline = asyncio.get_running_loop().time() + 30
            while True:
                async with http.stream("POST", f"{url}/a2a/tck", json=subscribe) as r:
                    if r.headers["content-type"].startswith("text/event-stream"):
                        break
                    assert json.loads(await r.aread())["error"]["message"] == said
                assert asyncio.get_running_loop().time() < deadline, "never let go"
                await asyncio.sleep(0.05)
    finally:
        d.close()


@pytest.mark.timeout(120)
async def test_a_push_url_spelling_a_private_address_otherwise_is_refused(
        tmp_path: Path) -> None:
    """Loopback spelt short, as a name with its trailing dot, as an integer or hex, or
    carried in an IPv6 address: IPv4-mapped, IPv4-compatible, 6to4 or NAT64's prefix
    (which Python calls global: a NAT64 gateway connects to 10.0.0.5 in its own network;
    the last three were accepted)."""
    with a2a_daemon(tmp_path, push_private=False) as (_, url):
        async with httpx.AsyncClient(timeout=30) as http:
            asked = await rpc(http, url, "SendMessage", message("tck-input-required"))
            task_id = asked["result"]["task"]["id"]
            for target in ("http://127.1/h", "http://localhost./h", "http://2130706433/h",
                           "http://0x7f.1/h", "http://0/h", "http://[::ffff:127.0.0.1]/h",
                           "http://[::127.0.0.1]/h", "http://[::10.0.0.5]/h",
                           "http://[64:ff9b::10.0.0.5]/h", "http://[64:ff9b::a9fe:a9fe]/h",
                           "http://[2002:a00:5::]/h"):
                refused = await rpc(http, url, "CreateTaskPushNotificationConfig", {
                    "taskId": task_id, "url": target}, ok=False)
                assert refused.get("error", {}).get("message") == (
                    f"invalid params: push url {target!r} names a private, loopback or "
                    "unresolved address (the operator allows these with [a2a] "
                    "push_private = true)"), refused
            listed = await rpc(http, url, "ListTaskPushNotificationConfigs",
                               {"taskId": task_id})
            assert listed["result"]["configs"] == []


@pytest.mark.timeout(120)
async def test_a_run_only_token_is_refused_a_message_whose_answer_it_may_not_read(
        tmp_path: Path) -> None:
    """A2A's answer to SendMessage is the task (its state, its output once ended), which
    is read with tasks:read: a blocking message was refused to a `tasks:run`-only token
    before its task was made, but one with `returnImmediately` made its task, then was
    refused the look at it, so the caller started work whose answer it may not read
    (review's pass, session 7's closing note). Now both are refused at the submission,
    on both bindings, and no task is made (decision 1791)."""
    with a2a_daemon(tmp_path, anonymous="[]") as (d, url):
        token = d.json("token", "create", "runner", "--scope", "tasks:run")["token"]
        said = ("forbidden: tasks.get needs the tasks:read scope, which token runner "
                "does not hold")
        async with httpx.AsyncClient(timeout=30, headers={
                "Authorization": f"Bearer {token}"}) as http:
            for immediately in (True, False):
                sent = message("tck-complete-task") | {
                    "configuration": {"returnImmediately": immediately}}
                refused = await rpc(http, url, "SendMessage", sent, ok=False)
                assert (refused["error"]["code"], refused["error"]["message"]) == (
                    -32600, said), (immediately, refused)
                r = await http.post(f"{url}/a2a/tck/message:send", json=sent)
                assert (r.status_code, r.json()["error"]["message"]) == (403, said), \
                    (immediately, r.text)
        assert d.ask("tasks.list", {})["tasks"] == []
