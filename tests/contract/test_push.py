"""Push notification configs, on each home (DESIGN 25; daemon/a2a/push.py): a config
made for a task at the A2A door is a record of the task's home, so it is listed, read
and deleted at another entry (a cluster's other node) and outlives every entry's
restart; a task has at most its MAX_CONFIGS, however many entries make them."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from corral.daemon.a2a.push import MAX_CONFIGS

from ..a2a.harness import tck_agent
from .home import PATIENCE, Home

pytestmark = pytest.mark.timeout(180)
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
    """A task of the agent waiting for input (it stays so: its configs are kept)."""
    asked = rpc(home, "SendMessage", {"message": {
        "messageId": f"m-{id(object())}", "role": "ROLE_USER",
        "parts": [{"text": "tck-input-required"}]}})
    task_id: str = asked["result"]["task"]["id"]
    return task_id


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
