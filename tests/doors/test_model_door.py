"""The door contract at the model gateway (DESIGN 28, decision 1180): each link's promise
that applies to a model call — identity and view, policy rules, labels and approval,
budget, trace, audit — run at the model gateway's door, by a task (`model`: the agent's
task calls it with its replica's OPENAI_API_KEY) and by the test with the replica's token
while it runs no task (`model idle`); on both homes. Real daemons, a real stand-in
provider (tests/servers/model_upstream.py), a real agent (model_door_agent.py)."""

from __future__ import annotations

import concurrent.futures
import http.server
import secrets
import shutil
import subprocess
import tempfile
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ..conftest import ROOT
from ..contract.home import KINDS, made
from ..daemon_harness import PY
from ..test_daemon_cli import wait_until
from .conftest import SERVERS, Entry
from .door_agent import gateway
from .model_door_agent import model
from .test_doors import audit, recorded, refused
from .test_spans import CLIENT, SPAN, Receiver, attrs

HERE = Path(__file__).parent
PATIENCE = 60.0
POOL = concurrent.futures.ThreadPoolExecutor(4)
DOORS = ("model", "model idle")


def config(upstream: str, receiver: int) -> str:
    agent = textwrap.dedent(f"""
        command = ["{PY}", "{HERE}/model_door_agent.py"]
        env = {{ PYTHONPATH = "{ROOT}" }}
        stop_timeout = 10.0
        tools = ["pol__*"]
    """)
    models = "".join(f'[models.{name}]\nurl = "{upstream}/v1"\nformat = "openai"\n{extra}\n'
                     for name, extra in (("open", ""), ("secret", 'agents = ["nobody"]\n'),
                                         ("paid", ""), ("touchy", "sensitive = true\n")))
    return (f"[agents.caller]{agent}\n"
            f"[agents.budgeted]{agent}tokens_per_minute = 20\n\n"
            f"[agents.spent]{agent}tokens_per_minute = 20\n\n"
            f'[mcp_servers.pol]\ncommand = ["{PY}", "{SERVERS}/policy_mcp.py"]\n'
            'tools_untrusted = ["fetch"]\n\n' + models +
            '[[policy]]\nname = "no paid"\nmatch = { model = "paid" }\neffect = "deny"\n\n'
            '[gateway]\nlisten = "127.0.0.1:0"\n\n[tracing]\nexport_interval = 0.05\n'
            f'endpoint = "http://127.0.0.1:{receiver}/v1/traces"\nsample = 1.0\n')


@pytest.fixture(scope="module", params=KINDS)
def home(request: pytest.FixtureRequest) -> Iterator[Entry]:
    tmp = Path(tempfile.mkdtemp(prefix="mdoor-"))  # short: the daemon's sockets are in it
    receiver = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)  # (its spans)
    thread = threading.Thread(target=receiver.serve_forever, daemon=True)
    thread.start()
    provider = subprocess.Popen([PY, str(ROOT / "tests" / "servers" / "model_upstream.py"),
                                 "0"], stdout=subprocess.PIPE)
    try:
        assert provider.stdout is not None
        upstream = provider.stdout.readline().decode().strip()
        with made(request.param, tmp, config(upstream, receiver.server_address[1])) as h:
            yield Entry(h)
    finally:
        provider.kill()
        provider.wait(30)
        receiver.shutdown()
        receiver.server_close()
        thread.join()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(params=DOORS)
def door(request: pytest.FixtureRequest) -> str:
    door: str = request.param
    return door


class Made:
    """Model calls under way at a door: a task of `agent` making `calls` (the outcomes of
    its model calls), or the test making them with the replica's token (a `tool` call of
    no task by /mcp first)."""

    def __init__(self, d: Entry, agent: str, door: str, calls: list[dict[str, Any]],
                 traceparent: str | None = None) -> None:
        """`traceparent`: the caller's context (the task's, given at its submission; a
        call of no task's, its header)."""
        self.d, self.agent = d, agent
        self.task_id: str | None = None
        if door == "model":
            self.task_id = d.ask("tasks.submit", {
                "agent": agent, "input": {"calls": calls}, **(
                    {"traceparent": traceparent} if traceparent else {})})["task_id"]
            return
        # (a replica of the first entry's, whose gateway its call of no task is made at;
        # what it asks is every node's: test_doors.py's
        # test_an_ask_of_a_call_of_no_task_is_every_nodes)
        env = d.ask("tasks.run", {"agent": agent, "input": {"env": True}, "local": True})[
            "output"]

        def made() -> list[dict[str, Any]]:
            said = []
            for c in calls:
                if "model" in c:
                    said.append(model(c["model"], env["OPENAI_BASE_URL"],
                                      env["OPENAI_API_KEY"], traceparent))
                else:
                    said.append(gateway("", c["tool"], c.get("arguments", {}),
                                        env["CORRAL_MCP_URL"], env["CORRAL_MCP_TOKEN"]))
            return said
        self.future = POOL.submit(made)

    def outcomes(self) -> list[dict[str, Any]]:
        """Each model call's outcome, in turn."""
        if self.task_id is None:
            said: list[dict[str, Any]] = self.future.result(PATIENCE)
        else:
            done = self.d.ask("tasks.get", {"task_id": self.task_id, "wait": True})
            assert done["status"] == "succeeded", done
            said = done["output"]
        return [o for o in said if "status" in o]

    def ask(self) -> dict[str, Any]:
        """The person's ask the call waits on, once it is listed."""
        def mine() -> dict[str, Any] | None:
            for a in self.d.ask("approvals.list")["asks"]:
                if a["agent"] == self.agent and (
                        a["task_id"] == self.task_id if self.task_id is not None
                        else a["task_id"].startswith(f"replica:{self.agent}#")):
                    return dict(a)
            return None
        found: dict[str, Any] = wait_until(mine, PATIENCE, f"an ask of {self.agent}")
        return found


