"""The REST API (`/api/v1`, daemon/http/rest.py) against a real daemon in this process
with `[http] listen = "127.0.0.1:0"`: tokens, scopes, the agent glob, problem+json, the
limits, tasks, idempotency, SSE and the OpenAPI document."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest

from corral import jsonrpc
from corral.daemon.caller import Caller
from corral.daemon.daemon import Daemon
from corral.daemon.http import route, sse
from corral.daemon.http.rest import API_KEY
from corral.supervisor import State
from corral.supervisor.tasks.admission import MAX_INPUT_BYTES

from .daemon_harness import hello, in_process, problem, sleeper
from .test_gateway_stdio import wait_until_async

SOCKET = Caller(via="socket")
PROBLEM = "application/problem+json"


class Api:
    def __init__(self, d: Daemon, http: aiohttp.ClientSession) -> None:
        self.d = d
        self.base = d.http_server.url + "/api/v1"
        self.http = http
        self.tokens: dict[str, str] = {}

    async def token(self, name: str, *scopes: str, agents: str | None = None) -> str:
        made = await self.d.dispatcher.call(SOCKET, "tokens.create", {
            "name": name, "scopes": list(scopes), "agents": agents})
        self.tokens[name] = made.token
        return str(made.token)

    async def ask(self, verb: str, path: str, token: str | None = None, body: Any = None,
                  raw: bytes | None = None, headers: dict[str, str] | None = None
                  ) -> tuple[int, Any, aiohttp.ClientResponse]:
        h = dict(headers or {})
        if token is not None:
            h["Authorization"] = f"Bearer {self.tokens.get(token, token)}"
        data = raw if raw is not None else (msgspec.json.encode(body) if body is not None
                                            else None)
        if data is not None:
            h.setdefault("Content-Type", "application/json")
        async with self.http.request(verb, self.base + path, data=data, headers=h) as r:
            text = await r.read()
            try:
                value = msgspec.json.decode(text) if text else None
            except msgspec.DecodeError:
                value = text
            return r.status, value, r


@contextlib.asynccontextmanager
async def serving(tmp_path: Path, agents: str, http: str = "") -> AsyncIterator[Api]:
    async with in_process(tmp_path, agents, f'\n[http]\nlisten = "127.0.0.1:0"\n{http}\n'
                          ) as d, aiohttp.ClientSession() as session:
        yield Api(d, session)


@pytest.mark.deadline(120)
async def test_tokens_scopes_and_the_agent_glob_over_http(tmp_path: Path) -> None:
    async with serving(tmp_path, hello("web-1") + hello("db")) as api:
        sup = api.d.sup
        pids = {n: sup.agent(n).replicas[0].pid for n in ("web-1", "db")}
        await api.token("reader", "agents:read")
        await api.token("web", "agents:read", "agents:write", "logs:read", agents="web-*")

        # no token, a wrong one, a revoked one: 401, the same for loopback callers
        status, body, r = await api.ask("GET", "/agents")
        assert (status, r.content_type, body) == (401, PROBLEM, problem(
            401, "unauthorized", "unauthorized: no bearer token (send Authorization: "
                                 "Bearer <token>)", jsonrpc.UNAUTHORIZED))
        assert r.headers["WWW-Authenticate"] == 'Bearer realm="corral"'
        bad = problem(401, "unauthorized", "unauthorized: the bearer token is not valid "
                                           "(unknown, revoked or expired)",
                      jsonrpc.UNAUTHORIZED)
        assert (await api.ask("GET", "/agents", "crl_nothing"))[:2] == (401, bad)
        await api.token("gone", "agents:read")
        assert (await api.ask("GET", "/agents", "gone"))[0] == 200
        await api.d.dispatcher.call(SOCKET, "tokens.revoke", {"name": "gone"})
        assert (await api.ask("GET", "/agents", "gone"))[:2] == (401, bad)

        status, body, _ = await api.ask("GET", "/agents", "reader")
        assert status == 200
        assert [(a["name"], a["pid"]) for a in body["agents"]] == [
            ("web-1", pids["web-1"]), ("db", pids["db"])]

        # 403 naming the scope; nothing stopped, nothing audited as done
        status, body, r = await api.ask("POST", "/agents/db/stop", "reader")
        assert (status, r.content_type, body) == (403, PROBLEM, problem(
            403, "forbidden", "forbidden: agents.stop needs the agents:write scope, which "
                              "token reader does not hold", jsonrpc.FORBIDDEN))
        # the glob: db is absent for the web token, as an agent that does not exist
        status, body, _ = await api.ask("GET", "/agents", "web")
        assert [a["name"] for a in body["agents"]] == ["web-1"]
        for verb, path in (("GET", "/agents/db"), ("POST", "/agents/db/stop"),
                           ("POST", "/agents/db/restart"), ("DELETE", "/agents/db"),
                           ("GET", "/agents/db/logs"), ("GET", "/agents/nobody")):
            name = path.split("/")[2]
            # the agents it is told of are its own: web-1, never db
            assert (await api.ask(verb, path, "web"))[:2] == (404, problem(
                404, "not found", f"no such agent: {name} (agents: web-1)",
                jsonrpc.NOT_FOUND)), path
        assert {n: sup.agent(n).replicas[0].pid for n in ("web-1", "db")} == pids
        assert sup.agent("db").replicas[0].state == State.READY

        # the web token may touch its own; audited with the token's name
        status, body, _ = await api.ask("POST", "/agents/web-1/stop", "web")
        assert (status, body) == (200, {"stopped": ["web-1"]})
        assert sup.agent("web-1").replicas[0].state == State.TERMINATED
        writer = api.d.services.store.writer
        assert writer is not None
        await writer.committed()  # audit rows are written behind the answer
        audit = await api.d.dispatcher.call(SOCKET, "audit.list", {"limit": 20})
        rows = [(e.who, e.method, e.outcome) for e in audit.entries
                if e.method.startswith("agents.")]
        assert rows == [("token web", "agents.stop", "ok")]

        # an unknown path or method under the API: problem+json too
        status, body, r = await api.ask("GET", "/nothing", "reader")
        assert (status, r.content_type, body) == (404, PROBLEM, problem(
            404, "not found", "no such resource: /api/v1/nothing"))
        status, body, r = await api.ask("PUT", "/agents", "reader")
        assert (status, body["detail"]) == (405, "/api/v1/agents does not take PUT")


@pytest.mark.deadline(120)
async def test_bad_requests_are_refused_with_a_clear_message_and_change_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with serving(tmp_path, hello("web-1")) as api:
        sup = api.d.sup
        pid = sup.agent("web-1").replicas[0].pid
        await api.token("admin", "admin")

        async def unchanged() -> None:
            assert list(sup.agents) == ["web-1"]
            r = sup.agent("web-1").replicas[0]
            assert (r.state, r.pid) == (State.READY, pid)

        cases: list[tuple[str, str, bytes, int, str]] = [
            ("POST", "/agents", b'{"agents": {"x": ', 400,
             "malformed JSON: Input data was truncated"),
            ("POST", "/agents", b"[1]", 400,
             "invalid params: the body must be a JSON object"),
            ("POST", "/agents", b'{"agents": {}, "force": true}', 400,
             "invalid params: unknown field `force` (known: agents, check, cluster)"),
            # a path's agent cannot be widened by the body
            ("POST", "/agents/web-1/stop", b'{"all": true}', 400,
             "invalid params: unknown field `all`: this request takes no body fields"),
            ("POST", "/agents/web-1/scale", b'{"replicas": "many"}', 400,
             "invalid params: Expected `int`, got `str` - at `$.replicas`"),
            ("GET", "/tasks?limit=ten", b"", 400,
             "invalid params: Expected `int`, got `str` - at `$.limit`"),
            ("GET", "/agents?verbose=1", b"", 400,
             "invalid params: unknown query parameter `verbose` (known: names, tenant)"),
            ("POST", "/tasks", b'{"agent": "web-1", "inputs": 1}', 400,
             "invalid params: unknown field `inputs` (known: agent, input, local, timeout, "
             "priority, delay, not_before, retry, session, tags)"),
            ("POST", "/tasks?wait=forever", b'{"agent": "web-1"}', 400,
             "invalid params: Expected `float | null`, got `str` - at `$.wait`"),
            ("POST", "/tasks?wait=3601", b'{"agent": "web-1"}', 400,
             "invalid params: Expected `float` <= 3600.0 - at `$.wait`"),
            ("POST", "/tasks?after=1", b'{"agent": "web-1"}', 400,
             "invalid params: unknown query parameter `after` (known: wait)"),
            ("POST", "/tasks", b'{"agent": "nobody"}', 404,
             "no such agent: nobody (agents: web-1)"),
        ]
        for verb, path, raw, status, detail in cases:
            got, body, r = await api.ask(verb, path, "admin", raw=raw)
            assert (got, r.content_type, body["detail"]) == (status, PROBLEM, detail), path
            await unchanged()
        assert (await api.d.dispatcher.call(SOCKET, "tasks.list")).tasks == []

        got, body, _ = await api.ask("POST", "/agents", "admin", raw=b"agents=x",
                                     headers={"Content-Type": "text/plain"})
        assert (got, body["detail"]) == (415, "send the body as application/json, not "
                                              "text/plain")
        # an expectation other than 100-continue is ignored, not a 417 the API documents
        # nowhere; 100-continue is answered and the body read
        for expect in ("X0n%DB;1|~udu", "100-continue"):
            got, body, r = await api.ask("POST", "/tasks", "admin", raw=b'{"agent": "nobody"}',
                                         headers={"Expect": expect})
            assert (got, r.content_type, body["detail"]) == (
                404, PROBLEM, "no such agent: nobody (agents: web-1)"), expect
        monkeypatch.setattr(route, "MAX_BODY", 1024)
        big = msgspec.json.encode({"agents": {"x": {"command": ["a" * 2000]}}})
        got, body, _ = await api.ask("POST", "/agents", "admin", raw=big)
        assert (got, body) == (413, problem(
            413, "request too large", f"{len(big)} bytes is over the 1024-byte limit"))
        await unchanged()


@pytest.mark.deadline(120)
async def test_tasks_submitted_waited_for_and_replayed_by_idempotency_key(
        tmp_path: Path) -> None:
    async with serving(tmp_path, hello("web-1") + sleeper("slow")) as api:
        await api.token("runner", "tasks:run", "tasks:read")
        await api.token("other", "tasks:run", "tasks:read")

        status, body, r = await api.ask("POST", "/tasks", "runner",
                                        {"agent": "web-1", "input": {"name": "a"}})
        assert status == 202 and list(body) == ["task_id", "status"]
        assert r.headers["Location"] == f"/api/v1/tasks/{body['task_id']}"
        info = await api.d.dispatcher.call(SOCKET, "tasks.get", {
            "task_id": body["task_id"], "wait": True})
        assert info.status == "succeeded"
        status, got, _ = await api.ask("GET", f"/tasks/{body['task_id']}", "runner")
        assert (status, got["output"]["greeting"]) == (200, "hello, a")

        # with wait: the outcome as `corral run --json` prints it
        status, body, r = await api.ask("POST", "/tasks?wait=30", "runner",
                                        {"agent": "web-1", "input": {"name": "b"}})
        assert status == 200 and list(body) == ["task_id", "status", "output", "error",
                                                "attempts"]
        assert (body["status"], body["output"]["greeting"], body["error"]) == (
            "succeeded", "hello, b", None)
        # a wait that runs out: 202, and the task goes on
        status, body, r = await api.ask("POST", "/tasks?wait=0.2", "runner", {
            "agent": "slow", "input": {"do": "sleep", "seconds": 60}})
        assert status == 202
        slow = body["task_id"]
        assert (await api.d.dispatcher.call(SOCKET, "tasks.get", {"task_id": slow})
                ).status in ("queued", "running")
        await api.d.dispatcher.call(SOCKET, "tasks.cancel", {"task_id": slow})

        # Idempotency-Key: the first answer again (the task's, said to be replayed), and
        # no second task
        key = {"Idempotency-Key": "order-17"}
        submit = {"agent": "web-1", "input": {"name": "c"}}
        first = await api.ask("POST", "/tasks?wait=30", "runner", submit, headers=key)
        again = await api.ask("POST", "/tasks?wait=30", "runner", submit, headers=key)
        assert first[0] == again[0] == 200 and again[1] == {**first[1], "replayed": True}
        assert again[2].headers["Idempotent-Replayed"] == "true"
        assert "Idempotent-Replayed" not in first[2].headers
        listed = await api.d.dispatcher.call(SOCKET, "tasks.list")
        assert sum(1 for t in listed.tasks if t.task_id == first[1]["task_id"]) == 1
        assert len(listed.tasks) == 4
        # the same key with another request: refused, nothing run
        status, body, _ = await api.ask("POST", "/tasks", "runner",
                                        {"agent": "web-1", "input": 2}, headers=key)
        assert (status, body["detail"]) == (
            409, "idempotency key order-17 was used for another request: "
                 "send a new key")
        # a key too long: refused before anything is looked up or run (a problem titled
        # by its status, as every problem is)
        from corral.daemon.http.idempotency import MAX_KEY_LENGTH
        status, body, _ = await api.ask("POST", "/tasks", "runner", submit,
                                        headers={"Idempotency-Key": "k" * (MAX_KEY_LENGTH + 1)})
        assert (status, body["title"], body["detail"]) == (
            400, "bad request", f"an Idempotency-Key is 1 to {MAX_KEY_LENGTH} characters")
        assert len((await api.d.dispatcher.call(SOCKET, "tasks.list")).tasks) == 4
        # keys are each caller's (decision 1792): another token of the same tenant
        # sending the key makes a task of its own
        status, body, _ = await api.ask("POST", "/tasks?wait=30", "other", submit,
                                        headers=key)
        assert status == 200 and body["task_id"] != first[1]["task_id"], body
        assert len((await api.d.dispatcher.call(SOCKET, "tasks.list")).tasks) == 5


@pytest.mark.deadline(120)
async def test_the_rate_limit_answers_429_with_retry_after(tmp_path: Path) -> None:
    async with serving(tmp_path, hello("web-1"), "rate_per_minute = 3") as api:
        await api.token("a", "agents:read")
        await api.token("b", "agents:read")
        for _ in range(3):
            assert (await api.ask("GET", "/daemon", "a"))[0] == 200
        status, body, r = await api.ask("GET", "/daemon", "a")
        assert (status, body) == (429, problem(
            429, "too many requests", "token a is over its 3 requests per minute",
            jsonrpc.REFUSED))
        assert r.headers["Retry-After"] == "20"
        assert (await api.ask("GET", "/daemon", "b"))[0] == 200  # per token


async def sse_events(response: aiohttp.ClientResponse, count: int
                     ) -> list[dict[str, Any]]:
    """The next `count` events of an SSE stream (comments skipped)."""
    out: list[dict[str, Any]] = []
    event: dict[str, Any] = {}
    while len(out) < count:
        line = (await response.content.readline()).decode().rstrip("\n")
        if not line:
            if event:
                out.append(event)
                event = {}
            continue
        if line.startswith(":"):
            continue
        key, _, value = line.partition(": ")
        event[key] = msgspec.json.decode(value) if key == "data" else value
    return out


@pytest.mark.deadline(60)
async def test_event_streams_have_ids_resume_and_stay_bounded(tmp_path: Path) -> None:
    async with serving(tmp_path, hello("web-1")) as api:
        await api.token("ev", "events")
        await api.token("reader", "agents:read")
        auth = {"Authorization": f"Bearer {api.tokens['ev']}"}
        url = api.base + "/events/stream?pattern=orders.*"
        # a follow without the scope is refused before any stream
        status, body, _ = await api.ask("GET", "/events/stream", "reader")
        assert (status, body["detail"]) == (
            403, "forbidden: events.follow needs the events scope, which token reader "
                 "does not hold")

        async with api.http.get(url, headers=auth) as stream:
            assert stream.headers["Content-Type"] == "text/event-stream"
            ring = api.d.http_server.app[API_KEY].ring
            await wait_until_async(lambda: ring.task is not None
                                   and api.d.sup.events.followers)
            for i in range(3):
                await api.ask("POST", "/events", "ev", {"topic": f"orders.{i}", "data": i})
                await api.ask("POST", "/events", "ev", {"topic": "other", "data": i})
            got = await sse_events(stream, 3)
        assert [(e["event"], e["data"]["topic"], e["data"]["data"]) for e in got] == [
            ("events.event", f"orders.{i}", i) for i in range(3)]
        ids = [int(e["id"]) for e in got]
        assert ids == sorted(ids)

        # reconnect after the first: the two after it, from the ring
        async with api.http.get(url, headers={**auth, "Last-Event-ID": str(ids[0])}
                                ) as stream:
            again = await sse_events(stream, 2)
        assert [e["data"]["topic"] for e in again] == ["orders.1", "orders.2"]
        assert [int(e["id"]) for e in again] == ids[1:]

        # a client that never reads: the ring stays within its bounds, the daemon
        # publishes on, and a reconnect far behind is told how many it missed
        _, writer = await asyncio.open_connection(*api.d.http_server.url[7:].split(":"))
        writer.write(f"GET /api/v1/events/stream HTTP/1.1\r\nHost: x\r\n"
                     f"Authorization: Bearer {api.tokens['ev']}\r\n\r\n".encode())
        await writer.drain()
        chunk = {"topic": "bulk", "data": "x" * (256 * 1024)}
        for _ in range(200):  # 50 MB published, more than the ring keeps
            await api.d.dispatcher.call(SOCKET, "events.publish", chunk)
        # "other" after the last order, then bulk
        await wait_until_async(lambda: ring.last >= ids[-1] + 1 + 200)
        assert ring.bytes <= sse.RING_BYTES and len(ring.items) < 200
        async with api.http.get(api.base + "/events/stream",
                                headers={**auth, "Last-Event-ID": "0"}) as stream:
            first = (await sse_events(stream, 1))[0]
        assert first["event"] == "missed" and first["data"]["count"] > 100
        writer.close()


@pytest.mark.deadline(60)
async def test_the_event_ring_keeps_as_many_events_as_its_setting_says(tmp_path: Path
                                                                       ) -> None:
    """[http] event_ring: the newest N events kept for reconnects, no more (the soak bounds
    it small, as its other stores, so that minutes of churn take it to its bound); a
    reconnect from before them is told how many it missed, then given the N."""
    async with serving(tmp_path, hello("web-1"), "event_ring = 5") as api:
        await api.token("ev", "events")
        auth = {"Authorization": f"Bearer {api.tokens['ev']}"}
        ring = api.d.http_server.app[API_KEY].ring
        async with api.http.get(api.base + "/events/stream?pattern=orders.*",
                                headers=auth) as stream:
            await wait_until_async(lambda: ring.task is not None
                                   and api.d.sup.events.followers)
            before = ring.last
            for i in range(8):
                await api.ask("POST", "/events", "ev", {"topic": f"orders.{i}", "data": i})
            await sse_events(stream, 8)
        assert ring.last == before + 8
        assert [item[0] for item in ring.items] == list(range(before + 4, before + 9))
        async with api.http.get(api.base + "/events/stream?pattern=orders.*", headers={
                **auth, "Last-Event-ID": str(before)}) as stream:
            got = await sse_events(stream, 6)
        assert (got[0]["event"], got[0]["data"]) == ("missed", {"count": 3})
        assert [e["data"]["topic"] for e in got[1:]] == [f"orders.{i}" for i in range(3, 8)]


def test_a_daemon_that_may_not_serve_its_http_address_starts_nothing(tmp_path: Path
                                                                      ) -> None:
    """The rule holds where it matters: the daemon itself refuses to start, says why
    and what to do, and leaves nothing behind (no socket, no agent, no "stopped")."""
    from .daemon_harness import Daemon as Harness

    d = Harness(tmp_path, hello("a") + '\n[http]\nlisten = "0.0.0.0:0"\n')
    try:
        d.start(wait_ready=False)
        assert d.proc is not None and d.proc.wait(30) == 1
        err = d.said()
        assert err.endswith(
            "corral: cannot start the HTTP server on 0.0.0.0:0: 0.0.0.0 is not a loopback "
            "address: give [http] tls_cert and tls_key, or set allow_insecure_remote = true "
            "to send tokens in clear text\n"), err
        assert "stopped" not in err and "revision 1" not in err  # no agent was added
        assert not d.sock.exists()
    finally:
        d.close()


def test_a_remote_address_needs_tls_or_saying_so_in_so_many_words(tmp_path: Path) -> None:
    from corral.daemon.http.server import tls_context
    from corral.supervisor.config import ConfigError, HttpSettings

    for listen in ("127.0.0.1:7070", "[::1]:7070", "localhost:7070", "unix:/x/http.sock"):
        assert tls_context(HttpSettings(listen=listen)) is None
    with pytest.raises(ConfigError) as e:
        tls_context(HttpSettings(listen="0.0.0.0:7070"))
    assert str(e.value) == ("0.0.0.0 is not a loopback address: give [http] tls_cert and "
                            "tls_key, or set allow_insecure_remote = true to send tokens "
                            "in clear text")
    assert tls_context(HttpSettings(listen="0.0.0.0:7070", allow_insecure_remote=True)
                       ) is None
    with pytest.raises(ConfigError) as e:
        tls_context(HttpSettings(listen="10.0.0.1:7070", tls_cert="cert.pem"))
    assert str(e.value) == "[http] tls_cert and tls_key go together: give both or neither"
    with pytest.raises(ConfigError) as e:
        tls_context(HttpSettings(listen="10.0.0.1:7070", tls_cert=str(tmp_path / "no.pem"),
                                 tls_key=str(tmp_path / "no.key")))
    assert str(e.value).startswith("[http] tls_cert/tls_key: [Errno 2] No such file")


@pytest.mark.deadline(60)
async def test_the_openapi_document_is_made_from_the_methods(tmp_path: Path) -> None:
    from corral.daemon.http.resources import RESOURCES
    from corral.methods import REGISTRY

    async with serving(tmp_path, hello("web-1")) as api:
        status, doc, _ = await api.ask("GET", "/openapi.json")
        assert status == 200 and doc["openapi"] == "3.1.0"
        for res in RESOURCES:
            op = doc["paths"]["/api/v1" + res.path][res.verb.lower()]
            assert (op["x-corral-method"], op["x-corral-scope"]) == (
                res.method, REGISTRY[res.method].scope)
            assert op["security"] == [{"bearer": []}]
            assert op["responses"]["401"]["content"]["application/problem+json"]
        # the params Struct's fields, not a copy written by hand
        scale = doc["paths"]["/api/v1/agents/{name}/scale"]["post"]
        assert scale["requestBody"]["content"]["application/json"]["schema"] == {
            "type": "object", "additionalProperties": False,
            "properties": {"replicas": {"type": "integer", "minimum": 0}},
            "required": ["replicas"]}
        post = doc["paths"]["/api/v1/tasks"]["post"]
        submit = post["requestBody"]["content"]["application/json"]["schema"]
        assert submit["properties"]["input"] == {"description": (
            f"any JSON, at most {MAX_INPUT_BYTES} bytes of it")}
        assert submit["required"] == ["agent"]
        assert set(post["responses"]) >= {"200", "202", "400", "401", "429"}
        assert post["responses"]["202"]["headers"]["Location"]
        assert [p["name"] for p in post["parameters"]] == ["wait", "Idempotency-Key"]
