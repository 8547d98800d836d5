"""The REST API under an adversary (issue 34, findings 7, 10, 11, 12, 14, 15 and 18;
decisions 158 and 159): a body is read only after its caller may make the call, and
decoded into the method's types within its route's limit; a task is never run for a
request that is refused; a revoked token's streams end; a token limited to some agents
is sent no other agent's events; every malformed body is a 400 problem; a refused HTTP
head is one counted log line at most; and every path docs/http.md names is served."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import select
import socket
import time
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest

from corral import jsonrpc
from corral.daemon.http import route
from corral.daemon.http.resources import PREFIX, RESOURCES
from corral.daemon.http.rest import API_KEY

from .conftest import ROOT
from .daemon_harness import hello, problem, sleeper
from .test_daemon_cli import tmp
from .test_gateway_stdio import wait_until_async
from .test_http_api import PROBLEM, SOCKET, serving, sse_events
from .test_http_hostile import STALL, Http, Probe, http
from .test_ui import login_link, page

__all__ = ["http", "tmp"]

MiB = 1024 * 1024


# -- finding 7: the scope before the body, the body within its route's limit --------------
def _status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {key} in /proc/{pid}/status")


def reset_peak(pid: int) -> int:
    """Start the process's peak RSS (VmHWM) again from its RSS now (clear_refs 5, as
    root); returns that RSS in bytes."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    assert _status_kib(pid, "VmHWM") <= _status_kib(pid, "VmRSS") + 1024
    return _status_kib(pid, "VmRSS") * 1024


def token(h: Http, name: str, *scopes: str) -> str:
    args = [a for s in scopes for a in ("--scope", s)]
    r = h.d.cli("token", "create", name, *args, "--json")
    assert r.returncode == 0, r.stderr
    return str(json.loads(r.stdout)["token"])


async def post_all(port: int, path: str, secret: str, body: bytes, clients: int,
                   rounds: int) -> list[tuple[int, Any]]:
    """`rounds` requests on each of `clients` connections at once: each answer's status
    and its JSON."""
    got: list[tuple[int, Any]] = []
    headers = {"Authorization": f"Bearer {secret}", "Content-Type": "application/json"}

    async def client() -> None:
        async with aiohttp.ClientSession() as s:
            for _ in range(rounds):
                async with s.post(f"http://127.0.0.1:{port}{path}", data=body,
                                  headers=headers) as r:
                    got.append((r.status, msgspec.json.decode(await r.read())))

    await asyncio.gather(*(client() for _ in range(clients)))
    return got


