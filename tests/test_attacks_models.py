"""An attacker's pass over the model gateway (docs/models.md) from the two parties it
serves less trusted than the operator: an agent holding its replica's token, sending what
it likes in raw HTTP (tests/raw_model_agent.py), and an upstream that answers what it
likes (here one on a loopback port, in this loop).

- an upstream that quotes the provider's key it was sent, in a whole answer, a streamed
  one and the headers passed back, reaches no agent, task output or journal with it;
- an agent's model calls in flight hold its slots of `[gateway] max_concurrent` (each
  holds its body, decoded, and its answer in the daemon's memory): one past them is
  refused naming the bound, before its body is read, and never reaches the upstream;
- an agent that hangs up on a stream before its usage is charged the whole answer;
- (held) an agent naming another tenant's running attempt in its address
  (`?task=&attempt=`) is answered as an attempt not its own, spends nothing of that
  task's and never reaches the upstream."""

from __future__ import annotations

import asyncio
import json
import textwrap
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from corral.taskoptions import TaskOptions

from .conftest import ROOT
from .daemon_harness import PY, free_port, in_process
from .servers.model_upstream import chat_body, chat_events

HERE = Path(__file__).parent
KEY = "sk-provider-SECRET-quoted-0123456789"
CHAT = "/v1/chat/completions"


class Hostile:
    """A provider that quotes the key it was sent wherever it can, or (asked `hold`)
    holds its answer until `release` is set."""

    def __init__(self) -> None:
        self.app = web.Application()
        self.app.router.add_post(CHAT, self.answer)
        self.runner: web.AppRunner | None = None
        self.url = ""
        self.calls = 0
        self.held = 0
        self.one_held = asyncio.Event()
        self.two_held = asyncio.Event()
        self.release = asyncio.Event()
        self.streamed = asyncio.Event()  # the first events of a "wait" sent
        self.betas: list[str | None] = []  # each call's OpenAI-Beta header, as it came

    async def start(self) -> None:
        self.runner = web.AppRunner(self.app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = self.runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"

    async def answer(self, request: web.Request) -> web.StreamResponse:
        self.calls += 1
        self.betas.append(request.headers.get("openai-beta"))
        body = await request.json()
        key = request.headers.get("authorization", "").removeprefix("Bearer ")
        if body["messages"][-1]["content"] == "hold":
            self.held += 1
            self.one_held.set()
            if self.held == 2:
                self.two_held.set()
            await self.release.wait()
            return web.json_response(chat_body(body["model"], "held"))
        if body["messages"][-1]["content"] == "wait":  # its first events, then the rest
            return await self.stream(request, chat_events(body["model"], "a b c d e f", True),
                                     {}, 3)
        said = f"you sent {key}"
        headers = {"x-request-id": f"req-{key}", "x-ratelimit-remaining-requests": key}
        if not body.get("stream"):
            return web.json_response(chat_body(body["model"], said), headers=headers)
        return await self.stream(request, chat_events(body["model"], said, True), headers)

    async def stream(self, request: web.Request, events: list[bytes], headers: dict[str, str],
                     wait_after: int | None = None) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                               **headers})
        await response.prepare(request)
        for i, event in enumerate(events):
            if i == wait_after:
                self.streamed.set()
                await self.release.wait()
            half = len(event) // 2  # an event in two writes: the key across them
            await response.write(event[:half])
            await response.write(event[half:])
        await response.write_eof()
        return response


@pytest.fixture
async def hostile() -> AsyncIterator[Hostile]:
    upstream = Hostile()
    await upstream.start()
    try:
        yield upstream
    finally:
        upstream.release.set()
        assert upstream.runner is not None
        await upstream.runner.cleanup()


@pytest.fixture(autouse=True)
def provider_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORRAL_TEST_PROVIDER_KEY", KEY)


def fleet(upstream: Hostile, gateway: str = "") -> str:
    return textwrap.dedent(f"""
        [agents.raw]
        command = ["{PY}", "{HERE}/raw_model_agent.py"]
        env = {{ PYTHONPATH = "{ROOT}" }}
        retries = 1

        [gateway]
        listen = "127.0.0.1:{free_port()}"
        {gateway}

        [models.m]
        url = "{upstream.url}/v1"
        format = "openai"
        key_env = "CORRAL_TEST_PROVIDER_KEY"
    """)


def asked(text: str, stream: bool = False) -> dict[str, Any]:
    return {"path": CHAT, "body": {"model": "m", "stream": stream,
                                   "messages": [{"role": "user", "content": text}]}}


