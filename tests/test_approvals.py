"""Approvals end to end (docs/approvals.md): a real daemon, a real SDK agent
(examples/misbehave.py) calling a real MCP tool server that counts its calls
(tests/servers/counting_mcp.py). The call its agent's `approve` names waits for a person:
the task is `waiting` and says for what; the daemon SIGKILLed meanwhile, the ask is still
pending after its restart and the task's retry finds it again; approved, the call runs
once and the task succeeds; denied, the agent reads the tool's error; past
approve_timeout with on_timeout = "fail", the task fails; every bad decision is refused
with its message, the ask untouched."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import re
import signal
import sqlite3
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from aiohttp import web

from corral import jsonrpc
from corral.daemon.caller import Caller

from .conftest import EXAMPLES, ROOT
from .daemon_harness import PY, Daemon, free_port, in_process, shared_tmpdir
from .test_daemon_cli import wait_until
from .test_gateway_stdio import wait_until_async
from .test_http_api import SOCKET, serving, sse_events
from .test_sandbox import config_error
from .test_tenants import OPERATOR, refused

HERE = Path(__file__).parent


def fleet(tmp: Path) -> str:
    agent = textwrap.dedent(f"""
        command = ["{PY}", "{EXAMPLES}/misbehave.py"]
        env = {{ PYTHONPATH = "{ROOT}" }}
        tools = ["counting__*"]
        approve = ["counting__bump"]
        stop_timeout = 10.0
    """)
    return (f"[agents.writer]{agent}retries = 1\n\n"
            f"[agents.hasty]{agent}approve_timeout = 0.5\non_timeout = \"fail\"\n\n"
            f'[mcp_servers.counting]\ncommand = ["{PY}", "{HERE}/servers/counting_mcp.py", '
            f'"{tmp}/server-count"]\n')


def bump(i: int) -> dict[str, Any]:
    return {"do": "tools", "tool": "counting__bump", "arguments": {"i": i}}


def wait_for(fn: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    """The suite's wait_until, what it waits for first and a longer default."""
    return wait_until(fn, timeout, what)


def counted(tmp: Path) -> list[str]:
    path = tmp / "server-count"
    return path.read_text().split() if path.exists() else []


@pytest.fixture
def daemon() -> Iterator[Daemon]:
    tmp = shared_tmpdir()
    d = Daemon(tmp, fleet(tmp))
    try:
        d.start()
        yield d
    finally:
        d.close()


def pending(d: Daemon) -> list[dict[str, Any]]:
    asks: list[dict[str, Any]] = d.ask("approvals.list")["asks"]
    return asks


@pytest.mark.deadline(120)
def test_an_ask_outlives_a_sigkill_and_approved_its_call_runs_once(daemon: Daemon) -> None:
    d = daemon
    task_id = d.ask("tasks.submit", {"agent": "writer", "input": bump(1)})["task_id"]
    [ask] = wait_for(lambda: pending(d), "the call's ask")
    assert (ask["kind"], ask["task_id"], ask["agent"], ask["subject"]) == (
        "approval", task_id, "writer", {"tool": "counting__bump", "arguments": {"i": 1}})
    info = wait_for(lambda: (i := d.ask("tasks.get", {"task_id": task_id}))["status"]
                    == "waiting" and i, "the task waiting")
    assert [a["id"] for a in info["asks"]] == [ask["id"]]
    shown = d.cli("task", task_id)
    assert "status: waiting" in shown.stdout
    assert (f'waiting for: approval of counting__bump {{"i":1}} (ask {ask["id"]})'
            in shown.stdout), shown.stdout

    d.stop(signal.SIGKILL)
    d.start()
    # the same ask, pending; the task's retry made the same call and waits on it again
    assert [a["id"] for a in pending(d)] == [ask["id"]]
    wait_for(lambda: d.ask("tasks.get", {"task_id": task_id})["status"] == "waiting",
             "the retry waiting on the same ask")
    assert [a["id"] for a in pending(d)] == [ask["id"]]
    assert counted(d.dir) == []

    approved = d.cli("approvals", "approve", ask["id"])
    assert approved.returncode == 0, approved.stderr
    assert re.search(r"^approved by uid \d+ pid \d+ at ", approved.stdout, re.M), \
        approved.stdout
    done = d.ask("tasks.get", {"task_id": task_id, "wait": True})
    assert done["status"] == "succeeded", done
    assert done["output"][0]["content"][0]["text"] == "bumped 1"
    assert counted(d.dir) == ["1"]
    # the call counted once in its task's tool budget: when it was made, not when held
    assert done["tool_calls"] == 1
    assert pending(d) == []

    # a decision replayed is refused, naming how the ask ended
    again = d.cli("approvals", "deny", ask["id"])
    assert again.returncode != 0
    assert re.search(rf"ask {ask['id']} has ended: approved by uid \d+ pid \d+ at ",
                     again.stderr), again.stderr
    assert d.ask("approvals.get", {"id": ask["id"]})["end"] == "approved"
    assert counted(d.dir) == ["1"]


