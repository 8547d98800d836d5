"""A token limited to an agents glob is sent its agents' events alone (issue 52, item
4b): neither another agent's worker's, nor corral's own about another agent, nor those a
caller limited to another glob published (a token limited to `b*` speaks for b1), over
the command layer's follow (the socket's handler) and the HTTP event stream alike. Its
own glob's callers' events, an operator's and its own agents' are sent. Each kind of
event that names an agent (a worker's, a health flip, a run's and its steps') is held to
it for a tenant's glob token, another tenant's agent of the glob's letters included
(issue 74). The same across a cluster: tests/cluster/test_cluster_events.py."""

from __future__ import annotations

import asyncio
import contextlib
import textwrap
from pathlib import Path
from typing import Any

import msgspec
import pytest

from .daemon_harness import sleeper
from .test_gateway_stdio import wait_until_async
from .test_http_adversary import Recorder, api_of
from .test_http_api import SOCKET, serving, sse_events


@pytest.mark.deadline(90)
async def test_a_glob_tokens_stream_has_no_event_another_globs_caller_published(
        tmp_path: Path) -> None:
    from corral.daemon.caller import Caller

    async with serving(tmp_path, sleeper("a1") + sleeper("b1")) as api:
        d = api.d
        await api.token("glob", "events", agents="a*")
        await api.token("same", "events", agents="a*")
        await api.token("other", "events", agents="b*")
        await api.token("ops", "events")
        glob = Caller(via="http", token="glob", scopes=frozenset({"events"}), agents="a*")
        recorder = Recorder()
        follow = asyncio.ensure_future(d.dispatcher.call(
            glob, "events.follow", {"pattern": "t.*"}, recorder))
        auth = {"Authorization": f"Bearer {api.tokens['glob']}"}
        try:
            async with api.http.get(api.base + "/events/stream?pattern=t.*",
                                    headers=auth) as stream:
                ring = api_of(d).ring
                await wait_until_async(lambda: len(ring.readers) == 1 and ring.task
                                       is not None and len(d.sup.events.followers) == 2)
                # what a publish answers counts the subscribers it reached alone: the
                # glob's follow and its stream, or neither (decision 1088)
                for token, reached in (("other", 0), ("same", 2), ("ops", 2)):
                    status, body, _ = await api.ask("POST", "/events", token,
                                                    {"topic": f"t.{token}", "data": 0})
                    assert (status, body) == (200, {"delivered": reached}), token
                for agent in ("b1", "a1"):
                    done = await d.dispatcher.call(SOCKET, "tasks.run", msgspec.json.encode(
                        {"agent": agent, "input": {"do": "publish", "topic": f"t.{agent}",
                                                   "data": 0}}))
                    assert done.status == "succeeded", done
                got = await sse_events(stream, 3)
            await wait_until_async(lambda: len(recorder.sent) >= 3)
        finally:
            follow.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await follow
        want = ["t.same", "t.ops", "t.a1"]
        assert [e["data"]["topic"] for e in got] == want
        assert [msgspec.json.decode(p)["topic"] for _, p in recorder.sent] == want


def _checked(name: str, tenant: str, flags: Path) -> str:
    """A sleeper of `tenant` whose readiness (corral's own command check) fails while
    flags/NAME exists: each flip is a `corral.health` event about it."""
    return sleeper(name) + textwrap.dedent(f"""
        tenant = "{tenant}"
        [agents.{name}.health.readiness]
        command = ["sh", "-c", "test ! -e {flags}/{name}"]
        interval = 0.1
        timeout = 30
        failures = 1
    """)


def _flow(name: str, agents: list[str]) -> str:
    return f"[workflows.{name}]\n" + "".join(
        f'[[workflows.{name}.steps]]\nname = "s{i}"\nagent = "{a}"\n'
        for i, a in enumerate(agents))


