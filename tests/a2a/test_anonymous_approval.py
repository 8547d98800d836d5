"""An attacker's pass over `[a2a] anonymous` (issue 88): an anonymous caller was limited to
its agent, not to the tasks it made, and held the scope `approvals` to answer its tasks'
questions. With it, anyone on loopback granted a call an `approve` rule holds for a
person, in a task the operator submitted: a `yes` sent with the task's id paid. Now the
operator's task is none of its own (records.py `started`), and an approval is no
anonymous caller's to give in its own either (deciders.py: test_anonymous_taint.py)."""

from __future__ import annotations

import textwrap

import httpx
import pytest

from ..daemon_harness import Daemon, free_port, shared_tmpdir
from ..test_policy import RULES, SERVER, agent, call, made, text_of, wait_for
from .test_push import message


@pytest.mark.deadline(120)
@pytest.mark.timeout(120)
async def test_an_anonymous_caller_grants_no_approval_a_person_is_asked_for() -> None:
    port = free_port()
    d = Daemon(shared_tmpdir(), agent("worker") + SERVER + RULES, extra=textwrap.dedent(f"""
        [http]
        listen = "127.0.0.1:{port}"
        [a2a]
        anonymous = ["worker"]
    """))
    try:
        d.start()
        task_id = d.ask("tasks.submit", {"agent": "worker",
                                         "input": call("pay", amount=100)})["task_id"]
        [ask] = wait_for(lambda: d.ask("approvals.list")["asks"], "the payment's ask")
        async with httpx.AsyncClient(timeout=30) as http:
            sent = message("yes", task_id)
            sent["message"]["parts"] = [{"text": "yes"}]
            r = await http.post(f"http://127.0.0.1:{port}/a2a/worker", json={
                "jsonrpc": "2.0", "id": 1, "method": "SendMessage", "params": sent})
        error = r.json().get("error")
        assert error is not None and (error["code"], error["message"]) == (
            -32001, f"no such task: {task_id}"), r.text
        # the ask is as it was, and a person's approval is still what pays
        assert [a["id"] for a in d.ask("approvals.list")["asks"]] == [ask["id"]]
        assert d.cli("approvals", "approve", ask["id"]).returncode == 0
        assert text_of(d.ask("tasks.get", {"task_id": task_id, "wait": True})) == (
            False, made("pay", amount=100))
    finally:
        d.close()