@pytest.mark.deadline(120)
def test_an_ask_whose_tasks_end_was_committed_before_a_kill_is_withdrawn_at_start(
        daemon: Daemon) -> None:
    """The task's end committed, its ask's withdrawal not (the asks' table renamed from
    under the daemon: that write fails, the task's row does not), then a SIGKILL: the
    next daemon withdraws the ask of a task its journal says ended, and a decision of it
    is refused naming that end."""
    d = daemon
    task_id = d.ask("tasks.submit", {"agent": "writer", "input": bump(7)})["task_id"]
    [ask] = wait_for(lambda: pending(d), "the call's ask")
    side = sqlite3.connect(d.state / "corral.db", isolation_level=None)
    try:
        side.execute("ALTER TABLE asks RENAME TO asks_away")
        d.ask("tasks.cancel", {"task_id": task_id})
        assert d.ask("tasks.get", {"task_id": task_id, "wait": True})["status"] == "cancelled"
        # read withdrawn from the task's end on; pending again once its write failed
        wait_for(lambda: pending(d) == [ask], "the withdrawal's write failing")
        d.stop(signal.SIGKILL)
        side.execute("ALTER TABLE asks_away RENAME TO asks")
    finally:
        side.close()
    d.start()
    assert d.ask("tasks.get", {"task_id": task_id})["status"] == "cancelled"
    assert pending(d) == []
    gone = d.ask("approvals.get", {"id": ask["id"]})
    assert (gone["end"], gone["by"]) == ("withdrawn", "corral"), gone
    approved = d.cli("approvals", "approve", ask["id"])
    assert approved.returncode != 0
    assert re.search(rf"ask {ask['id']} has ended: withdrawn by corral at ",
                     approved.stderr), approved.stderr
    assert counted(d.dir) == []


@pytest.mark.deadline(120)
def test_denied_the_agent_reads_the_tools_error_and_timed_out_the_task_fails(
        daemon: Daemon) -> None:
    d = daemon
    task_id = d.ask("tasks.submit", {"agent": "writer", "input": bump(2)})["task_id"]
    [ask] = wait_for(lambda: pending(d), "the call's ask")
    denied = d.cli("approvals", "deny", ask["id"], "--reason", "not today")
    assert denied.returncode == 0, denied.stderr
    done = d.ask("tasks.get", {"task_id": task_id, "wait": True})
    assert done["status"] == "succeeded"
    [result] = done["output"]
    assert result["isError"] is True
    assert re.fullmatch(rf"tool call counting__bump was denied by uid \d+ pid \d+ "
                        rf"\(ask {ask['id']}\): not today",
                        result["content"][0]["text"]), result

    hasty = d.ask("tasks.submit", {"agent": "hasty", "input": bump(3)})["task_id"]
    failed = d.ask("tasks.get", {"task_id": hasty, "wait": True})
    assert failed["status"] == "failed", failed
    [timed] = [a for a in [d.ask("approvals.get", {"id": i}) for i in
                           _asks_of(d, hasty)]]
    assert (timed["end"], timed["by"]) == ("timed_out", "corral")
    assert failed["error"]["message"] == (
        f"tool call counting__bump was not approved within 0.5 s (approve_timeout; "
        f"ask {timed['id']})")
    assert counted(d.dir) == []