async def test_an_upstream_quoting_the_key_reaches_no_agent_output_or_journal_with_it(
        tmp_path: Path, hostile: Hostile) -> None:
    """Whole and streamed, the key in the body and in the headers passed back: each is
    the agent's with the key hidden, and so is the task's live output (the streamed
    text) and the journal of answers (retries = 1: journaled). Fails with the key hidden
    in an upstream's errors alone."""
    async with in_process(tmp_path, fleet(hostile)) as d:
        res = await d.sup.tasks.run("raw", {"calls": [asked("whole"), asked("s", True)]},
                                    TaskOptions(timeout=60))
        assert res.status == "succeeded", res
        whole, streamed = res.output["answers"]
        assert [whole["status"], streamed["status"]] == [200, 200]
        assert json.loads(whole["body"])["choices"][0]["message"]["content"] == \
            "you sent ***"
        assert "you sent ***" not in streamed["body"]  # word by word: "***" alone
        assert '"content": "***"' in streamed["body"]
        # (a whole answer passes back no upstream header, a stream its id and limits)
        passed = {k.lower(): v for k, v in streamed["headers"].items()}
        assert (passed["x-request-id"], passed["x-ratelimit-remaining-requests"]) == (
            "req-***", "***")
        assert KEY not in json.dumps(res.output)
        chunks = [c.data async for c in d.sup.tasks.output(res.task_id)]
        assert "".join(chunks) == "you sent ***"
        assert hostile.calls == 2
        await d.sup.tasks.steps.journal.stored()
    for path in (tmp_path / "state").rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path


async def test_a_call_past_the_replicas_max_concurrent_is_refused_naming_it(
        tmp_path: Path, hostile: Hostile) -> None:
    """max_concurrent = 2: the agent's two calls held by the upstream take its slots; a
    third with its token (the agent handed it on) is refused at once in OpenAI's format,
    naming the bound, and never reaches the upstream; once the two are answered the slots
    are free again. Fails with the model gateway's calls unbounded (a third held too)."""
    async with in_process(tmp_path, fleet(hostile, "max_concurrent = 2")) as d:
        task = d.sup.tasks.submit("raw", {"calls": [asked("hold"), asked("hold")],
                                          "tell": True}, TaskOptions(timeout=60))
        output = d.sup.tasks.output(task.id)
        token = (await anext(output)).data
        await asyncio.wait_for(hostile.two_held.wait(), 30)
        url = d.services.gateway.url.rpartition("/mcp")[0] + CHAT
        async with aiohttp.ClientSession() as http:
            third = await http.post(url, json=asked("third")["body"],
                                    headers={"authorization": f"Bearer {token}"})
            assert third.status == 429
            assert await third.json() == {"error": {
                "message": "rate limited: gateway client raw#0 has 2 calls in flight, its "
                           "limit (max_concurrent)",
                "type": "rate_limit_exceeded", "param": None, "code": "rate_limit_exceeded"}}
            assert hostile.calls == 2
            hostile.release.set()
            await d.sup.tasks.info(task.id, wait=True)
            done = await d.sup.tasks.outcome(task, decode=True)
            assert done.status == "succeeded", done
            assert [a["status"] for a in done.output["answers"]] == [200, 200]
            again = await http.post(url, json=asked("whole")["body"],
                                    headers={"authorization": f"Bearer {token}"})
            assert again.status == 200, await again.text()
        await output.aclose()