@pytest.mark.deadline(120)
async def test_a_tenants_glob_token_is_sent_no_event_naming_an_agent_outside_it(
        tmp_path: Path) -> None:
    """Each kind of event that names an agent, of three agents: a1 (acme, in the glob
    a*), b1 (acme, outside it) and a2 (globex's: in the glob's letters, another
    tenant's). An acme token limited to a* is sent a1's alone: its worker's event, its
    health flips (`corral.health`), the events of a run of its workflow (`corral.run.*`,
    `corral.step.*`) but not of one that also runs b1; the operator's stream (every
    event) shows the rest happened. Over the HTTP stream and the command layer's follow
    alike; asking for globex's stream is refused, naming why."""
    from corral.daemon.caller import Caller

    flags = tmp_path / "flags"
    flags.mkdir()
    agents = "".join(_checked(n, t, flags) for n, t in (
        ("a1", "acme"), ("b1", "acme"), ("a2", "globex")))
    flows = (_flow("wfa", ["a1"]) + _flow("wfb", ["b1"]) + _flow("wfab", ["a1", "b1"])
             + _flow("wfx", ["a2"]))
    toml = "[tenants.acme]\n[tenants.globex]\n" + flows
    async with serving(tmp_path, agents, http=toml) as api:
        d = api.d
        made = await d.dispatcher.call(SOCKET, "tokens.create", {
            "name": "glob", "scopes": ["events"], "tenant": "acme", "agents": "a*"})
        api.tokens["glob"] = made.token
        await api.token("ops", "events")
        status, body, _ = await api.ask("GET", "/events/stream?tenant=globex", "glob")
        # another tenant is none to a tenant's caller, as everywhere
        assert (status, body["detail"]) == (404, "no such tenant: globex"), body

        glob = Caller(via="http", token="glob", scopes=frozenset({"events"}),
                      agents="a*", tenant="acme")
        recorder = Recorder()
        follow = asyncio.ensure_future(d.dispatcher.call(
            glob, "events.follow", {"pattern": "*"}, recorder))
        url = api.base + "/events/stream?pattern=*"
        try:
            async with api.http.get(url, headers=_auth(api, "glob")) as limited, \
                    api.http.get(url, headers=_auth(api, "ops")) as everyone:
                ring = api_of(d).ring
                await wait_until_async(lambda: len(ring.readers) == 2 and ring.task
                                       is not None and len(d.sup.events.followers) == 2)
                for name in ("b1", "a2", "a1"):  # each flips unready, then ready
                    (flags / name).touch()
                await _flipped(everyone, "unready", {"b1", "a2", "a1"})
                for name in ("b1", "a2", "a1"):
                    (flags / name).unlink()
                await _flipped(everyone, "ready", {"b1", "a2", "a1"})
                for flow in ("wfb", "wfab", "wfx", "wfa"):
                    run = await d.dispatcher.call(SOCKET, "workflows.run", {
                        "name": flow, "input": {}, "wait": 30})
                    assert run.status == "succeeded", run
                for agent in ("b1", "a2", "a1"):
                    done = await d.dispatcher.call(SOCKET, "tasks.run", msgspec.json.encode(
                        {"agent": agent, "input": {"do": "publish", "topic": f"t.{agent}",
                                                   "data": 0}}))
                    assert done.status == "succeeded", done
                status, body, _ = await api.ask("POST", "/events", "ops",
                                                {"topic": "t.end", "data": 0})
                assert status == 200, body
                everything = await _until(everyone, lambda e: e["topic"] == "t.end", 1)
                got = await _until(limited, lambda e: e["topic"] == "t.end", 1)
            await wait_until_async(lambda: any(
                msgspec.json.decode(p)["topic"] == "t.end" for _, p in recorder.sent))
        finally:
            follow.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await follow
        run_events = ["corral.run.started", "corral.step.started", "corral.step.succeeded",
                      "corral.run.succeeded"]
        # the operator was sent every run's events and every worker's
        assert [_about(e) for e in everything if e["topic"] == "corral.run.started"] == [
            ("corral.run.started", f) for f in ("wfb", "wfab", "wfx", "wfa")]
        assert [_about(e) for e in everything if e["topic"].startswith("t.")] == [
            ("t.b1", "b1#0"), ("t.a2", "a2#0"), ("t.a1", "a1#0"), ("t.end", "token ops")]
        # a1's flips alone (a check slow on a loaded machine may flip it once more)
        want = [*[(t, "wfa") for t in run_events], ("t.a1", "a1#0"), ("t.end", "token ops")]
        followed = [msgspec.json.decode(p) for _, p in recorder.sent]
        for events in (got, followed):
            flips = [e["data"] for e in events if e["topic"] == "corral.health"]
            assert {f["agent"] for f in flips} == {"a1"}, flips
            assert {f["action"] for f in flips} == {"unready", "ready"}, flips
            assert [_about(e) for e in events if e["topic"] != "corral.health"] == want


def _auth(api: object, token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {api.tokens[token]}"}  # type: ignore[attr-defined]


def _about(event: dict[str, Any]) -> tuple[str, str]:
    """(topic, what it names: a health flip's agent, a run's workflow, else its source)."""
    data = event["data"]
    if isinstance(data, dict) and "workflow" in data:
        return event["topic"], data["workflow"]
    if isinstance(data, dict) and event["topic"] == "corral.health":
        return event["topic"], data["agent"]
    return event["topic"], event["source"]


async def _flipped(stream: Any, action: str, agents: set[str]) -> None:
    """Until the stream has told a health flip to `action` of each of the agents."""
    left = set(agents)
    while left:
        (event,) = await sse_events(stream, 1)
        data: Any = event.get("data")
        if event.get("event") == "events.event" and data["topic"] == "corral.health" \
                and data["data"]["action"] == action:
            left.discard(data["data"]["agent"])


async def _until(stream: Any, last: Any, count: int) -> list[dict[str, Any]]:
    """The stream's events (their data: the Delivery) until `count` of them met `last`."""
    out: list[dict[str, Any]] = []
    met = 0
    while met < count:
        (event,) = await sse_events(stream, 1)
        if event.get("event") != "events.event":
            continue
        out.append(event["data"])
        met += bool(last(event["data"]))
    return out