@pytest.mark.deadline(120)
def test_a_call_too_large_to_ask_about_is_refused_and_nothing_is_asked(daemon: Daemon
                                                                          ) -> None:
    """An agent's arguments are what a person is shown and the inbox holds while it
    waits: past max_ask_bytes the call is refused by name, never asked and never made."""
    d = daemon
    big = {"do": "tools", "tool": "counting__bump",
           "arguments": {"i": 4, "pad": "x" * (64 * 1024)}}
    task_id = d.ask("tasks.submit", {"agent": "writer", "input": big})["task_id"]
    done = d.ask("tasks.get", {"task_id": task_id, "wait": True})
    assert done["status"] == "succeeded", done
    [said] = done["output"]
    assert said["error"] == jsonrpc.INVALID_PARAMS, said
    assert said["message"] == (
        f"task {task_id}'s approval was not asked: its call's arguments are 65590 "
        f"bytes of JSON, over the bound a person is asked with (max_ask_bytes 65536)"
    ), said
    assert pending(d) == [] and _asks_of(d, task_id) == []
    assert done["tool_calls"] == 0 and counted(d.dir) == []
    # at the bound it is asked as ever
    fits = {**big, "arguments": {"i": 5, "pad": "x" * (64 * 1024 - 54)}}
    fitting = d.ask("tasks.submit", {"agent": "writer", "input": fits})["task_id"]
    [ask] = wait_for(lambda: pending(d), "the call's ask")
    assert ask["task_id"] == fitting and ask["subject"]["arguments"]["i"] == 5
    d.ask("tasks.cancel", {"task_id": fitting})


def _asks_of(d: Daemon, task_id: str) -> list[str]:
    """The ids of a task's asks, from the audit-free record: the state database."""
    import sqlite3

    db = sqlite3.connect(d.state / "corral.db")
    try:
        return [r[0] for r in db.execute("SELECT id FROM asks WHERE task_id = ?",
                                         (task_id,))]
    finally:
        db.close()


@pytest.mark.deadline(120)
def test_bad_decisions_are_refused_with_their_message_and_change_nothing(
        daemon: Daemon) -> None:
    d = daemon
    d.ask("tasks.submit", {"agent": "writer", "input": bump(4)})
    [ask] = wait_for(lambda: pending(d), "the call's ask")
    cases = [
        (("approvals", "approve", "ask-nope"), "no such ask: ask-nope"),
        (("approvals", "approve", ask["id"], "--args", "{nope"), "--args: not JSON"),
        (("approvals", "approve", ask["id"], "--args", "[1]"),
         "--args: the arguments are a JSON object"),
        (("approvals", "answer", ask["id"], "--data", '"yes"'),
         f"ask {ask['id']} is an approval: it is approved or denied, not answered"),
        (("approvals", "approve", ask["id"], "--args",
          json.dumps({"i": "x" * (64 * 1024)})),
         "the decision's data is 65558 bytes of JSON, over the bound "
         "(max_decision_bytes 65536)"),
        (("approvals", "show", "ask-nope"), "no such ask: ask-nope"),
    ]
    for argv, message in cases:
        r = d.cli(*argv)
        assert r.returncode != 0, argv
        assert message in r.stderr, (argv, r.stderr)
    assert pending(d) == [ask]
    assert counted(d.dir) == []
    # approved with edited arguments: the call runs with them, the originals kept
    r = d.cli("approvals", "approve", ask["id"], "--args", '{"i": 40}')
    assert r.returncode == 0, r.stderr
    wait_for(lambda: counted(d.dir) == ["40"], "the edited call")
    ended = d.ask("approvals.get", {"id": ask["id"]})
    assert ended["subject"]["arguments"] == {"i": 4}
    assert ended["data"] == {"arguments": {"i": 40}}


async def test_a_caller_without_the_approvals_scope_is_refused(tmp_path: Path) -> None:
    async with in_process(tmp_path, "") as d:
        reader = Caller(via="http", token="reader", scopes=frozenset({"tasks:read"}))
        for method, params in (("approvals.list", {}), ("approvals.get", {"id": "a"}),
                               ("approvals.resolve", {"id": "a", "decision": "denied"})):
            code, text = await refused(d, reader, method, params)
            assert (code, text) == (jsonrpc.FORBIDDEN, f"forbidden: {method} needs the "
                                                       f"approvals scope, which token "
                                                       f"reader does not hold")


