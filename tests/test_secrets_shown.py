"""Secrets in a spec never leave the daemon (issue 34, finding 8; decision 160): an agent's
`env` values and its `config` values under secret-looking keys are in no output — the
CLI's JSON and tables, the REST API, the fleet's SSE stream, the dashboard, the audit
table, the daemon's log files and stderr — whichever way the agent was added and however
often it changed; a rollback still runs the real values (the agent sees them, and says so
as its task's output, which is its own business)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from corral import redact
from corral.cli.client import CallFailed, Client
from corral.daemon.revisions import describe_change
from corral.supervisor.config import McpServerSpec

from .cluster.harness import nodes
from .cluster.harness import run as run_cluster_task
from .conftest import ROOT
from .daemon_harness import PY, Daemon, corral_run, shared_tmpdir
from .redis_harness import redis_server
from .test_daemon_cli import wait_until
from .test_gateway_stdio import wait_until_async
from .test_http_api import SOCKET, serving, sse_events
from .test_mcp_remote import RemoteServer
from .test_ui import login_link, page

ENV_SECRET = "s3cr3t-VALUE-1"
CONFIG_SECRET = "s3cr3t-VALUE-2"
SECRETS = (ENV_SECRET, CONFIG_SECRET)

# answers every task with what it was given: its env's API_KEY and its config's password
KEEPER = ("import os\nfrom corral.worker import run\n"
          "run(lambda t, ctx: {'key': os.environ['API_KEY'], "
          "'password': ctx.config['password'], 'model': ctx.config['model']})\n")


def keeper(script: Path, key: str, password: str) -> dict[str, Any]:
    return {"command": [PY, str(script)],
            "env": {"PYTHONPATH": str(ROOT), "API_KEY": key},
            "config": {"password": password, "model": "small"},
            "backoff_initial": 0.05, "stop_timeout": 5.0}


def leaks(where: str, text: str | bytes) -> list[str]:
    """`where` for each secret `text` holds (none: the empty list)."""
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    return [f"{where}: {s}" for s in SECRETS if s in text]


def audit_rows(db: Path) -> list[tuple[str, str, str]]:
    con = sqlite3.connect(db)
    try:
        return con.execute("SELECT method, params, outcome FROM audit ORDER BY id").fetchall()
    finally:
        con.close()


@pytest.fixture
def tmp() -> Iterator[Path]:
    d = shared_tmpdir()
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_a_secret_added_on_the_socket_is_in_no_output_and_a_rollback_still_runs_it(
        tmp: Path) -> None:
    script = tmp / "keeper.py"
    script.write_text(KEEPER)
    d = Daemon(tmp, "")
    try:
        d.start()
        with Client(d.sock) as c:
            # revision 1 holds the secrets; revision 2 other values; 3 is 1 again
            c.call("agents.add", {"agents": {"keeper": keeper(script, ENV_SECRET,
                                                               CONFIG_SECRET)}})
            c.call("agents.remove", {"names": ["keeper"]})
            c.call("agents.add", {"agents": {"keeper": keeper(script, "plain-1", "plain-2")}})
            back = c.call("agents.rollback", {"name": "keeper", "revision": 1})
        # what the rollback changed is named, its values never
        assert back["change"] == "config.password changed, env.API_KEY changed"
        hist = d.json("history", "keeper")
        assert [(r["revision"], r["change"]) for r in hist["revisions"]] == [
            (1, "created"), (2, "config.password changed, env.API_KEY changed"),
            (3, "rollback to revision 1: config.password changed, env.API_KEY changed")]
        # a revision's table: env's keys with their values hidden, config's secret-looking
        # keys hidden, the rest as it was written
        assert hist["revisions"][0]["spec"]["env"] == {"PYTHONPATH": "***", "API_KEY": "***"}
        assert hist["revisions"][0]["spec"]["config"] == {"password": "***", "model": "small"}
        described = d.json("describe", "keeper")
        assert described["spec"]["env"] == ["API_KEY", "PYTHONPATH"]
        assert described["spec"]["config"] == {"password": "***", "model": "small"}
        wait_until(lambda: d.status().get("keeper#0", {}).get("state") == "ready",
                   what="keeper ready")

        found: list[str] = []
        for args in (("describe", "keeper", "--json"), ("describe", "keeper"),
                     ("history", "keeper", "--json"), ("history", "keeper"),
                     ("status", "--json"), ("audit", "--json"), ("audit",),
                     ("logs", "corral", "-n", "500")):
            r = d.cli(*args)
            found += leaks(" ".join(args), r.stdout + r.stderr)
        entries = d.json("audit")["entries"]
        adds = [e["params"] for e in entries if e["method"] == "agents.add"]
        assert [a["agents"]["keeper"]["env"]["API_KEY"] for a in adds] == ["***", "***"]
        # the audit shows a config as an env, its keys alone (decision 452)
        assert [a["agents"]["keeper"]["config"] for a in adds] == [
            {"password": "***", "model": "***"}] * 2

        # the rollback restored the real values: the agent sees them
        ran = d.json("run", "keeper", "--input", "null")
        assert ran["output"] == {"key": ENV_SECRET, "password": CONFIG_SECRET,
                                 "model": "small"}
        assert d.stop() == 0
        assert d.proc is not None and d.proc.stderr is not None
        found += leaks("the daemon's stderr", d.proc.stderr.read())
        found += leaks("corral.log", (d.state / "logs" / "corral.log").read_bytes())
        rows = audit_rows(d.state / "corral.db")
        assert [m for m, _, _ in rows].count("agents.add") == 2
        found += leaks("the audit table", repr(rows))
        assert found == []
    finally:
        d.close()


@pytest.mark.deadline(150)
async def test_a_secret_added_over_http_is_in_no_answer_stream_page_or_row(
        tmp_path: Path) -> None:
    script = tmp_path / "keeper.py"
    script.write_text(KEEPER)
    async with serving(tmp_path, "") as api:
        await api.token("ops", "agents:read", "agents:write", "audit:read", "logs:read")
        await api.token("reader", "agents:read")
        status, body, _ = await api.ask("POST", "/agents", "ops", {
            "agents": {"keeper": keeper(script, ENV_SECRET, CONFIG_SECRET)}})
        assert (status, body) == (200, {"added": ["keeper"]}), body
        assert (await api.ask("DELETE", "/agents/keeper", "ops"))[0] == 200
        status, body, _ = await api.ask("POST", "/agents", "ops", {
            "agents": {"keeper": keeper(script, "plain-1", "plain-2")}})
        assert status == 200, body

        found: list[str] = []
        url = api.base + "/replicas/stream"
        auth = {"Authorization": f"Bearer {api.tokens['reader']}"}
        async with api.http.get(url, headers=auth) as stream:
            events = await sse_events(stream, 1)  # the snapshot
            status, body, _ = await api.ask("POST", "/agents/keeper/rollback", "ops",
                                            {"revision": 1})
            assert (status, body["change"]) == (
                200, "config.password changed, env.API_KEY changed"), body
            # the rollback's new process, its old one going: rows of the spec's agent
            async with asyncio.timeout(30):
                events += await sse_events(stream, 3)
        assert any(e["event"] != "agents.snapshot" for e in events)
        found += leaks("the fleet's SSE stream", msgspec.json.encode(events))

        for token in ("ops", "reader"):
            for path in ("/agents/keeper", "/agents/keeper/history", "/agents"):
                status, body, _ = await api.ask("GET", path, token)
                assert status == 200, (path, body)
                found += leaks(f"GET {path} ({token})", msgspec.json.encode(body))
        status, body, _ = await api.ask("GET", "/agents/keeper/history", "reader")
        assert [r["spec"]["env"]["API_KEY"] for r in body["revisions"]] == ["***"] * 3
        for path in ("/audit", "/logs?names=corral&lines=500"):
            status, body, _ = await api.ask("GET", path, "ops")
            assert status == 200, body
            found += leaks(f"GET {path}", msgspec.json.encode(body))

        # the dashboard: its page, and what the page asks for (the same handlers)
        link = await login_link(api.d)
        async with page(api.d) as p:
            await p.login(link.url)
            status, _, html = await p.get("/ui/")
            assert status == 200
            found += leaks("the dashboard's page", html)
            for method, params in (("agents.describe", {"name": "keeper"}),
                                   ("agents.history", {"name": "keeper", "limit": 20}),
                                   ("audit.list", {}), ("agents.status", {})):
                status, _, body = await p.call(method, params)
                assert status == 200, (method, body)
                found += leaks(f"the dashboard's {method}", msgspec.json.encode(body))

        # the audit table, as its rows are written (by the store's writer)
        db = api.d.services.store.path
        await wait_until_async(lambda: [m for m, _, _ in audit_rows(db)].count(
            "agents.add") == 2)
        found += leaks("the audit table", repr(audit_rows(db)))
        found += leaks("corral.log", (tmp_path / "state" / "logs" / "corral.log").read_bytes())

        # a row an earlier corral wrote with the values in it is shown by the rule too
        written = msgspec.json.encode(
            {"agents": {"old": keeper(script, ENV_SECRET, CONFIG_SECRET)}}).decode()
        con = sqlite3.connect(db)
        with con:
            con.execute("INSERT INTO audit (time, uid, pid, method, params, outcome) "
                        "VALUES (?, 0, 1, 'agents.add', ?, 'ok')", (time.time(), written))
        con.close()
        status, body, _ = await api.ask("GET", "/audit", "ops")
        old = [e for e in body["entries"] if e["method"] == "agents.add"
               and "old" in e["params"]["agents"]]
        assert old and old[0]["params"]["agents"]["old"]["env"]["API_KEY"] == "***"
        found += leaks("GET /audit, an earlier corral's row", msgspec.json.encode(body))
        assert found == []

        # the rollback restored the real values: the agent sees them
        result = await api.d.dispatcher.call(SOCKET, "tasks.run", {"agent": "keeper"})
        assert result.status == "succeeded"
        assert msgspec.json.decode(msgspec.json.encode(result.output)) == {
            "key": ENV_SECRET, "password": CONFIG_SECRET, "model": "small"}


def test_the_rule_hides_a_servers_env_headers_oauth_secret_and_url_password() -> None:
    spec = McpServerSpec(name="remote", url="https://bot:" + ENV_SECRET + "@mcp.example/x",
                         headers={"Authorization": "Bearer " + ENV_SECRET},
                         auth="oauth", oauth_client_id="corral",
                         oauth_client_secret=CONFIG_SECRET, env={"K": ENV_SECRET})
    shown = redact.table(msgspec.to_builtins(spec))
    assert leaks("an MCP server's table", msgspec.json.encode(shown)) == []
    assert shown["url"] == "https://bot:***@mcp.example/x"
    assert shown["headers"] == {"Authorization": "***"}
    assert shown["env"] == {"K": "***"}
    assert (shown["oauth_client_secret"], shown["oauth_client_id"]) == ("***", "corral")
    # the spec itself is untouched: the daemon connects with it
    assert spec.oauth_client_secret == CONFIG_SECRET and spec.env == {"K": ENV_SECRET}
    # the cluster's Redis URL, as `corral nodes` and its messages say it: the same rule
    assert redact.url(f"redis://:{ENV_SECRET}@h:6379/0") == "redis://:***@h:6379/0"
    assert redact.url("unix:///run/redis.sock") == "unix:///run/redis.sock"


def test_config_keys_that_look_secret_are_hidden_at_any_depth() -> None:
    config = {"model": "small", "apiKey": "a", "db": {"DB_PASSWORD": "b", "host": "h",
                                                       "url": "postgres://u:c@h/db"},
              "clients": [{"name": "x", "client_secret": "d"}], "bearer_token": None,
              "auth": {"user": "u", "pass": "e"}, "retries": 3,
              "max_tokens": 512, "tokenizer": "t", "keywords": ["k"], "author": "a",
              "api_tokens": ["f"], "max_tokens_key": "g"}
    assert redact.table({"config": config})["config"] == {
        "model": "small", "apiKey": "***", "db": {"DB_PASSWORD": "***", "host": "h",
                                                  "url": "postgres://u:***@h/db"},
        "clients": [{"name": "x", "client_secret": "***"}], "bearer_token": None,
        "auth": "***", "retries": 3,
        "max_tokens": 512, "tokenizer": "t", "keywords": ["k"], "author": "a",
        "api_tokens": "***", "max_tokens_key": "***"}
    # a table of the wrong shape (a refused call's params) hides what it may hold
    assert redact.table({"env": "K=v", "config": "password=v"}) == {
        "env": "***", "config": "***"}
    assert redact.params("agents.add", {"agents": {"a": {"env": {"K": "v"}}}}) == {
        "agents": {"a": {"env": {"K": "***"}}}}
    assert redact.params("tokens.create", {"name": "n"}) == {"name": "n"}
    # a person's answer, an approval's edited arguments and a signal's data are the task's
    # or run's data: their audit row says their size (test_ui_approvals reads the rows)
    assert redact.params("approvals.resolve", {
        "id": "a1", "decision": "approved", "arguments": {"path": "/x"}, "answer": None}) == {
        "id": "a1", "decision": "approved", "arguments": "(13 bytes)", "answer": None}
    assert redact.params("approvals.resolve", {"id": "a1", "answer": "my pin is 1234"}) == {
        "id": "a1", "answer": "(16 bytes)"}
    assert redact.params("runs.signal", {"run_id": "r", "name": "go", "data": [1]}) == {
        "run_id": "r", "name": "go", "data": "(3 bytes)"}
    # a change names the keys of env, config and headers, never their values
    assert describe_change({"command": "a", "config": {"model": "x"}},
                           {"command": "a", "config": {"model": "y"}}) == (
        "config.model changed")


def test_a_remote_servers_url_password_and_headers_are_in_no_output(tmp: Path) -> None:
    server = RemoteServer("sse").start()
    try:
        url = server.url.replace("http://", f"http://bot:{ENV_SECRET}@")
        d = Daemon(tmp, f'[mcp_servers.far]\nurl = "{url}"\nstart = "eager"\n'
                        f'headers = {{ X-Api-Key = "{CONFIG_SECRET}" }}\n')
        try:
            d.start()
            shown = server.url.replace("http://", "http://bot:***@")
            st = wait_until(lambda: next((s for s in d.ask("mcp.status")["mcp_servers"]
                                          if s["state"] == "ready"), None), what="far ready")
            assert st["reason"] == f"connected to {shown} (HTTP+SSE, MCP 2025-11-25, 4 tools)"
            found: list[str] = []
            for args in (("mcp", "status", "--json"), ("status", "--json"),
                         ("logs", "corral", "-n", "500")):
                r = d.cli(*args)
                found += leaks(" ".join(args), r.stdout + r.stderr)
            r = d.cli("tools", "call", "far__echo", "--args", '{"text": "hi"}')
            assert (r.returncode, r.stdout) == (0, "hi\n"), r.stderr
            assert d.stop() == 0
            assert d.proc is not None and d.proc.stderr is not None
            found += leaks("the daemon's stderr", d.proc.stderr.read())
            found += leaks("corral.log", (d.state / "logs" / "corral.log").read_bytes())
            assert found == []
        finally:
            d.close()
    finally:
        server.stop()


@pytest.mark.parametrize(("toml", "said"), [
    (f'[mcp_servers.far]\nurl = "ftp://bot:{ENV_SECRET}@mcp.example/x"\n',
     "mcp_servers.far: url 'ftp://bot:***@mcp.example/x' is not an http:// or https:// URL"),
    (f'[cluster]\nredis = "http://:{ENV_SECRET}@x:6379"\n',
     "cluster.redis: 'http://:***@x:6379' is not a redis://, rediss:// or unix:// URL")])
def test_check_config_names_a_wrong_url_without_its_password(tmp: Path, toml: str, said: str
                                                            ) -> None:
    config = tmp / "corral.toml"
    config.write_text(toml)
    r = corral_run(["check-config", str(config)], timeout=30,
                   env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert (r.returncode, r.stdout, r.stderr) == (
        1, "", f"corral: invalid config: {config}: {said}\n")


def test_a_cluster_agents_secrets_are_in_no_answer_and_its_replicas_run_them(
        tmp: Path) -> None:
    script = tmp / "keeper.py"
    script.write_text(KEEPER)
    with redis_server(tmp / "redis") as redis, nodes(tmp, redis, {"a": ""}) as ns:
        a = ns["a"]
        a.call("agents.add", {"agents": {"keeper": keeper(script, ENV_SECRET, CONFIG_SECRET)},
                              "cluster": True})
        a.call("agents.scale", {"name": "keeper", "replicas": 2})
        # the cluster's revisions, from Redis: the rule's, as a local agent's
        hist = a.json("history", "keeper")
        assert [r["spec"]["env"]["API_KEY"] for r in hist["revisions"]] == ["***", "***"]
        assert [r["spec"]["config"] for r in hist["revisions"]] == [
            {"password": "***", "model": "small"}] * 2
        found: list[str] = []
        for args in (("describe", "keeper", "--json"), ("history", "keeper", "--json"),
                     ("audit", "--json"), ("nodes", "--json"), ("logs", "corral", "-n", "500")):
            r = a.cli(*args)
            found += leaks(" ".join(args), r.stdout + r.stderr)
        # Redis keeps the real values: the node placing a replica runs them
        got = run_cluster_task(a, "keeper", None)
        assert (got["status"], got["output"]) == ("succeeded", {
            "key": ENV_SECRET, "password": CONFIG_SECRET, "model": "small"}), got
        assert a.stop() == 0
        assert a.proc is not None and a.proc.stderr is not None
        found += leaks("the node's stderr", a.proc.stderr.read())
        found += leaks("the audit table", repr(audit_rows(a.state / "corral.db")))
        assert found == []


# a method's params field that carries a table or a document, by what it is: the tables
# an agent's spec is made of are redacted (redact.SPEC_PARAMS); the rest are payloads the
# caller sent for the work itself (a task's input, an event's data, a tool's arguments) or
# tables that hold no secret (a tenant's quotas)
PAYLOADS = {("tasks.run", "input"), ("events.publish", "data"), ("tools.call", "arguments"),
            ("tenants.add", "tenants"), ("tenants.set", "set"), ("prompts.get", "arguments"),
            ("resources.read", "uri")}
# definitions of workflows and teams: shown whole by describe and history to who may read
# them (docs/workflows.md, "Who sees what": no place for a secret, which goes in an
# agent's env or config, redacted), so their audit rows show them as they are
PAYLOADS |= {("workflows.add", "workflows"), ("workflows.update", "set"),
             ("teams.add", "teams"), ("teams.update", "set")}
# shown by their size alone (redact.SIZED_PARAMS)
PAYLOADS |= {(name, field) for name, fields in redact.SIZED_PARAMS.items() for field in fields}


def test_every_method_carrying_a_table_is_redacted_or_a_payload() -> None:
    """A new method whose params carry a table must say whether its audit row and log line
    hide it: agents.update's `set` once went out in clear."""
    import typing

    from corral.methods import REGISTRY

    def open_table(tp: Any) -> bool:
        if tp is Any or typing.get_origin(tp) is dict:
            return True
        return any(open_table(a) for a in typing.get_args(tp))

    unsaid = []
    for name, method in REGISTRY.items():
        hints = typing.get_type_hints(method.params)
        for field in method.params.__struct_fields__:
            if not open_table(hints[field]):
                continue
            spec = redact.SPEC_PARAMS.get(name)
            # (a method whose params are one server's table: its hidden keys)
            whole = name in redact.TABLE_PARAMS and field in redact.VALUES_HIDDEN
            if (spec is None or spec[0] != field) and (name, field) not in PAYLOADS \
                    and not whole:
                unsaid.append(f"{name}.{field}")
    assert not unsaid, f"params that carry a table, neither redacted nor a payload: {unsaid}"