@pytest.mark.deadline(120)
def test_a_model_not_for_the_agent_is_refused_naming_its_view(home: Entry, door: str
                                                              ) -> None:
    """The identity and view link: a model whose `agents` name another is refused
    naming them; one corral does not serve, naming the agent's models; nothing made."""
    secret, unknown = Made(home, "caller", door, [{"model": "secret"},
                                                 {"model": "nonesuch"}]).outcomes()
    assert secret == {"status": 403, "text": "model secret is not for agent caller "
                                             "(models.secret.agents: nobody)"}, secret
    assert unknown == {"status": 404, "text": "model 'nonesuch' is not served by corral to "
                                              "agent caller (its models: open, paid, "
                                              "secret, touchy)"}, unknown


@pytest.mark.deadline(120)
def test_a_policy_deny_is_refused_and_recorded(home: Entry, door: str) -> None:
    """The policy rules link: a rule's deny of the model, in the provider's words; the
    refusal the boundary's (`boundary.refused` of kind policy, its one audit row)."""
    target = "paid (policy rule no paid)"
    before = len(refused(home, "policy", target))
    made = Made(home, "caller", door, [{"model": "paid"}])
    assert made.outcomes() == [{"status": 403, "text": "model call paid is denied by "
                                                       "policy rule no paid"}]
    recorded(home, made, "policy", target, before)


@pytest.mark.deadline(120)
def test_after_an_untrusted_tool_a_sensitive_model_needs_a_person(home: Entry, door: str
                                                                  ) -> None:
    """The labels and approval links: the caller read an untrusted tool's output (on the
    worker link for a task, at /mcp for a call of no task); its call of a sensitive
    model waits on a person's ask, and denied is not made: the boundary's refusal of
    kind taint."""
    target = "touchy (taint (after untrusted pol__fetch): denied)"
    before = len(refused(home, "taint", target))
    made = Made(home, "caller", door, [
        {"tool": "pol__fetch", "arguments": {"url": "https://evil.example"}},
        {"model": "touchy"}])
    ask = made.ask()
    assert ask["subject"]["model"] == "touchy", ask
    said = home.cli("approvals", "deny", ask["id"])
    assert said.returncode == 0, said.stderr
    [outcome] = made.outcomes()
    assert outcome["status"] == 403 and outcome["text"].startswith(
        "model call touchy was denied by "), outcome
    recorded(home, made, "taint", target, before)


@pytest.mark.deadline(120)
def test_a_call_past_the_agents_token_budget_is_refused(home: Entry, door: str) -> None:
    """The budget link: tokens_per_minute 20, 15 tokens a call (the provider's usage):
    the third call is refused naming the budget, never reaching the provider."""
    agent = "budgeted" if door == "model" else "spent"
    first, second, third = Made(home, agent, door, [{"model": "open"}] * 3).outcomes()
    assert first == second == {"status": 200, "text": "echo: hi"}, (first, second)
    assert third["status"] == 429 and third["text"].startswith(
        f"budget exceeded: agent {agent}'s tokens_per_minute is 20, 30 used"), third


@pytest.mark.deadline(120)
def test_a_model_call_is_a_genai_span_under_its_callers_context(home: Entry, door: str
                                                                ) -> None:
    """The trace link: the call a `chat MODEL` client span by the GenAI conventions, a
    child of its task's attempt (the task's trace its submitter's) or, of no task, of the
    context its caller sent (its `traceparent` header), its replica named."""
    trace = secrets.token_hex(16)  # this door's own trace
    made = Made(home, "caller", door, [{"model": "open"}], f"00-{trace}-{SPAN}-01")
    assert made.outcomes() == [{"status": 200, "text": "echo: hi"}]

    def of_trace(name: str) -> list[Any]:
        return [s for s in Receiver.received() if s.trace_id.hex() == trace
                and s.name == name]
    (span,) = wait_until(lambda: of_trace("chat open"), PATIENCE, "the model call's span")
    a = attrs(span)
    assert span.kind == CLIENT and (
        a["gen_ai.operation.name"], a["gen_ai.request.model"], a["gen_ai.provider.name"],
        a["gen_ai.usage.input_tokens"]) == ("chat", "open", "openai", 10), a
    if made.task_id is None:
        assert span.parent_span_id.hex() == SPAN, span
        assert a["corral.replica"].startswith("caller#"), a
    else:
        (attempt,) = wait_until(lambda: of_trace("task/run caller"), PATIENCE,
                                "the task's attempt's span")
        assert span.parent_span_id == attempt.span_id, (span, attempt)
        assert a["corral.task.id"] == made.task_id, a


@pytest.mark.deadline(120)
def test_the_model_call_is_audited(home: Entry, door: str) -> None:
    """The audit link: one row of the audit log a call answered, `model.call` by its
    replica, naming its model and its task (a call of no task: none); a cluster's audit
    is each node's: the row is the node's that ran the call."""
    def rows() -> list[dict[str, Any]]:
        return [e for e in audit(home)
                if e["method"] == "model.call" and e["params"].get("model") == "open"]
    before = len(rows())
    made = Made(home, "caller", door, [{"model": "open"}])
    assert made.outcomes() == [{"status": 200, "text": "echo: hi"}]
    (row,) = wait_until(lambda: (lambda got: got[before:] if len(got) > before else None)(
        rows()), PATIENCE, "the call's audit row")
    label = row["params"]["client"]
    assert label.startswith("caller#") and row["params"].get("task") == made.task_id, row
    assert row["outcome"] == "ok", row