async def test_a_tenants_approve_holds_whatever_its_agents_table_says(tmp_path: Path
                                                                       ) -> None:
    agents = fleet(tmp_path).replace('approve = ["counting__bump"]\n', "")
    agents = agents.replace("[agents.writer]", '[agents.writer]\ntenant = "t"', 1).replace(
        "[mcp_servers.counting]", "[mcp_servers.counting]\nshared = true")
    tenant = '\n[tenants.t]\napprove = ["counting__*"]\n'
    async with in_process(tmp_path, agents, tenant) as d:
        inbox = d.services.task_engine.inbox
        submitted = await d.dispatcher.call(OPERATOR, "tasks.submit", msgspec.json.encode(
            {"agent": "writer", "input": bump(5)}))
        await wait_until_async(inbox.pending)
        [ask] = inbox.pending()
        assert (ask.task_id, ask.tenant, ask.subject["tool"]) == (
            submitted.task_id, "t", "counting__bump")
        # an agent of no tenant, without approval of its own: its call runs unasked
        done = await d.dispatcher.call(OPERATOR, "tasks.run", msgspec.json.encode(
            {"agent": "hasty", "input": {**bump(6), "tool": "counting__big",
                                         "arguments": {"kb": 1}}}))
        assert done.status == "succeeded"
        await d.dispatcher.call(OPERATOR, "approvals.resolve", {"id": ask.id,
                                                                 "decision": "denied"})
        assert counted(tmp_path) == []


@pytest.mark.deadline(120)
async def test_the_http_inbox_lists_streams_and_resolves_once_audited(tmp_path: Path
                                                                       ) -> None:
    async with serving(tmp_path, fleet(tmp_path)) as api:
        await api.token("approver", "approvals")
        await api.token("runner", "tasks:run", "tasks:read")
        auth = {"Authorization": f"Bearer {api.tokens['approver']}"}
        async with api.http.get(f"{api.base}/approvals/stream", headers=auth) as stream:
            assert (stream.status, stream.headers["Content-Type"]) == (
                200, "text/event-stream")
            submitted = await api.d.dispatcher.call(SOCKET, "tasks.submit",
                                                    msgspec.json.encode(
                                                        {"agent": "writer",
                                                         "input": bump(7)}))
            [made] = await asyncio.wait_for(sse_events(stream, 1), 30)
            assert (made["event"], made["data"]["task_id"], made["data"]["end"]) == (
                "approvals.ask", submitted.task_id, None)
            ask_id = made["data"]["id"]
            status, body, _ = await api.ask("GET", "/approvals", "approver")
            assert (status, [a["id"] for a in body["asks"]]) == (200, [ask_id])
            status, body, _ = await api.ask("GET", "/approvals", "runner")
            assert (status, body["detail"]) == (403, "forbidden: approvals.list needs the "
                                                     "approvals scope, which token runner "
                                                     "does not hold")
            status, body, _ = await api.ask("POST", f"/approvals/{ask_id}/resolve",
                                            "approver", {"decision": "maybe"})
            assert status == 400 and body["detail"].startswith("invalid params: "), body
            status, body, _ = await api.ask("POST", f"/approvals/{ask_id}/resolve",
                                            "approver", {"decision": "denied",
                                                         "reason": "no"})
            assert (status, body["end"], body["by"], body["data"]) == (
                200, "denied", "token approver", {"reason": "no"})
            [ended] = await asyncio.wait_for(sse_events(stream, 1), 30)
            assert (ended["data"]["id"], ended["data"]["end"]) == (ask_id, "denied")
        status, body, _ = await api.ask("POST", f"/approvals/{ask_id}/resolve",
                                        "approver", {"decision": "approved"})
        assert status == 409
        assert body["detail"].startswith(f"ask {ask_id} has ended: denied by token "
                                         f"approver at "), body
        # each decision audited: who, the ask, what was decided (the refused one too;
        # params that do not decode are no decision)
        await api.d.services.store.writer.written()
        rows = [(r.method, r.who, r.outcome) for r in (await api.d.dispatcher.call(
            SOCKET, "audit.list", {"limit": 100})).entries
                if r.method == "approvals.resolve"]
        assert [(who, outcome.split(":")[0]) for _, who, outcome in rows] == [
            ("token approver", "ok"), ("token approver", "error")], rows