def test_an_update_keeps_its_secrets_out_of_audit_and_logs(tmp: Path) -> None:
    script = tmp / "keeper.py"
    script.write_text(KEEPER)
    d = Daemon(tmp)
    try:
        d.start()
        added = Client(d.sock).ask("agents.add", {"agents": {"keeper": keeper(
            script, "plain-1", "plain-2")}})
        assert added.added == ["keeper"]
        r = d.cli("update", "keeper", "--env", f"API_KEY={ENV_SECRET}", "--set",
                  f"config.password={CONFIG_SECRET}")
        assert r.returncode == 0, r.stderr
        # refused, it is audited too
        r = d.cli("update", "keeper", "--env", f"API_KEY={ENV_SECRET}", "--set",
                  "replicas=-1")
        assert r.returncode == 1
        found = leaks("corral audit", d.cli("audit", "--json").stdout)
        found += leaks("update's answer", r.stdout + r.stderr)
        found += leaks("the audit table", repr(audit_rows(d.state / "corral.db")))
        found += leaks("corral.log", (d.state / "logs" / "corral.log").read_text())
        found += leaks("describe", d.cli("describe", "keeper", "--json").stdout)
        found += leaks("history", d.cli("history", "keeper", "--json").stdout)
        assert not found, found
        assert sum("agents.update" in m for m, _, _ in audit_rows(d.state / "corral.db")) == 2
        # the agent runs the real values all the same
        out = json.loads(d.cli("run", "keeper").stdout)
        assert (out["key"], out["password"]) == (ENV_SECRET, CONFIG_SECRET)
    finally:
        d.close()


