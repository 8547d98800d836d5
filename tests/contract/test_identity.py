"""Tenant identity, on each home (DESIGN 13, 20, 25): a tenant is shown only its own
tasks, asks and sessions, and a name another tenant held before is no way into what that
tenant left. Over the REST API as each tenant's token (a node's own: made at the entry it
calls), acme at one entry and globex at the other (the other node of a cluster)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest

from ..conftest import EXAMPLES, ROOT
from ..daemon_harness import PY
from .home import Home, Tenant, wait_until

pytestmark = pytest.mark.timeout(120)
HERE = Path(__file__).parent.parent
CHAT = {"command": [PY, str(EXAMPLES / "misbehave.py")], "env": {"PYTHONPATH": str(ROOT)},
        "stop_timeout": 5.0}
TALK = {**CHAT, "command": [PY, str(HERE / "session_agent.py")]}


def agents(directory: Path) -> str:
    del directory
    return textwrap.dedent(f"""
        [tenants.acme]
        [tenants.globex]

        [agents.acme-asker]
        command = ["{PY}", "{HERE}/asking_agent.py"]
        env = {{ PYTHONPATH = "{ROOT}" }}
        tenant = "acme"

        [agents.acme-chat]
        command = ["{PY}", "{HERE}/session_agent.py"]
        env = {{ PYTHONPATH = "{ROOT}" }}
        tenant = "acme"

        [agents.globex-chat]
        command = ["{PY}", "{HERE}/session_agent.py"]
        env = {{ PYTHONPATH = "{ROOT}" }}
        tenant = "globex"
    """)


def unseen(globex: Tenant, path: str, secret: str) -> tuple[int, Any]:
    """What globex is answered at `path`, which must not hold `secret`."""
    status, body = globex("GET", path)
    assert secret not in json.dumps(body), (path, body)
    return status, body


def test_a_tenant_is_shown_only_its_own_tasks_asks_and_sessions(home: Home) -> None:
    acme, globex = home.tenant("acme"), home.tenant("globex", at=1)
    status, turn = acme("POST", "/tasks?wait=30", {"agent": "acme-chat", "session": "mine",
                                                  "input": {"turn": 1}})
    assert (status, turn["status"]) == (200, "succeeded"), turn
    status, asking = acme("POST", "/tasks", {"agent": "acme-asker",
                                             "input": {"prompt": "acme's secret?"}})
    assert status == 202, asking
    asking_id = asking["task_id"]
    [ask] = wait_until("acme's ask", lambda: acme("GET", "/approvals")[1]["asks"])
    assert ask["task_id"] == asking_id
    # acme sees its own
    listed = [t["task_id"] for t in acme("GET", "/tasks")[1]["tasks"]]
    assert turn["task_id"] in listed and asking_id in listed
    assert [s["session"] for s in acme("GET", "/sessions")[1]["sessions"]] == ["mine"]
    # globex none of it: not listed, and no such thing by its id
    for secret in (turn["task_id"], asking_id):
        assert unseen(globex, "/tasks", secret)[0] == 200
        status, body = unseen(globex, f"/tasks/{secret}?input=true", "acme's secret")
        assert (status, body["detail"]) == (404, f"no such task: {secret}"), body
    assert unseen(globex, "/approvals", ask["id"]) == (200, {"asks": []})
    status, body = unseen(globex, f"/approvals/{ask['id']}", "acme's secret")
    assert (status, body["detail"]) == (404, f"no such ask: {ask['id']}"), body
    status, body = globex("POST", f"/approvals/{ask['id']}/resolve",
                          {"decision": "answered", "answer": "globex's"})
    assert (status, body["detail"]) == (404, f"no such ask: {ask['id']}"), body
    assert unseen(globex, "/sessions", "mine") == (200, {"sessions": []})
    status, body = unseen(globex, "/agents/acme-chat/sessions/mine", '"turns"')
    assert status == 404, body
    # acme's ask is acme's to answer
    status, body = acme("POST", f"/approvals/{ask['id']}/resolve",
                        {"decision": "answered", "answer": "no"})
    assert (status, body["end"]) == (200, "answered"), body
    assert home.wait(asking_id)["output"]["answer"] == "no"


def test_a_tenant_taking_a_freed_name_is_shown_nothing_its_earlier_holder_left(
        home: Home) -> None:
    acme, globex = home.tenant("acme"), home.tenant("globex")
    assert acme("POST", "/agents", {"agents": {"chat": CHAT}})[0] == 200
    status, body = acme("POST", "/tasks?wait=30", {
        "agent": "chat", "input": {"do": "echo", "secret": "acme-4711"}})
    assert (status, body["status"]) == (200, "succeeded"), body
    task_id = body["task_id"]
    assert acme("GET", f"/tasks/{task_id}")[1]["tenant"] == "acme"
    assert acme("DELETE", "/agents/chat")[0] == 200
    assert globex("POST", "/agents", {"agents": {"chat": CHAT}})[0] == 200
    for path in ("/tasks", "/tasks?agent=chat"):
        status, body = unseen(globex, path, task_id)
        assert status == 200, body
    # (what globex ran in the module's other tests, which a random order may run first)
    had = {t["task_id"] for t in globex("GET", "/tasks")[1]["tasks"]}
    status, body = unseen(globex, f"/tasks/{task_id}", "acme-4711")
    assert (status, body["detail"]) == (404, f"no such task: {task_id}"), body
    # globex's chat runs its own tasks; acme still reads its record
    status, body = globex("POST", "/tasks?wait=30", {"agent": "chat",
                                                    "input": {"do": "echo"}})
    assert (status, body["status"]) == (200, "succeeded"), body
    assert globex("GET", f"/tasks/{body['task_id']}")[1]["tenant"] == "globex"
    assert {t["task_id"] for t in globex("GET", "/tasks")[1]["tasks"]} == {
        *had, body["task_id"]}
    status, body = acme("GET", f"/tasks/{task_id}")
    assert (status, body["tenant"], body["output"]["secret"]) == (200, "acme", "acme-4711")
    assert globex("DELETE", "/agents/chat")[0] == 200


def test_a_session_behind_a_freed_name_is_not_handed_to_its_new_holder(home: Home
                                                                       ) -> None:
    acme, globex = home.tenant("acme"), home.tenant("globex", at=1)
    assert acme("POST", "/agents", {"agents": {"talk": TALK}})[0] == 200
    status, body = acme("POST", "/tasks?wait=30", {"agent": "talk", "session": "s",
                                                  "input": {"turn": "acme-4711"}})
    assert (status, body["output"]["turns"]) == (200, ["acme-4711"]), body
    assert acme("DELETE", "/agents/talk")[0] == 200
    assert globex("POST", "/agents", {"agents": {"talk": TALK}})[0] == 200
    assert unseen(globex, "/sessions", "acme-4711") == (200, {"sessions": []})
    status, body = unseen(globex, "/agents/talk/sessions/s", "acme-4711")
    assert status == 404, body
    status, body = globex("POST", "/tasks?wait=30", {"agent": "talk", "session": "s",
                                                    "input": {"turn": 1}})
    # its own session of the name, started afresh: nothing of acme's state
    assert (status, body["output"]["turns"], body["output"]["given"]) == (
        200, [1], False), body
    assert globex("DELETE", "/agents/talk")[0] == 200


def test_an_idempotency_key_is_each_tenants_own(home: Home) -> None:
    acme, globex = home.tenant("acme"), home.tenant("globex", at=1)
    key = {"Idempotency-Key": "order-7"}
    ran = [who("POST", "/tasks?wait=30", {"agent": "acme-chat" if who is acme else
                                          "globex-chat", "input": {"turn": 1}}, key)
           for who in (acme, globex, acme)]
    assert [status for status, _ in ran] == [200, 200, 200], ran
    first, other, again = (body for _, body in ran)
    assert other["task_id"] != first["task_id"]
    assert (again["task_id"], again["replayed"]) == (first["task_id"], True)