class Receiver:
    """A chat tool's webhook endpoint: each delivery kept with its headers; the first
    `fail` answered 500."""

    def __init__(self, fail: int) -> None:
        self.fail = fail
        self.got: list[tuple[dict[str, str], bytes]] = []
        self.arrived = asyncio.Event()

    async def hook(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.got.append((dict(request.headers), body))
        self.arrived.set()
        if self.fail:
            self.fail -= 1
            return web.Response(status=500)
        return web.Response(status=204)


@pytest.mark.deadline(120)
async def test_the_webhook_delivers_each_ask_signed_in_order_retried(tmp_path: Path
                                                                      ) -> None:
    receiver = Receiver(fail=1)
    app = web.Application()
    app.router.add_post("/hook", receiver.hook)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    secret = "sixteen-chars-or-more"
    try:
        table = (f'\n[approvals]\nwebhook = "http://127.0.0.1:{port}/hook"\n'
                 f'webhook_secret = "{secret}"\n')
        async with in_process(tmp_path, fleet(tmp_path), table) as d:
            await d.dispatcher.call(OPERATOR, "tasks.submit", msgspec.json.encode(
                {"agent": "writer", "input": bump(8)}))
            await wait_until_async(lambda: len(receiver.got) >= 2)  # failed, then again
            ask_id = msgspec.json.decode(receiver.got[0][1])["ask"]["id"]
            await d.dispatcher.call(OPERATOR, "approvals.resolve",
                                    {"id": ask_id, "decision": "approved"})
            await wait_until_async(lambda: len(receiver.got) >= 3)
    finally:
        await runner.cleanup()
    names = [h["X-Corral-Delivery"] for h, _ in receiver.got]
    assert names == [f"{ask_id}:pending", f"{ask_id}:pending", f"{ask_id}:approved"]
    for headers, body in receiver.got:
        assert headers["X-Corral-Signature"] == "sha256=" + hmac.new(
            secret.encode(), body, hashlib.sha256).hexdigest()
    bodies = [msgspec.json.decode(b) for _, b in receiver.got]
    assert bodies[0] == bodies[1]  # the same delivery, tried again
    assert (bodies[2]["delivery"], bodies[2]["ask"]["end"], bodies[2]["ask"]["by"]) == (
        f"{ask_id}:approved", "approved", "uid -1 pid -1")


@pytest.mark.deadline(120)
async def test_the_webhooks_bounds_are_the_configs(tmp_path: Path) -> None:
    """webhook_timeout 0.5, webhook_retries 1, webhook_queue 1, to a receiver that never
    answers: the pending ask's delivery is tried twice, each cut at its timeout, then
    given up; the approval's, told while the first is being delivered, finds the queue
    full and is dropped. Each said in the daemon's log by the bound's name."""
    hung: list[bytes] = []

    async def never(request: web.Request) -> web.Response:
        hung.append(await request.read())
        await asyncio.sleep(60)
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", never)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    url = f"http://127.0.0.1:{port}/hook"
    try:
        table = (f'\n[approvals]\nwebhook = "{url}"\nwebhook_secret = '
                 '"sixteen-chars-or-more"\nwebhook_timeout = 0.5\nwebhook_retries = 1\n'
                 'webhook_queue = 1\n')
        async with in_process(tmp_path, fleet(tmp_path), table) as d:
            await d.dispatcher.call(OPERATOR, "tasks.submit", msgspec.json.encode(
                {"agent": "writer", "input": bump(8)}))
            await wait_until_async(lambda: len(hung) == 1)
            ask_id = msgspec.json.decode(hung[0])["ask"]["id"]
            await d.dispatcher.call(OPERATOR, "approvals.resolve",
                                    {"id": ask_id, "decision": "approved"})

            async def said() -> list[str]:
                lines = await d.dispatcher.call(SOCKET, "logs.tail",
                                                {"names": ["corral"], "lines": 500})
                return [ln.text for ln in lines.lines if "approvals webhook" in ln.text]

            gave_up = (f"approvals webhook: delivery {ask_id}:pending given up after 2 "
                       f"attempts to {url} (")
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 30
            seen = await said()
            while not any(t.startswith(gave_up) for t in seen):
                assert loop.time() < deadline, seen
                await asyncio.sleep(0.05)
                seen = await said()
    finally:
        await runner.cleanup()
    assert [msgspec.json.decode(b)["delivery"] for b in hung] == [f"{ask_id}:pending"] * 2
    assert (f"approvals webhook: a delivery of ask {ask_id} dropped: 1 wait for {url}, "
            "the bound (webhook_queue 1)") in seen, seen


@pytest.mark.parametrize(("table", "said"), [
    ('webhook = "ftp://x/hook"\nwebhook_secret = "sixteen-chars-or-more"',
     "approvals.webhook: 'ftp://x/hook' is not an http:// or https:// URL"),
    ('webhook = "https://x/hook"\nwebhook_secret = "short"',
     "approvals.webhook_secret: give at least 16 characters"),
])
def test_a_bad_webhook_is_refused_naming_the_key(tmp_path: Path, table: str,
                                                 said: str) -> None:
    path = tmp_path / "corral.toml"
    path.write_text(f"[approvals]\n{table}\n")
    assert said in config_error(path)