async def test_a_reload_of_max_concurrent_bounds_a_known_tokens_next_model_calls(
        tmp_path: Path, hostile: Hostile) -> None:
    """A replica's identity at the model gateway is kept with its token once it has
    called: a reload of [gateway] max_concurrent (2 -> 1) bounds that token's next calls
    at once, a second beside one held refused naming the new bound. Fails with the kept
    identity's limits those of the configuration it was made under."""
    from corral.daemon.caller import Caller

    async with in_process(tmp_path, fleet(hostile, "max_concurrent = 2")) as d:
        task = d.sup.tasks.submit("raw", {"calls": [asked("whole")], "tell": True},
                                  TaskOptions(timeout=60))
        output = d.sup.tasks.output(task.id)
        token = (await anext(output)).data
        await d.sup.tasks.info(task.id, wait=True)  # its call made: its identity kept
        assert (await d.sup.tasks.outcome(task, decode=True)).status == "succeeded"
        config = tmp_path / "corral.toml"
        text = config.read_text()
        assert text.count("max_concurrent = 2") == 1
        config.write_text(text.replace("max_concurrent = 2", "max_concurrent = 1"))
        await d.dispatcher.call(Caller(via="socket"), "config.reload", {})
        url = d.services.gateway.url.rpartition("/mcp")[0] + CHAT
        headers = {"authorization": f"Bearer {token}"}
        async with aiohttp.ClientSession() as http:
            first = asyncio.ensure_future(http.post(url, json=asked("hold")["body"],
                                                    headers=headers))
            await asyncio.wait_for(hostile.one_held.wait(), 30)
            second = await http.post(url, json=asked("second")["body"], headers=headers)
            assert (second.status, (await second.json())["error"]["message"]) == (
                429, "rate limited: gateway client raw#0 has 1 call in flight, its limit "
                     "(max_concurrent)")
            assert hostile.calls == 2  # "whole" and "hold": the second never reached it
            hostile.release.set()
            assert (await first).status == 200
        await output.aclose()


async def test_a_header_past_ascii_is_passed_on_as_it_came_not_a_500(
        tmp_path: Path, hostile: Hostile) -> None:
    """An agent's OpenAI-Beta header holding UTF-8 (aiohttp's to parse: lean takes ASCII
    heads alone) reaches the upstream as the same bytes and the call is answered, over
    HTTP/1.1 and 1.0. Failed with aiohttp's bare 500 ("Server got itself in trouble"):
    the upstream's request was encoded as Latin-1, which has no "€"."""
    async with in_process(tmp_path, fleet(hostile)) as d:
        task = d.sup.tasks.submit("raw", {"calls": [asked("whole")], "tell": True},
                                  TaskOptions(timeout=60))
        output = d.sup.tasks.output(task.id)
        token = (await anext(output)).data.encode()
        await d.sup.tasks.info(task.id, wait=True)  # its own call (no OpenAI-Beta) made
        host, _, port = d.services.gateway.url.removeprefix("http://").partition("/")[0] \
            .partition(":")
        body = json.dumps(asked("whole")["body"]).encode()
        for version in (b"1.1", b"1.0"):
            r, w = await asyncio.open_connection(host, int(port))
            w.write(b"POST %b HTTP/%b\r\nHost: x\r\nConnection: close\r\n"
                    b"Authorization: Bearer %b\r\n"
                    b"Content-Type: application/json\r\nOpenAI-Beta: tools=\xe2\x82\xac\r\n"
                    b"Content-Length: %d\r\n\r\n%b" % (CHAT.encode(), version, token,
                                                      len(body), body))
            answer = await asyncio.wait_for(r.read(), 30)
            w.close()
            assert answer.startswith(b"HTTP/1.1 200 OK\r\n"), answer[:300]
            assert b"you sent ***" in answer
        assert hostile.betas == [None, "tools=\u20ac", "tools=\u20ac"]
        await output.aclose()


async def test_a_bearer_token_that_is_not_utf8_is_refused_at_every_door_not_a_500(
        tmp_path: Path, hostile: Hostile) -> None:
    """A token of bytes that are no UTF-8 (aiohttp reads a header's bytes as UTF-8 with
    surrogateescape) is refused as an unknown token: 401 at the model gateway in its
    format, at /mcp and at the HTTP API. Failed with aiohttp's bare 500 at the gateway's
    two (its SHA-256 taken of `token.encode()`, which has no surrogate), anyone's to
    send, a traceback a request."""
    api = free_port()
    async with in_process(tmp_path, fleet(hostile),
                          toml=f'\n[http]\nlisten = "127.0.0.1:{api}"\n') as d:
        where = d.services.gateway.url.removeprefix("http://").partition("/")[0]
        body = json.dumps(asked("whole")["body"]).encode()
        said: dict[bytes, bytes] = {}
        for port, path in ((where.partition(":")[2], CHAT.encode()),
                           (where.partition(":")[2], b"/mcp"), (str(api), b"/api/v1/agents")):
            r, w = await asyncio.open_connection("127.0.0.1", int(port))
            w.write(b"POST %b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                    b"Authorization: Bearer \xff\xfe-not-utf8\r\n"
                    b"Accept: application/json, text/event-stream\r\n"
                    b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%b"
                    % (path, len(body), body))
            said[path] = await asyncio.wait_for(r.read(), 30)
            w.close()
        for path, answer in said.items():
            assert answer.startswith(b"HTTP/1.1 401 Unauthorized\r\n"), (path, answer[:300])
        assert b'"message":"unauthorized: not a corral model token' in said[CHAT.encode()]
        assert hostile.calls == 0


