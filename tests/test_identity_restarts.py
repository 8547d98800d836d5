"""A session keeps its owner's identity through whatever the daemon goes through (issue
74, DESIGN 20, decision 440): tenant acme's runtime agent `chat` keeps a secret in session
`s1`; the daemon is stopped and started again, SIGKILLed and started again, or upgraded
in place (`corral upgrade`); acme then removes `chat` and tenant globex adds a `chat` of
its own. globex lists none of acme's sessions, `GET /agents/chat/sessions/s1` is 404 for
it word for word as a session that never was, and its own first turn of `s1` is given no
state. Removing the agent ended acme's sessions (docs/durable.md#sessions): acme and the
operator list none of them after it either. A real daemon process, its HTTP API with a
token of each tenant, real SDK workers (tests/session_agent.py); the cluster's takeover is
tests/cluster/test_cluster_session_identity.py's."""

from __future__ import annotations

import json
import signal
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from corral import jsonrpc
from corral.supervisor import State

from .conftest import EXAMPLES, ROOT
from .daemon_harness import PY, free_port
from .daemon_harness import Daemon as DaemonProcess
from .test_daemon_cli import tmp  # noqa: F401  (a fixture)
from .test_sessions_identity import SCOPES, TENANTS, chat_table, listed

SECRET = "acme-private-4711"
CHAT_COMMAND = [PY, str(EXAMPLES / "misbehave.py")]
NOT_FOUND = {"type": "about:blank", "title": "not found", "status": 404,
             "detail": "no such session: s1 of agent chat", "code": jsonrpc.NOT_FOUND}


def _graceful(d: DaemonProcess) -> None:
    assert d.stop() == 0
    d.start()


def _killed(d: DaemonProcess) -> None:
    d.stop(signal.SIGKILL)
    d.start()


def _upgraded(d: DaemonProcess) -> None:
    r = d.cli("upgrade")
    assert r.returncode == 0, r.stderr + r.stdout


RESTARTS: list[tuple[str, Callable[[DaemonProcess], None]]] = [
    ("stopped and started", _graceful), ("SIGKILLed", _killed), ("upgraded", _upgraded)]


