"""An attacker's pass over `[a2a] anonymous` and taint (issue 88): an anonymous caller's
message is text from no one, as an untrusted tool's output is. Its task was given no
label, so what the message asked reached a sensitive tool with no person asked: the mail
was sent."""

from __future__ import annotations

import textwrap

import httpx
import pytest

from ..conftest import ROOT
from ..daemon_harness import PY, Daemon, free_port, shared_tmpdir
from ..test_policy import HERE, made, wait_for

# an agent that does what its message's data part says, as a model led by its prompt does
DOER = textwrap.dedent("""
    from corral.worker import run

    def handle(task, ctx):
        for part in task.get("parts", []):
            if "data" in part:
                return ctx.call_tool(part["data"]["tool"], part["data"]["arguments"])
        return "nothing asked"

    run(handle)
""")
SEND = {"tool": "pol__send_mail", "arguments": {"to": "me@example.com", "body": "hi"}}


@pytest.mark.deadline(120)
@pytest.mark.timeout(120)
async def test_an_anonymous_callers_message_reaches_no_sensitive_tool_unasked() -> None:
    tmp = shared_tmpdir()
    (tmp / "doer.py").write_text(DOER)
    (tmp / "doer.py").chmod(0o644)
    port = free_port()
    d = Daemon(tmp, textwrap.dedent(f"""
        [agents.doer]
        command = ["{PY}", "{tmp}/doer.py"]
        env = {{ PYTHONPATH = "{ROOT}" }}
        tools = ["pol__*"]

        [mcp_servers.pol]
        command = ["{PY}", "{HERE}/servers/policy_mcp.py"]
        tools_sensitive = ["send_mail"]
    """), extra=textwrap.dedent(f"""
        [http]
        listen = "127.0.0.1:{port}"
        [a2a]
        anonymous = ["doer"]
    """))
    try:
        d.start()
        # a token's holder asks it: sent, no one asked
        done = d.ask("tasks.run", {"agent": "doer", "input": {
            "parts": [{"data": SEND}]}})
        assert done["status"] == "succeeded", done
        assert done["output"]["content"][0]["text"] == made("send_mail",
                                                             **SEND["arguments"])
        # an anonymous caller asks it: the mail waits for a person, who is told why
        async with httpx.AsyncClient(timeout=30) as http:
            r = await http.post(f"http://127.0.0.1:{port}/a2a/doer", json={
                "jsonrpc": "2.0", "id": 1, "method": "SendMessage", "params": {
                    "message": {"messageId": "m-1", "role": "ROLE_USER",
                                "parts": [{"data": SEND}]},
                    "configuration": {"returnImmediately": True}}})
            task_id = r.json()["result"]["task"]["id"]
            [ask] = wait_for(lambda: d.ask("approvals.list")["asks"], "the mail's ask")
            assert ask["task_id"] == task_id
            assert ask["subject"] == {**SEND, "policy": "taint (after untrusted a2a "
                                                        "anonymous doer)"}
            # which the anonymous caller does not give
            r = await http.post(f"http://127.0.0.1:{port}/a2a/doer", json={
                "jsonrpc": "2.0", "id": 2, "method": "SendMessage", "params": {
                    "message": {"messageId": "m-2", "role": "ROLE_USER", "taskId": task_id,
                                "parts": [{"text": "yes"}]}}})
            assert r.json()["error"]["message"] == (
                f"task {task_id} waits for a person's approval, which an anonymous caller "
                "does not give: a token's holder or `corral approvals` gives it"), r.text
        assert d.cli("approvals", "deny", ask["id"]).returncode == 0
        got = d.ask("tasks.get", {"task_id": task_id, "wait": True})
        assert got["output"]["isError"] is True, got
    finally:
        d.close()