async def until(ready: Callable[[], bool], what: str) -> None:
    """Until `ready()` is true (the gateway's counters move on the loop's next turns)."""
    deadline = asyncio.get_running_loop().time() + 30
    while not ready():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def test_an_agent_that_hangs_up_mid_stream_is_charged_the_whole_answer(
        tmp_path: Path, hostile: Hostile) -> None:
    """max_concurrent = 1. The agent reads the first bytes of a stream and hangs up, as it
    may once it has the text, before a Chat Completions stream's usage: the upstream is
    read on to its end, holding the agent's slot meanwhile (a call with its token is
    refused), and the call's usage is counted against its task and the model. Fails
    with the call dropped when the agent hangs up (nothing counted, the slot free)."""
    async with in_process(tmp_path, fleet(hostile, "max_concurrent = 1")) as d:
        task = d.sup.tasks.submit("raw", {"calls": [{**asked("wait", True), "abandon": 50}],
                                          "tell": True}, TaskOptions(timeout=60))
        token = (await anext(d.sup.tasks.output(task.id))).data
        await d.sup.tasks.info(task.id, wait=True)  # the agent has hung up
        await asyncio.wait_for(hostile.streamed.wait(), 30)
        url = d.services.gateway.url.rpartition("/mcp")[0] + CHAT
        auth = {"authorization": f"Bearer {token}"}
        async with aiohttp.ClientSession() as http:
            busy = await http.post(url, json=asked("whole")["body"], headers=auth)
            assert (busy.status, (await busy.json())["error"]["message"]) == (
                429, "rate limited: gateway client raw#0 has 1 call in flight, its limit "
                     "(max_concurrent)")
            hostile.release.set()
            stats = d.services.gateway_status
            await until(lambda: stats()["models"]["models"]["m"]["output_tokens"] == 5,
                        "the abandoned call's usage")
            assert stats()["models"]["models"]["m"]["input_tokens"] == 10
            usage = (await d.sup.tasks.info(task.id)).usage
            assert usage is not None and (usage.input_tokens, usage.output_tokens) == (10, 5)
            free = await http.post(url, json=asked("whole")["body"], headers=auth)
            assert free.status == 200, await free.text()


async def test_an_address_naming_another_tenants_running_attempt_spends_none_of_it(
        tmp_path: Path, hostile: Hostile) -> None:
    """globex's task runs (its call held by the upstream); acme's agent names that
    attempt in its call's address, with its own token: 404 in OpenAI's words, the same
    text a task that does not exist gets, the upstream not called, and the usage of
    globex's task is its own call's alone."""
    tenants = textwrap.dedent(f"""
        [tenants.acme]
        [tenants.globex]

        [agents.theirs]
        command = ["{PY}", "{HERE}/raw_model_agent.py"]
        env = {{ PYTHONPATH = "{ROOT}" }}
        tenant = "globex"
    """)
    toml = fleet(hostile).replace("retries = 1", 'retries = 1\ntenant = "acme"') + \
        "shared = true\n" + tenants
    async with in_process(tmp_path, toml) as d:
        theirs = d.sup.tasks.submit("theirs", {"calls": [asked("hold")]},
                                    TaskOptions(timeout=60))
        await asyncio.wait_for(hostile.one_held.wait(), 30)
        forged = {**asked("spend theirs"), "path": f"{CHAT}?task={theirs.id}&attempt=1"}
        missing = {**asked("spend none"), "path": f"{CHAT}?task=no-such-task&attempt=1"}
        res = await d.sup.tasks.run("raw", {"calls": [forged, missing]},
                                    TaskOptions(timeout=60))
        refused = [(a["status"], json.loads(a["body"])["error"]["message"])
                   for a in res.output["answers"]]
        assert refused == [(404, f"attempt 1 of task {task_id} is not running on raw#0: a "
                                 "call at its address is not made (it ended, or is not "
                                 "this replica's)")
                           for task_id in (theirs.id, "no-such-task")]
        assert hostile.calls == 1
        hostile.release.set()
        await d.sup.tasks.info(theirs.id, wait=True)
        usage = (await d.sup.tasks.info(theirs.id)).usage
        assert usage is not None and (usage.input_tokens, usage.output_tokens) == (10, 5)
        assert (await d.sup.tasks.info(res.task_id)).usage is None
