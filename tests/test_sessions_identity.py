"""A session is its owner's, not its name's (issue 52 item 1, DESIGN 20, decision 440):
tenant acme's agent `chat` keeps a secret in session `s1`; once acme removes it (or the
operator frees the name), tenant globex's own `chat` running `s1` starts a fresh session
and never lists, reads, ends or is given acme's. Removing an agent ends its sessions,
their states deleted. Over HTTP with each tenant's token, the control socket through the
CLI, and across a restart of the daemon whose config no longer declares acme's agent.
Real daemons (in this process, or a process), real SDK workers (tests/session_agent.py);
the cluster's side is tests/cluster/test_cluster_session_identity.py."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from corral import jsonrpc
from corral.taskoptions import TaskOptions

from .conftest import ROOT
from .daemon_harness import PY, free_port, in_process
from .daemon_harness import Daemon as DaemonProcess
from .test_daemon_cli import tmp  # noqa: F401  (a fixture)
from .test_http_api import Api
from .test_tokens import cli

HERE = Path(__file__).parent
TENANTS = "[tenants.acme]\n[tenants.globex]\n"
SCOPES = ["agents:read", "agents:write", "tasks:read", "tasks:run"]
SECRET = "acme's secret"
WEEK = 7 * 86400  # the default session_ttl


def chat_table() -> dict[str, Any]:
    """A tenant's `chat`, as its caller adds it (the tenant is filled in for it)."""
    return {"command": [PY, f"{HERE}/session_agent.py"], "env": {"PYTHONPATH": str(ROOT)},
            "stop_timeout": 5.0}


def chat_toml(tenant: str) -> str:
    return textwrap.dedent(f"""
        [agents.chat]
        command = ["{PY}", "{HERE}/session_agent.py"]
        env = {{ PYTHONPATH = "{ROOT}" }}
        stop_timeout = 5.0
        tenant = "{tenant}"
    """)


async def turn(api: Api, token: str, value: str, session: str = "s1") -> dict[str, Any]:
    """A turn of `session` of `chat`, over HTTP, its output once it ended."""
    status, body, _ = await api.ask("POST", "/tasks?wait=60", token, {
        "agent": "chat", "input": {"turn": value}, "session": session})
    assert status == 200 and body["status"] == "succeeded", body
    out: dict[str, Any] = body["output"]
    return out


def listed(body: Any) -> list[tuple[str | None, str, str]]:
    return [(s.get("tenant"), s["agent"], s["session"]) for s in body["sessions"]]


@pytest.mark.deadline(120)
async def test_a_freed_name_never_hands_its_sessions_to_the_next_tenant(
        tmp_path: Path) -> None:
    """Over HTTP, with a token of each tenant: acme's session ends with its agent; globex's
    `chat` of the same name starts `s1` afresh and lists only its own."""
    async with in_process(tmp_path, "", TENANTS + '[http]\nlisten = "127.0.0.1:0"\n'
                          ) as d, aiohttp.ClientSession() as http:
        api = Api(d, http)
        for name, tenant in (("ta", "acme"), ("tg", "globex")):
            made = await d.dispatcher.call(_operator(), "tokens.create", {
                "name": name, "scopes": SCOPES, "tenant": tenant})
            api.tokens[name] = made.token
        status, body, _ = await api.ask("POST", "/agents", "ta",
                                        {"agents": {"chat": chat_table()}})
        assert status == 200, body
        assert (await turn(api, "ta", SECRET))["turns"] == [SECRET]
        assert (await turn(api, "ta", "more", session="s2"))["turns"] == ["more"]
        status, body, _ = await api.ask("GET", "/sessions", "ta")
        assert listed(body) == [("acme", "chat", "s1"), ("acme", "chat", "s2")]
        status, body, _ = await api.ask("DELETE", "/agents/chat", "ta")
        assert status == 200, body
        # removing the agent ended its sessions: nothing listed, their rows deleted
        rc, out, err = await cli(d, "sessions", "--json")
        assert rc == 0, err
        assert json.loads(out)["sessions"] == []
        rows = d.services.store.db.execute("SELECT count(*) FROM sessions").fetchone()
        assert rows == (0,)
        # globex takes the name
        status, body, _ = await api.ask("POST", "/agents", "tg",
                                        {"agents": {"chat": chat_table()}})
        assert status == 200, body
        status, body, _ = await api.ask("GET", "/sessions", "tg")
        assert (status, body["sessions"]) == (200, [])
        status, body, _ = await api.ask("GET", "/agents/chat/sessions/s1", "tg")
        assert (status, body["detail"]) == (404, "no such session: s1 of agent chat")
        status, body, _ = await api.ask("POST", "/agents/chat/sessions/s1/end", "tg")
        assert (status, body["detail"]) == (404, "no such session: s1 of agent chat")
        out = await turn(api, "tg", "globex's first")
        assert (out["turns"], out["given"]) == (["globex's first"], False)
        status, body, _ = await api.ask("GET", "/sessions", "tg")
        assert listed(body) == [("globex", "chat", "s1")]
        # the old owner sees nothing of the new one's either
        status, body, _ = await api.ask("GET", "/sessions", "ta")
        assert (status, body["sessions"]) == (200, [])
        # the operator sees it, with its tenant (the CLI, over the socket)
        rc, out, err = await cli(d, "sessions", "--json")
        assert rc == 0, err
        assert listed(json.loads(out)) == [("globex", "chat", "s1")]


def _operator() -> Any:
    from corral.daemon.caller import Caller

    return Caller(via="socket")