def test_a_table_nested_past_the_bound_is_refused_before_anything(tmp: Path) -> None:
    deep: Any = 1
    for _ in range(600):
        deep = {"a": deep}
    d = Daemon(tmp)
    try:
        d.start()
        c = Client(d.sock)
        for method, params in (
                ("agents.add", {"agents": {"dz": {"command": ["/bin/true"], "replicas": 0,
                                                  "config": deep}}}),
                ("agents.update", {"name": "dz", "set": {"config": deep}})):
            with pytest.raises(CallFailed) as err:
                c.ask(method, params)
            assert err.value.message.endswith(
                f"agents.dz: tables and lists nested more than {redact.MAX_DEPTH} deep"), (
                    method, err.value.message)
        assert "dz" not in d.cli("status", "--json").stdout
        # the redaction itself is bounded however deep a value it is given
        shown = redact.params("agents.add", {"agents": {"x": {"config": deep}}})
        assert shown["agents"]["x"]["config"] is not None
        assert d.cli("audit").returncode == 0
    finally:
        d.close()


async def test_an_agents_config_values_are_in_no_audit_row_nor_log_line() -> None:
    """Issue 52 (4c): a `config` value is where a key goes whatever its name; the audit
    (its table, `corral audit`, `GET /audit`) and the daemon's log (`GET /logs`) show an
    added or updated agent's config as its env, the keys alone. `describe` still shows
    the settings by decision 160's rule, to whoever may describe the agent."""
    tmp = shared_tmpdir()  # a short socket path, for the CLI
    leaked = ("sk-CONFIG-not-secret-named", "sk-NESTED-value", "sk-UPDATED-value")
    spec = {"command": [PY, str(ROOT / "examples" / "hello.py")],
            "env": {"PYTHONPATH": str(ROOT)},
            "config": {"model": "model-7b", "openai": leaked[0], "nested": {"x": leaked[1]}}}
    try:
        async with serving(tmp, "") as api:
            await api.token("ops", "agents:read", "agents:write")
            await api.token("reader", "audit:read", "logs:read")
            status, body, _ = await api.ask("POST", "/agents", "ops",
                                            {"agents": {"chat": spec}})
            assert (status, body) == (200, {"added": ["chat"]}), body

            async def cli(*args: str) -> str:
                # asyncio's: the test's supervisor spares it (conftest.py)
                proc = await asyncio.create_subprocess_exec(
                    PY, "-m", "corral", "--socket", str(tmp / "corral.sock"), *args,
                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                    env={**os.environ, "PYTHONPATH": str(ROOT)})
                out, err = await proc.communicate()
                assert proc.returncode == 0, err
                return out.decode()

            await cli("update", "chat", "--set", f"config.openai={leaked[2]}")
            db = api.d.services.store.path
            await wait_until_async(lambda: {m for m, _, _ in audit_rows(db)} >= {
                "agents.add", "agents.update"})
            status, body, _ = await api.ask("GET", "/audit", "reader")
            assert status == 200, body
            rows = {e["method"]: e["params"] for e in body["entries"]}
            assert rows["agents.add"]["agents"]["chat"]["config"] == {
                "model": "***", "openai": "***", "nested": "***"}
            assert rows["agents.add"]["agents"]["chat"]["env"] == {"PYTHONPATH": "***"}
            assert rows["agents.update"]["set"]["config"] == {"openai": "***"}
            outputs = {
                "GET /audit": msgspec.json.encode(body).decode(),
                "GET /logs": msgspec.json.encode(
                    (await api.ask("GET", "/logs?names=corral&lines=500", "reader"))[1]
                ).decode(),
                "corral audit": await cli("audit"),
                "corral audit --json": await cli("audit", "--json"),
                "the audit table": repr(audit_rows(db)),
                "corral.log": (tmp / "state" / "logs" / "corral.log").read_text(),
            }
            assert "agents.add" in outputs["GET /logs"]
            assert [f"{where}: {s}" for where, text in outputs.items()
                    for s in (*leaked, "model-7b") if s in text] == []
            # describe keeps decision 160's rule: the settings read, secret names hidden
            status, body, _ = await api.ask("GET", "/agents/chat", "ops")
            assert body["spec"]["config"]["model"] == "model-7b"
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
