"""Push notification configs, on each home (DESIGN 25; daemon/a2a/push.py): a config
made for a task at the A2A door is a record of the task's home, so it is listed, read
and deleted at another entry (a cluster's other node) and outlives every entry's
restart; a task has at most its MAX_CONFIGS, however many entries make them; the task's
end is delivered though the daemon that took the config was killed (-9): by itself once
started again (a node), by the other node while the killed one stays dead (a cluster)."""

from __future__ import annotations

import contextlib
import json
import queue
import threading
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import redis

from corral.daemon.a2a.push import MAX_CONFIGS

from ..a2a.harness import tck_agent
from ..cluster.harness import kill9
from .home import PATIENCE, Home

pytestmark = pytest.mark.timeout(180)
ENDS = ("TASK_STATE_COMPLETED", "TASK_STATE_FAILED", "TASK_STATE_CANCELED")
HOOK = "http://127.0.0.1:9/hook"  # (never delivered to: the task waits for input)


def agents(directory: Path) -> str:
    del directory
    return tck_agent() + '\n[a2a]\nanonymous = ["tck"]\npush_private = true\n'


def rpc(home: Home, method: str, params: dict[str, Any], at: int = 0) -> dict[str, Any]:
    """A JSON-RPC call of the A2A door at an entry, as its anonymous caller."""
    port = home.ports[at % len(home.ports)]
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/a2a/tck", method="POST", headers={
            "Content-Type": "application/json"}, data=json.dumps({
                "jsonrpc": "2.0", "id": 1, "method": method, "params": params}).encode())
    with urllib.request.urlopen(req, timeout=PATIENCE) as r:
        body: dict[str, Any] = json.loads(r.read())
    return body


def waiting(home: Home) -> str:
    """A task of the agent waiting for input (it stays so: its configs are kept; the
    agent reads the message's id). A blocking SendMessage that does not come back within
    the patience fails naming what each entry then held (the task, its asks, the nodes,
    the end of each daemon's log): a flake seen once in fifteen runs beside a busy loop
    per core said nothing but a read timeout."""
    try:
        asked = rpc(home, "SendMessage", {"message": {
            "messageId": f"tck-input-required-{id(object())}", "role": "ROLE_USER",
            "parts": [{"text": "hi"}]}})
    except TimeoutError:
        raise AssertionError("the blocking SendMessage never reported input-required; "
                             + held(home)) from None
    task_id: str = asked["result"]["task"]["id"]
    return task_id


def held(home: Home) -> str:
    """What each entry holds of the agent's tasks and asks, and of the cluster's nodes,
    and the end of each daemon's log (a failure's words: each read may fail too)."""
    said = []
    for at, entry in enumerate(home.entries):
        for method, params in (("tasks.list", {"agent": "tck", "limit": 3}),
                               ("approvals.list", {}), ("nodes.list", {})):
            try:
                got = home.call(method, params, at)
                if method == "tasks.list":
                    got = [home.task(t["task_id"], at) for t in got["tasks"]]
            except Exception as exc:  # (said, not raised: the failure is the timeout)
                got = f"not read: {exc!r}"
            said.append(f"entry {at} {method}: {got}")
        log = entry.state / "logs" / "corral.log"
        tail = log.read_text(errors="replace").splitlines()[-30:] if log.exists() else []
        said.append(f"entry {at} log:\n" + "\n".join(tail))
    return "\n".join(said)


@contextlib.contextmanager
def receiver() -> Iterator[tuple[str, queue.Queue[tuple[str | None, Any]]]]:
    """A webhook receiver on a loopback port: each POST's token and JSON body queued."""
    got: queue.Queue[tuple[str | None, Any]] = queue.Queue()

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            got.put((self.headers.get("X-A2A-Notification-Token"), json.loads(body)))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook", got
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def listed(home: Home, task_id: str, at: int = 0) -> list[str]:
    got = rpc(home, "ListTaskPushNotificationConfigs", {"taskId": task_id}, at)
    return [c["id"] for c in got["result"]["configs"]]