@pytest.mark.timeout(180)
def test_after_a_restart_and_when_the_operator_frees_the_name(
        tmp: Path) -> None:  # noqa: F811
    """acme's `chat` is the config file's; the daemon is restarted with a file that no
    longer declares it (its sessions' rows stay, acme's). globex adds a `chat` of its own:
    its `s1` starts afresh, and neither tenant lists or shows the other's. The operator
    then frees the name (`corral remove`, the socket): globex's sessions end with it,
    acme's stay acme's (acme ends it); a `chat` of globex again starts afresh."""
    port = free_port()
    http = f'{TENANTS}[http]\nlisten = "127.0.0.1:{port}"\n'
    d = DaemonProcess(tmp, chat_toml("acme") + http)
    base = f"http://127.0.0.1:{port}/api/v1"
    tokens: dict[str, str] = {}

    def ask(verb: str, path: str, token: str, body: Any = None) -> tuple[int, Any]:
        import urllib.error
        import urllib.request

        req = urllib.request.Request(
            base + path, method=verb, data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {tokens[token]}",
                     "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=90) as r:
                return r.status, json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")

    def run(token: str, value: str, session: str = "s1") -> dict[str, Any]:
        status, body = ask("POST", "/tasks?wait=60", token, {
            "agent": "chat", "input": {"turn": value}, "session": session})
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
        assert run("ta", SECRET)["turns"] == [SECRET]
        d.stop()
        d.config.write_text(d.config.read_text().replace(chat_toml("acme"), ""))
        d.start()
        # acme's session outlived the restart (its agent may come back), acme's alone,
        # expiring after the default session_ttl, as no agent's now
        kept = ask("GET", "/sessions", "ta")[1]
        assert listed(kept) == [("acme", "chat", "s1")]
        assert kept["sessions"][0]["expires"] == kept["sessions"][0]["last_used"] + WEEK
        status, body = ask("POST", "/agents", "tg", {"agents": {
            "chat": {**chat_table(), "session_ttl": 3600}}})
        assert status == 200, body
        assert ask("GET", "/sessions", "tg") == (200, {"sessions": []})
        assert ask("GET", "/agents/chat/sessions/s1", "tg") == (404, {
            "type": "about:blank", "title": "not found", "status": 404,
            "detail": "no such session: s1 of agent chat", "code": jsonrpc.NOT_FOUND})
        out = run("tg", "globex's first")
        assert (out["turns"], out["given"]) == (["globex's first"], False)
        theirs = ask("GET", "/sessions", "tg")[1]
        assert listed(theirs) == [("globex", "chat", "s1")]
        assert theirs["sessions"][0]["expires"] == theirs["sessions"][0]["last_used"] + 3600
        kept = ask("GET", "/sessions", "ta")[1]  # globex's session_ttl is not acme's
        assert listed(kept) == [("acme", "chat", "s1")]
        assert ask("GET", "/sessions?agent=chat", "ta")[1] == kept  # by its agent's name
        assert kept["sessions"][0]["expires"] == kept["sessions"][0]["last_used"] + WEEK
        shown = d.json("sessions")
        assert listed(shown) == [("acme", "chat", "s1"), ("globex", "chat", "s1")]
        # acme's own, it shows (and may end) while another holds the name; globex, its own
        status, body = ask("GET", "/agents/chat/sessions/s1", "ta")
        assert (status, body["session"]["tenant"], body["session"]["tasks"]) == (
            200, "acme", 1)
        status, body = ask("GET", "/agents/chat/sessions/s1", "tg")
        assert (status, body["session"]["tenant"]) == (200, "globex")
        # a restart again: each keeps its own
        d.stop()
        d.start()
        out = run("tg", "globex's second")
        assert (out["turns"], out["given"]) == (["globex's first", "globex's second"], True)
        # the operator frees the name: globex's sessions end, acme's stay acme's
        r = d.cli("remove", "chat")
        assert r.returncode == 0, r.stderr
        assert listed(d.json("sessions")) == [("acme", "chat", "s1")]
        status, body = ask("POST", "/agents/chat/sessions/s1/end", "ta")
        assert (status, body["tenant"]) == (200, "acme")
        assert listed(d.json("sessions")) == []
        status, body = ask("POST", "/agents", "tg", {"agents": {"chat": chat_table()}})
        assert status == 200, body
        out = run("tg", "globex anew")
        assert (out["turns"], out["given"]) == (["globex anew"], False)
        human = d.cli("sessions").stdout.splitlines()
        assert human[0].split()[:3] == ["TENANT", "AGENT", "SESSION"]
        assert [ln.split()[:3] for ln in human[1:]] == [["globex", "chat", "s1"]]
    finally:
        d.close()


@pytest.mark.deadline(120)
async def test_a_reload_that_drops_an_agent_ends_its_sessions(tmp_path: Path) -> None:
    """A reload of a file that no longer declares acme's `chat` removes it: its sessions
    end with it (the reload answers once their rows are deleted)."""
    async with in_process(tmp_path, chat_toml("acme"), TENANTS) as d:
        await d.sup.tasks.run("chat", {"turn": SECRET}, TaskOptions(session="s1"))
        rc, out, err = await cli(d, "sessions", "--json")
        assert listed(json.loads(out)) == [("acme", "chat", "s1")]
        config = tmp_path / "corral.toml"
        config.write_text(config.read_text().replace(chat_toml("acme"), ""))
        rc, out, err = await cli(d, "reload")
        assert rc == 0, err
        rc, out, err = await cli(d, "sessions", "--json")
        assert (rc, json.loads(out)["sessions"]) == (0, [])
        assert d.services.store.db.execute("SELECT count(*) FROM sessions").fetchone() == (0,)
        stats = (await d.dispatcher.call(_operator(), "stats.get")).tasks["sessions"]
        assert (stats["live"], stats["ended"]) == (0, 1)