@pytest.mark.timeout(300)
def test_a_session_keeps_its_owner_through_a_restart_a_kill_and_an_upgrade(
        tmp: Path) -> None:  # noqa: F811
    port = free_port()
    d = DaemonProcess(tmp, "", f'{TENANTS}[http]\nlisten = "127.0.0.1:{port}"\n')
    base = f"http://127.0.0.1:{port}/api/v1"
    tokens: dict[str, str] = {}

    def ask(verb: str, path: str, token: str, body: Any = None) -> tuple[int, Any]:
        req = urllib.request.Request(
            base + path, method=verb, data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {tokens[token]}",
                     "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=90) as r:
                return r.status, json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")

    def run(token: str, value: str) -> dict[str, Any]:
        status, body = ask("POST", "/tasks?wait=60", token, {
            "agent": "chat", "input": {"turn": value}, "session": "s1"})
        assert status == 200 and body["status"] == "succeeded", body
        out: dict[str, Any] = body["output"]
        return out

    try:
        d.start()
        for name, tenant in (("ta", "acme"), ("tg", "globex")):
            r = d.cli("token", "create", name, "--tenant", tenant, "--json",
                      *(w for s in SCOPES for w in ("--scope", s)))
            assert r.returncode == 0, r.stderr
            tokens[name] = json.loads(r.stdout)["token"]
        for how, restart in RESTARTS:
            secret = f"acme's secret before it was {how}"
            status, body = ask("POST", "/agents", "ta", {"agents": {"chat": chat_table()}})
            assert status == 200, (how, body)
            out = run("ta", secret)
            assert (out["turns"], out["given"]) == ([secret], False), how
            restart(d)
            # the session outlived it, acme's, and carries on with its state
            assert listed(ask("GET", "/sessions", "ta")[1]) == [("acme", "chat", "s1")], how
            out = run("ta", "again")
            assert (out["turns"], out["given"]) == ([secret, "again"], True), how
            assert ask("DELETE", "/agents/chat", "ta")[0] == 200, how
            status, body = ask("POST", "/agents", "tg", {"agents": {"chat": chat_table()}})
            assert status == 200, (how, body)
            assert ask("GET", "/sessions", "tg") == (200, {"sessions": []}), how
            assert ask("GET", "/sessions?agent=chat", "tg") == (200, {"sessions": []}), how
            assert ask("GET", "/agents/chat/sessions/s1", "tg") == (404, NOT_FOUND), how
            out = run("tg", "globex's first")
            assert (out["turns"], out["given"]) == (["globex's first"], False), how
            assert listed(ask("GET", "/sessions", "tg")[1]) == [("globex", "chat", "s1")]
            # acme's ended with its agent: acme and the operator see globex's alone
            assert ask("GET", "/sessions", "ta") == (200, {"sessions": []}), how
            assert ask("GET", "/agents/chat/sessions/s1", "ta") == (404, NOT_FOUND), how
            assert listed(d.json("sessions")) == [("globex", "chat", "s1")], how
            assert secret not in json.dumps(d.json("sessions", "show", "chat", "s1"))
            # the name freed again for the next round
            assert ask("DELETE", "/agents/chat", "tg")[0] == 200, how
            assert listed(d.json("sessions")) == [], how
    finally:
        d.close()


@pytest.mark.deadline(120)
async def test_a_replicas_checkpointed_state_is_its_agents_not_its_names(
        tmp_path: Path) -> None:
    """acme's `chat` checkpoints a state (ctx.checkpoint, given back to its replica at its
    next start); acme removes `chat` and globex adds one: globex's replica is given no
    state, and after a restart of the daemon neither."""
    from .test_identity import CHAT, daemon

    async with daemon(tmp_path) as api:
        status, body, _ = await api.ask("POST", "/agents", "acme", {"agents": {"chat": CHAT}})
        assert status == 200, body
        await api.d.sup.wait_state("chat", State.READY, timeout=30)
        status, body, _ = await api.ask("POST", "/tasks?wait=30", "acme", {
            "agent": "chat", "input": {"do": "checkpoint", "state": {"secret": SECRET}}})
        assert (status, body["status"]) == (200, "succeeded"), body
        await api.d.services.store.writer.written()  # (the checkpoint, committed)
        assert (await api.ask("DELETE", "/agents/chat", "acme"))[0] == 200
        status, body, _ = await api.ask("POST", "/agents", "globex", {"agents": {
            "chat": CHAT}})
        assert status == 200, body
        await api.d.sup.wait_state("chat", State.READY, timeout=30)
        status, body, _ = await api.ask("POST", "/tasks?wait=30", "globex", {
            "agent": "chat", "input": {"do": "state"}})
        assert (status, body["output"]) == (200, {"state": None}), body
    async with daemon(tmp_path) as api:
        status, body, _ = await api.ask("POST", "/tasks?wait=30", "globex", {
            "agent": "chat", "input": {"do": "state"}})
        assert (status, body["output"]) == (200, {"state": None}), body


@pytest.mark.deadline(120)
async def test_a_checkpoint_of_an_agent_the_file_dropped_is_not_the_next_holders(
        tmp_path: Path) -> None:
    """acme's `chat` is the file's and checkpoints a state; the daemon is restarted with a
    file that no longer declares it (no removal heard), and globex adds a `chat`: it is
    given no state. Put back in the file as acme's, `chat` is given its own again."""
    import aiohttp

    from .daemon_harness import in_process
    from .test_http_api import Api
    from .test_identity import CHAT_FILE, CONFIG, tenants_api

    async with in_process(tmp_path, CHAT_FILE, CONFIG) as d, aiohttp.ClientSession() as http:
        api = await tenants_api(d, http)
        tokens = api.tokens  # (kept in the state database: the next daemons' too)
        status, body, _ = await api.ask("POST", "/tasks?wait=30", "acme", {
            "agent": "chat", "input": {"do": "checkpoint", "state": {"secret": SECRET}}})
        assert (status, body["status"]) == (200, "succeeded"), body
        await d.services.store.writer.written()
    async with in_process(tmp_path, "", CONFIG) as d, aiohttp.ClientSession() as http:
        api = Api(d, http)
        api.tokens = tokens
        status, body, _ = await api.ask("POST", "/agents", "globex", {"agents": {
            "chat": {"command": CHAT_COMMAND, "env": {"PYTHONPATH": str(ROOT)}}}})
        assert status == 200, body
        await d.sup.wait_state("chat", State.READY, timeout=30)
        status, body, _ = await api.ask("POST", "/tasks?wait=30", "globex", {
            "agent": "chat", "input": {"do": "state"}})
        assert (status, body["output"]) == (200, {"state": None}), body
        assert (await api.ask("DELETE", "/agents/chat", "globex"))[0] == 200
    async with in_process(tmp_path, CHAT_FILE, CONFIG) as d, aiohttp.ClientSession() as http:
        api = Api(d, http)
        api.tokens = tokens
        status, body, _ = await api.ask("POST", "/tasks?wait=30", "acme", {
            "agent": "chat", "input": {"do": "state"}})
        assert (status, body["output"]) == (200, {"state": {"secret": SECRET}}), body


@pytest.mark.deadline(120)
async def test_a_kept_scale_is_its_agents_not_the_next_holders(tmp_path: Path) -> None:
    """The operator scales acme's `chat` (the file's) to 2, kept across restarts; the file
    then gives `chat` to globex (decision 438): globex's `chat` runs the file's 1 replica,
    after the reload and after a restart."""
    from corral.daemon.caller import Caller

    from .daemon_harness import in_process
    from .test_identity import CHAT_FILE, CONFIG

    operator = Caller(via="socket")
    async with in_process(tmp_path, CHAT_FILE, CONFIG) as d:
        await d.dispatcher.call(operator, "agents.scale", {"name": "chat", "replicas": 2})
        await d.services.store.writer.written()
        config = tmp_path / "corral.toml"
        config.write_text(config.read_text().replace('tenant = "acme"', 'tenant = "globex"'))
        await d.dispatcher.call(operator, "config.reload", {})
        await d.sup.wait_state("chat", State.READY, timeout=30)
        chat = d.sup.agents["chat"]
        assert (chat.spec.tenant, chat.spec.replicas) == ("globex", 1)
    globexs = CHAT_FILE.replace('tenant = "acme"', 'tenant = "globex"')
    async with in_process(tmp_path, globexs, CONFIG) as d:
        chat = d.sup.agents["chat"]
        assert (chat.spec.tenant, chat.spec.replicas, len(chat.replicas)) == ("globex", 1, 1)
