"""A name is not an identity, on a cluster (issue 52 item 1, decision 436): a cluster
task's record in Redis carries the tenant its agent was of where it was submitted, signed
with the cluster key. Tenant acme's `chat` runs a cluster task, is removed, and tenant
globex adds a `chat` of its own: globex lists and reads none of acme's cluster tasks nor
their traces, over HTTP; a Redis writer who sets the record's tenant to globex's does not
show it to globex (refused, counted, said). A real redis-server and a real daemon."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from ..conftest import EXAMPLES, ROOT
from ..daemon_harness import PY, free_port
from ..redis_harness import RedisServer
from ..test_daemon_cli import wait_until
from .harness import STEADY_TTL, Node, nodes
from .test_cluster_specs import log
from .test_cluster_trust import K, attacker, key_file, keyed, trust

pytestmark = pytest.mark.timeout(120)

SECRET = "acme-private-4711"
CHAT = {"command": [PY, str(EXAMPLES / "misbehave.py")], "env": {"PYTHONPATH": str(ROOT)},
        "stop_timeout": 5.0}


class Http:
    """The node's REST API as a token."""

    def __init__(self, port: int, secret: str) -> None:
        self.base = f"http://127.0.0.1:{port}/api/v1"
        self.secret = secret

    def __call__(self, verb: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=verb, headers={
            "Authorization": f"Bearer {self.secret}", "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.status, json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")


def token(n: Node, port: int, tenant: str) -> Http:
    r = n.cli("token", "create", tenant, "--tenant", tenant, "--scope", "agents:read",
              "--scope", "agents:write", "--scope", "tasks:run", "--scope", "tasks:read")
    assert r.returncode == 0, r.stderr
    return Http(port, r.stdout.strip())


def not_found(task_id: str) -> str:
    return f"no such task: {task_id}"


def unseen_by(globex: Http, task_id: str) -> None:
    status, body = globex("GET", "/tasks")
    assert status == 200 and task_id not in json.dumps(body), body
    for path in (f"/tasks/{task_id}?input=true", f"/tasks/{task_id}/trace"):
        status, body = globex("GET", path)
        assert (status, body["detail"]) == (404, not_found(task_id)), (path, body)
    status, body = globex("GET", f"/tasks?before={task_id}")
    assert status == 404 and body["detail"].startswith(not_found(task_id)), body


@pytest.mark.deadline(120)
def test_a_tenant_taking_a_freed_name_is_shown_no_cluster_task_of_its_earlier_holder(
        tmp: Path, redis: RedisServer) -> None:
    port = free_port()
    toml = (f'[tenants.acme]\n[tenants.globex]\n[tracing]\nexport_interval = 0.05\n'
            f'[http]\nlisten = "127.0.0.1:{port}"\n')
    with nodes(tmp, redis, {"n1": toml}, extra=keyed(key_file(tmp / "key")),
               ttl=STEADY_TTL) as ns:
        n = ns["n1"]
        wait_until(lambda: len(n.nodes()["nodes"]) == 1, what="the node")
        acme, globex = token(n, port, "acme"), token(n, port, "globex")
        assert acme("POST", "/agents", {"agents": {"chat": CHAT}})[0] == 200
        wait_until(lambda: "chat" in n.nodes()["nodes"][0]["agents"],
                   what="chat offered to the cluster")
        status, body = acme("POST", "/tasks?wait=30", {
            "agent": "chat", "input": {"do": "echo", "secret": SECRET}})
        assert (status, body["status"]) == (200, "succeeded"), body
        task_id = body["task_id"]
        # a cluster task: its record is in Redis, with acme's tenant, signed
        assert attacker(redis).hget(K.task(task_id), "tenant") == b"acme"
        status, body = acme("GET", f"/tasks/{task_id}")
        assert (status, body["tenant"], body["attempts"][0]["node"]) == (200, "acme", "n1")

        assert acme("DELETE", "/agents/chat")[0] == 200
        assert globex("POST", "/agents", {"agents": {"chat": CHAT}})[0] == 200
        unseen_by(globex, task_id)
        # acme's still, and the operator's with its tenant
        status, body = acme("GET", "/tasks")
        assert [t["task_id"] for t in body["tasks"]] == [task_id]
        listed = n.call("tasks.list", {})["tasks"]
        assert [(t["task_id"], t["tenant"]) for t in listed] == [(task_id, "acme")]

        # a Redis writer names globex on acme's record: refused, acme's no longer either
        attacker(redis).hset(K.task(task_id), "tenant", "globex")
        unseen_by(globex, task_id)
        assert acme("GET", f"/tasks/{task_id}")[0] == 404
        got = n.call("tasks.get", {"task_id": task_id})
        assert got["tenant"] == ""  # the operator's alone
        assert trust(n)["refused"]["tenants"] == 1
        assert (f"cluster: refused tenant of task {task_id} from Redis: its MAC does not "
                "verify with this node's cluster key; the task is shown to the operator "
                "alone") in log(n)