# beside other tests: the loop's worst answer is timed less the host's scheduling delays,
# as test_http_hostile's attacks are, not by its wall time, which a loaded host stretches
@pytest.mark.deadline(180)
def test_a_16_mib_body_of_tiny_values_is_refused_before_it_is_read(http: Http) -> None:
    """A token with agents:read alone sends 16 MiB of `[{},{},...]` to a write, three
    clients at once, twice each: every one is a 403 naming the scope, the daemon's peak
    RSS does not grow by the body's Python objects (about 400 MB a request when the body
    was decoded first) and its control socket keeps answering within the loop's budget
    (the daemon's own time in an answer: a loaded host's scheduling is not its stall).
    A token that holds the scope is refused by the route's limit, before reading too."""
    assert http.d.proc is not None
    pid = http.d.proc.pid
    reader = token(http, "reader", "agents:read")
    writer = token(http, "writer", "agents:write")
    body = b"[" + b"{}," * (16 * MiB // 3 - 1) + b"{}]"
    assert len(body) <= route.MAX_BODY
    rss0 = reset_peak(pid)
    probe = Probe(http.d)
    refused = asyncio.run(post_all(http.port, "/api/v1/agents/hello/stop", reader, body,
                                   clients=3, rounds=2))
    assert refused == [(403, problem(
        403, "forbidden", "forbidden: agents.stop needs the agents:write scope, which "
                          "token reader does not hold", jsonrpc.FORBIDDEN))] * 6
    seen = probe.result()
    grown = _status_kib(pid, "VmHWM") * 1024 - rss0
    assert grown < 48 * MiB, f"the daemon's peak RSS grew {grown / MiB:.0f} MiB"
    # the daemon's own part of its longest answer, as settled() in test_http_hostile
    # asserts: at load 10-17 on 2 cores the round trip's wall time read 0.16-0.48 s, most
    # of it the host's (bench/RESULTS.md, decision 855); the body decoded before the
    # scope's check (the finding) holds the loop for seconds
    assert seen["calls"] > 10 and seen["stall"] < STALL, seen
    too_big = asyncio.run(post_all(http.port, "/api/v1/agents/hello/stop", writer, body,
                                   clients=3, rounds=1))
    assert too_big == [(413, problem(
        413, "request too large", f"{len(body)} bytes is over the {route.SMALL_BODY}-byte "
                                  "limit"))] * 3
    assert _status_kib(pid, "VmHWM") * 1024 - rss0 < 48 * MiB
    assert http.d.status()["hello#0"]["state"] == "ready"  # nothing was stopped
    # its stop does not wait out aiohttp's lingering read of the refused bodies (10 s,
    # the teardown step's deadline, after which the server was skipped)
    assert http.d.stop() == 0
    stopping = [ln for ln in (http.d.state / "logs" / "corral.log").read_text().splitlines()
                if "stopping: " in ln]
    assert stopping == [], stopping


# -- finding 10: a task is never run for a refused request --------------------------------
@pytest.mark.deadline(60)
async def test_a_wait_without_tasks_read_is_refused_and_runs_nothing(tmp_path: Path
                                                                      ) -> None:
    async with serving(tmp_path, hello("web-1")) as api:
        await api.token("runner", "tasks:run")
        submit = {"agent": "web-1", "input": {"name": "a"}}
        for _ in range(2):  # a client retrying after the 403 runs nothing either
            status, body, r = await api.ask("POST", "/tasks?wait=5", "runner", submit)
            assert (status, r.content_type, body) == (403, PROBLEM, problem(
                403, "forbidden", "forbidden: tasks.get needs the tasks:read scope, which "
                                  "token runner does not hold", jsonrpc.FORBIDDEN))
        assert (await api.d.dispatcher.call(SOCKET, "tasks.list")).tasks == []
        # without the wait it needs tasks:run alone, and runs once
        status, body, _ = await api.ask("POST", "/tasks", "runner", submit)
        assert status == 202
        listed = (await api.d.dispatcher.call(SOCKET, "tasks.list")).tasks
        assert [t.task_id for t in listed] == [body["task_id"]]


# -- finding 11: revoking a token ends what it holds open ---------------------------------
async def ended(response: aiohttp.ClientResponse, timeout: float = 10.0) -> bytes:
    """What is left of a stream, read until it ends (a clean end of the chunked body:
    aiohttp raises on a broken one)."""
    rest = b""
    async with asyncio.timeout(timeout):
        while chunk := await response.content.read(65536):
            rest += chunk
    return rest


@pytest.mark.deadline(90)
async def test_revoking_a_token_ends_its_streams_and_its_dashboard_sessions(
        tmp_path: Path) -> None:
    async with serving(tmp_path, hello("web-1")) as api:
        d = api.d
        await api.token("ev", "events", "agents:read", "metrics:read", "admin")
        await api.token("other", "events")
        auth = {"Authorization": f"Bearer {api.tokens['ev']}"}
        ring = api_of(d).ring
        # a stream from the ring, one of the token's own follows, and the dashboard's
        # stream of a session the token logged in
        events = await api.http.get(api.base + "/events/stream?pattern=t.*", headers=auth)
        replicas = await api.http.get(api.base + "/replicas/stream", headers=auth)
        status, link, _ = await api.ask("POST", "/ui/login", "ev")
        assert status == 200
        async with page(d) as p:
            await p.login(link["url"])
            board = await p.http.get(p.base + "/ui/stream/stats.watch?interval=0.2")
            assert board.status == 200
            assert (await sse_events(board, 1))[0]["event"] == "stats.sample"
            others = await api.http.get(
                api.base + "/events/stream?pattern=t.*",
                headers={"Authorization": f"Bearer {api.tokens['other']}"})
            assert (await sse_events(replicas, 1))[0]["event"] == "agents.snapshot"
            await wait_until_async(lambda: len(ring.readers) == 2 and ring.task is not None
                                   and d.sup.events.followers)
            await d.dispatcher.call(SOCKET, "events.publish", {"topic": "t.before",
                                                                "data": 1})
            assert (await sse_events(events, 1))[0]["data"]["topic"] == "t.before"
            assert (await sse_events(others, 1))[0]["data"]["topic"] == "t.before"

            await d.dispatcher.call(SOCKET, "tokens.revoke", {"name": "ev"})
            await d.dispatcher.call(SOCKET, "events.publish", {"topic": "t.after",
                                                                "data": 2})
            # each of its streams ends, whole, and is sent nothing published after
            for stream in (events, replicas, board):
                assert b"t.after" not in await ended(stream)
            assert d.services.ui is not None and d.services.ui.sessions == {}
            assert (await p.get("/ui/session"))[0] == 401
            # another token's stream goes on
            assert (await sse_events(others, 1))[0]["data"]["topic"] == "t.after"
            others.close()
        await wait_until_async(lambda: not api_of(d).streams.open and not api_of(
            d).by_token.held_by)

        # a token that expires ends its streams at its expiry, not when its client goes
        brief = await d.dispatcher.call(SOCKET, "tokens.create", {
            "name": "brief", "scopes": ["events"], "expires_in": 2.0})
        t0 = time.monotonic()
        async with api.http.get(api.base + "/events/stream", headers={
                "Authorization": f"Bearer {brief.token}"}) as stream:
            assert stream.status == 200
            await ended(stream)
        assert 1.0 < time.monotonic() - t0 < 8.0
        await wait_until_async(lambda: not api_of(d).streams.open)


def api_of(d: Any) -> Any:
    return d.http_server.app[API_KEY]


# -- finding 12: a token limited to some agents is sent only their events -----------------
class Recorder:
    """A follow's channel on the Dispatcher, as a transport's: what it was sent."""

    def __init__(self) -> None:
        self._writable = asyncio.Event()
        self._writable.set()
        self.sent: list[tuple[str, Any]] = []

    @property
    def writable(self) -> asyncio.Event:
        return self._writable

    def notify(self, method: str, params: Any) -> None:
        self.sent.append((method, params))


@pytest.mark.deadline(90)
async def test_a_token_limited_to_some_agents_is_sent_their_events_alone(
        tmp_path: Path) -> None:
    """Over `/events/stream` (the ring) and a follow on the Dispatcher: of the events
    agents' workers publish and those corral publishes about an agent, only those of
    agents the glob admits; a caller's event is no agent's, and is sent."""
    from corral.daemon.caller import Caller

    async with serving(tmp_path, sleeper("a1") + sleeper("b1")) as api:
        d = api.d
        await api.token("glob", "events", agents="a*")
        auth = {"Authorization": f"Bearer {api.tokens['glob']}"}
        glob = Caller(via="http", token="glob", scopes=frozenset({"events"}), agents="a*")
        recorder = Recorder()
        follow = asyncio.ensure_future(d.dispatcher.call(
            glob, "events.follow", {"pattern": "t.*"}, recorder))
        async with api.http.get(api.base + "/events/stream?pattern=t.*",
                                headers=auth) as stream:
            ring = api_of(d).ring
            await wait_until_async(lambda: len(ring.readers) == 1 and ring.task is not None
                                   and len(d.sup.events.followers) == 2)
            for agent in ("b1", "a1"):  # each worker publishes
                done = await d.dispatcher.call(SOCKET, "tasks.run", msgspec.json.encode({
                    "agent": agent, "input": {"do": "publish", "topic": f"t.{agent}",
                                              "data": agent}}))
                assert done.status == "succeeded", done
            for agent in ("b1", "a1"):  # corral's own, about an agent
                d.sup.publish(f"t.corral.{agent}", {"agent": agent})
            await d.dispatcher.call(SOCKET, "events.publish", {"topic": "t.caller",
                                                                "data": 0})
            got = await sse_events(stream, 3)
        assert [e["data"]["topic"] for e in got] == ["t.a1", "t.corral.a1", "t.caller"]
        await wait_until_async(lambda: len(recorder.sent) >= 3)
        follow.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await follow
        assert [msgspec.json.decode(p)["topic"] for _, p in recorder.sent] == [
            "t.a1", "t.corral.a1", "t.caller"]


# -- finding 14: every malformed body is a 400 problem ------------------------------------
def deep(n: int, inner: bytes = b"1") -> bytes:
    return b'{"a": ' * n + inner + b"}" * n


@pytest.mark.deadline(120)
async def test_every_malformed_body_is_a_400_problem_and_changes_nothing(
        tmp_path: Path) -> None:
    async with serving(tmp_path, hello("web-1")) as api:
        d = api.d
        sup = d.sup
        pid = sup.agent("web-1").replicas[0].pid
        await api.token("admin", "admin")
        nested = "malformed JSON: nested too deeply"
        bad_key = b'{"agents": {"x\xff": {"command": "true"}}}'
        bad_input = b'{"agent": "web-1", "input": "caf\xe9"}'
        cases: list[tuple[str, str, bytes, str]] = [
            ("POST", "/agents", b"[" * 1_000_000, "invalid params: the body must be a "
                                                  "JSON object"),
            ("POST", "/agents", deep(100_000), "invalid params: unknown field `a` "
                                               "(known: agents, check, cluster)"),
            ("POST", "/agents", b'{"agents": {"x": {"env": ' + deep(100_000) + b"}}}",
             nested),
            ("POST", "/agents", b'{"agents": {"x": {"command": ' + b"[" * 1_000_000,
             nested),
            ("POST", "/agents", bad_key, "malformed JSON: not UTF-8: invalid start byte at "
                                         f"byte {bad_key.index(0xFF)}"),
            ("POST", "/agents", b"nope", "malformed JSON: JSON is malformed: invalid "
                                         "character (byte 4)"),
            ("POST", "/tasks", b'{"agent": "web-1", "input": ' + b"[" * 100_000
             + b"]" * 100_000 + b"}", nested),
            ("POST", "/tasks", b'{"agent": "web-1", "input": ' + deep(100_000) + b"}",
             nested),
            ("POST", "/tasks", bad_input, "malformed JSON: not UTF-8: invalid continuation "
                                          f"byte at byte {bad_input.index(0xE9)}"),
            ("POST", "/events", b'{"topic": "t", "data": ' + deep(100_000) + b"}", nested),
            ("POST", "/tools/s__t/call", b'{"arguments": ' + deep(100_000) + b"}", nested),
            ("PATCH", "/tenants/x", b'{"set": ' + deep(100_000) + b"}", nested),
            ("POST", "/agents/web-1/scale", b'{"replicas": ' + b"[" * 10_000, "invalid "
             "params: Expected `int`, got `array` - at `$.replicas`"),
        ]
        for verb, path, raw, detail in cases:
            status, body, r = await api.ask(verb, path, "admin", raw=raw)
            assert (status, r.content_type, body) == (400, PROBLEM, problem(
                400, "bad request", detail, body.get("code") if isinstance(body, dict)
                else None)), (path, raw[:60])
        # the dashboard's calls: the same types, and the same limit of a scalar call
        async with page(d) as p:
            await p.login((await login_link(d)).url)
            for raw, status, detail in (
                    (b'{"name": "web-1", "replicas": ' + b"[" * 10_000, 400,
                     "invalid params: Expected `int`, got `array` - at `$.replicas`"),
                    (b" " * route.SMALL_BODY + b'{"name": "web-1"}', 413,
                     f"{route.SMALL_BODY + 17} bytes is over the {route.SMALL_BODY}-byte "
                     "limit")):
                async with p.http.post(f"{p.base}/ui/api/agents.scale", data=raw, headers={
                        "Origin": p.base, "X-CSRF-Token": p.csrf}) as r:
                    assert (r.status, r.content_type) == (status, PROBLEM)
                    assert (await r.json())["detail"] == detail
        assert list(sup.agents) == ["web-1"]
        assert [(r.state.value, r.pid) for r in sup.agent("web-1").replicas] == [
            ("ready", pid)]
        assert (await d.dispatcher.call(SOCKET, "tasks.list")).tasks == []


# -- finding 15: a refused head is counted, and told in one line at a bounded rate --------
def stderr_until(fd: int, marker: str, timeout: float = 20.0) -> list[str]:
    """The daemon's stderr lines up to and including the first that holds `marker`."""
    out = b""
    deadline = time.monotonic() + timeout
    while marker.encode() not in out:
        left = deadline - time.monotonic()
        assert left > 0, f"no {marker!r} on the daemon's stderr: {out[-2000:]!r}"
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            chunk = os.read(fd, 65536)
            assert chunk, "the daemon's stderr closed"
            out += chunk
    text = out.decode(errors="replace")
    upto = text.index(marker)
    return text[:text.index("\n", upto) if "\n" in text[upto:] else len(text)].splitlines()


HEADS = [
    b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nBad Header: v\r\n\r\n",
    b"GET / HTTP/1.1x\r\nHost: x\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(200))
    + b"\r\n",
    b"GET /\x01 HTTP/1.1\r\nHost: x\r\n\r\n",
]


@pytest.mark.deadline(120)
def test_refused_heads_are_one_counted_log_line_at_a_bounded_rate(http: Http) -> None:
    assert http.d.proc is not None and http.d.proc.stderr is not None
    fd = http.d.proc.stderr.fileno()
    admin = http.token("admin")  # (its audit line is the start marker)
    stderr_until(fd, '"name":"admin"')
    for i in range(50):
        with socket.create_connection(("127.0.0.1", http.port)) as s:
            s.sendall(HEADS[i % len(HEADS)])
            s.settimeout(10)
            assert s.recv(4096).startswith((b"HTTP/1.1 4", b"HTTP/1.0 4")), HEADS[
                i % len(HEADS)][:40]
    http.token("after")
    lines = stderr_until(fd, '"name":"after"')[:-1]
    told = [ln for ln in lines if "refused a request" in ln]
    assert 1 <= len(told) <= 2, lines
    assert re.fullmatch(r"corral: WARNING corral\.http: refused a request from 127\.0\.0\.1: "
                        r"4\d\d, .+", told[0]), told[0]
    # every line is one of the daemon's own, never a traceback's
    assert all(ln.startswith("corral: ") for ln in lines), lines
    # each refusal is counted
    with socket.create_connection(("127.0.0.1", http.port)) as s:
        s.sendall(f"GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {admin}\r\n"
                  "Connection: close\r\n\r\n".encode())
        got = b""
        s.settimeout(10)
        while chunk := s.recv(65536):
            got += chunk
    counted = re.findall(r'corral_http_requests_total\{code="(4\d\d)",route="refused"\} '
                         r"([\d.]+)", got.decode())
    assert sum(float(n) for _, n in counted) == 50, counted


# -- finding 18: every path docs/http.md names is served ----------------------------------
@pytest.mark.deadline(90)
async def test_the_metrics_history_is_served_where_the_docs_say(tmp_path: Path) -> None:
    async with serving(tmp_path, hello("web-1"), "history_interval = 0.2") as api:
        d = api.d
        await api.token("m", "metrics:read")
        await api.token("webs", "metrics:read", agents="web-*")
        await api.token("reader", "agents:read")

        async def raw() -> Any:
            return await d.dispatcher.call(SOCKET, "stats.history", {
                "since": 60, "agent": "web-1", "resolution": "raw"})

        deadline = time.monotonic() + 20
        while not (await raw()).samples:
            assert time.monotonic() < deadline, "no history sample"
            await asyncio.sleep(0.05)
        status, body, _ = await api.ask(
            "GET", "/metrics/history?since=60&agent=web-1&resolution=raw", "m")
        assert status == 200 and body["samples"], body
        assert set(body) == set(msgspec.to_builtins(await raw()))
        assert set(body["samples"][0]) >= {"time", "seconds", "agents", "replicas",
                                           "cpu_percent", "rss_bytes", "p95_ms"}
        # a glob token names one of its agents, as on the socket
        assert (await api.ask("GET", "/metrics/history?agent=web-1", "webs"))[0] == 200
        status, body, _ = await api.ask("GET", "/metrics/history", "webs")
        assert (status, body["detail"]) == (403, "forbidden: token webs is limited to "
                                                 "agents matching web-*: name an agent")
        status, body, _ = await api.ask("GET", "/metrics/history", "reader")
        assert (status, body["detail"]) == (403, "forbidden: stats.history needs the "
                                                 "metrics:read scope, which token reader "
                                                 "does not hold")
        status, body, _ = await api.ask("GET", "/metrics/history?resolution=daily", "m")
        assert (status, body["detail"]) == (400, "invalid params: Invalid enum value "
                                                 "'daily' - at `$.resolution`")


def test_every_path_docs_http_md_names_is_a_route_and_every_route_is_in_its_table(
        ) -> None:
    served = [(res.verb, res.path) for res in RESOURCES] + [
        ("POST", "/tasks"), ("GET", "/openapi.json"), ("GET", "/reference"), ("GET", "/")]

    def pattern(path: str) -> re.Pattern[str]:
        return re.compile(re.sub(r"\\\{[a-z_]+\\\}", "[^/]+", re.escape(path)))

    def is_served(path: str) -> bool:
        return any(pattern(p).fullmatch(path) for _, p in served)

    text = (ROOT / "docs" / "http.md").read_text()
    # in the prose: whole addresses
    named = {m.rstrip(".,)") for m in re.findall(r"/api/v1(/[A-Za-z0-9_{}./-]+)", text)}
    assert named and not [p for p in sorted(named) if not is_served(p)]
    # in the table of resources: a path, or a last part of the path before it
    table = text[text.index("### Resources"):text.index("Query values are converted")]
    listed: set[str] = set()
    for row in table.splitlines():
        if not row.startswith("| ") or row.startswith("| HTTP") or row.startswith("|--"):
            continue
        before = ""
        for path in re.findall(r"`(/[^` ]*)`", row):
            if not is_served(path) and before and path.count("/") == 1:
                path = before.rsplit("/", 1)[0] + path
            assert is_served(path), (path, row)
            listed.add(path)
            before = path
    # the OpenAPI document and the index are said in the prose, not the table
    unlisted = {"/openapi.json", "/reference", "/"}
    assert not [p for _, p in served if p not in listed and p not in unlisted], sorted(
        p for _, p in served if p not in listed)
    assert PREFIX == "/api/v1"