def test_a_config_is_kept_listed_and_deleted_at_every_entry_and_outlives_restarts(
        home: Home) -> None:
    task_id = waiting(home)
    made = rpc(home, "CreateTaskPushNotificationConfig", {
        "taskId": task_id, "id": "one", "url": HOOK, "token": "t1"})
    assert made["result"] == {"url": HOOK, "id": "one", "taskId": task_id, "token": "t1"}
    rpc(home, "CreateTaskPushNotificationConfig", {"taskId": task_id, "id": "two",
                                                   "url": HOOK}, at=1)
    assert listed(home, task_id, at=1) == ["one", "two"]
    got = rpc(home, "GetTaskPushNotificationConfig", {"taskId": task_id, "id": "one"}, at=1)
    assert got["result"] == made["result"]
    home.restart()
    assert listed(home, task_id) == listed(home, task_id, at=1) == ["one", "two"]
    assert rpc(home, "DeleteTaskPushNotificationConfig", {"taskId": task_id, "id": "one"},
               at=1)["result"] == {}
    assert listed(home, task_id) == ["two"]
    missing = rpc(home, "GetTaskPushNotificationConfig", {"taskId": task_id, "id": "one"})
    assert missing["error"]["message"] == f"task {task_id} has no push config one"
    # its end (delivered to none: HOOK refuses, retried with backoff): a cluster's
    # configs expire with the task's record from then (a node's are pruned with its row)
    rpc(home, "SendMessage", {"message": {
        "messageId": f"tck-complete-task-{id(object())}", "role": "ROLE_USER",
        "taskId": task_id, "parts": [{"text": "hi"}]}}, at=1)
    if home.redis is not None:
        keys = redis.Redis.from_url(home.redis.url)
        try:
            kept = keys.keys(f"*:push:{task_id}")
            assert kept and all(keys.ttl(k) > 0 for k in kept), kept
        finally:
            keys.close()


def test_a_task_has_at_most_its_most_configs_made_at_any_entry(home: Home) -> None:
    task_id = waiting(home)
    for i in range(MAX_CONFIGS):
        made = rpc(home, "CreateTaskPushNotificationConfig", {
            "taskId": task_id, "id": f"c{i}", "url": HOOK}, at=i)
        assert "result" in made, made
    refused = rpc(home, "CreateTaskPushNotificationConfig", {
        "taskId": task_id, "id": "over", "url": HOOK}, at=1)
    assert refused["error"] == {"code": -32602, "message": (
        f"invalid params: task {task_id} has {MAX_CONFIGS} push configs, the most it may")}
    # one of its ids made again replaces it, and nothing is added
    again = rpc(home, "CreateTaskPushNotificationConfig", {
        "taskId": task_id, "id": "c0", "url": HOOK, "token": "new"}, at=1)
    assert again["result"]["token"] == "new"
    kept = listed(home, task_id)
    assert len(kept) == MAX_CONFIGS and "over" not in kept


def test_a_tasks_end_is_delivered_though_the_daemon_that_took_its_config_died(
        home: Home) -> None:
    with receiver() as (hook, got):
        task_id = waiting(home)
        made = rpc(home, "CreateTaskPushNotificationConfig", {
            "taskId": task_id, "id": "hook", "url": hook, "token": "t0"})
        assert "result" in made, made
        dead = home.entries[0]
        kill9(dead)
        try:
            if home.kind == "node":  # (its one daemon)
                dead.start()
            # the task's answer (a retry of its attempt the kill lost may have ended it)
            rpc(home, "SendMessage", {"message": {
                "messageId": f"tck-complete-task-{id(object())}", "role": "ROLE_USER",
                "taskId": task_id, "parts": [{"text": "hi"}]}}, at=1)
            end = rpc(home, "GetTask", {"id": task_id}, at=1)["result"]["status"]["state"]
            assert end in ENDS, end
            while True:
                token, body = got.get(timeout=PATIENCE)
                assert token == "t0"
                status = body.get("statusUpdate", {})
                if status.get("status", {}).get("state") == end:
                    assert status["taskId"] == task_id
                    break
        finally:
            if dead.proc is None or dead.proc.poll() is not None:
                dead.start()
            home.joined()
