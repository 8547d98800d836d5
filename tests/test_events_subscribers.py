"""`corral events publish` answers how many subscribers it reached, and a follower that
went counts no more (a new user's trial: "delivered to 2 subscribers" with one `events
tail` running). Each kind of follower is opened and closed through the public surface: an
`events tail` ended by SIGINT and one by SIGKILL, a control-socket follow whose
connection drops, an HTTP event stream its client closed. The stream's ring (docs/http.md,
"Streams") is the daemon's own follower of the bus, kept for clients that reconnect: it
is no subscriber itself, its streams' readers the event reaches are, each (docs/guide.md,
the event bus)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import msgspec
import pytest

from .conftest import ROOT
from .daemon_harness import corral_popen, hello
from .test_gateway_stdio import wait_until_async
from .test_http_adversary import api_of
from .test_http_api import SOCKET, serving, sse_events


async def _followers(d: Any, want: int) -> None:
    """Until `daemon info` counts `want` followers of the bus (the ring's among them)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20
    while (await d.dispatcher.call(SOCKET, "daemon.info", {})).event_followers != want:
        assert loop.time() < deadline, f"never {want} event followers"
        await asyncio.sleep(0.05)


def _cli(sock: Path, *args: str) -> Any:
    return corral_popen(["--socket", str(sock), *args], stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE, text=True,
                        env={**os.environ, "PYTHONPATH": str(ROOT)})


async def _published(sock: Path, topic: str) -> str:
    p = _cli(sock, "events", "publish", topic, '{"n": 1}')
    out, err = await asyncio.to_thread(p.communicate, timeout=30)
    assert p.returncode == 0, err
    return str(out)


@pytest.mark.deadline(90)
async def test_publish_counts_the_live_followers_alone(tmp_path: Path) -> None:
    async with serving(tmp_path, hello("web")) as api:
        d, sock = api.d, tmp_path / "corral.sock"
        await api.token("ops", "events")
        await _followers(d, 0)
        live = _cli(sock, "events", "tail", "orders.*", "--json")
        gone = [_cli(sock, "events", "tail", "orders.*") for _ in range(2)]
        try:
            await _followers(d, 3)
            assert await _published(sock, "orders.new") == "delivered to 3 subscribers\n"
            for p, sig in zip(gone, (signal.SIGINT, signal.SIGKILL), strict=True):
                p.send_signal(sig)
                await asyncio.to_thread(p.wait, 30)
            await _followers(d, 1)
            assert await _published(sock, "orders.new") == "delivered to 1 subscriber\n"

            # a follow on the control socket whose connection drops
            _, writer = await asyncio.open_unix_connection(str(sock))
            writer.write(msgspec.json.encode({"jsonrpc": "2.0", "id": 1, "method":
                         "events.follow", "params": {"pattern": "*"}}) + b"\n")
            await _followers(d, 2)
            assert await _published(sock, "orders.new") == "delivered to 2 subscribers\n"
            writer.transport.abort()
            await _followers(d, 1)

            # HTTP event streams, one of the topic and one of another: the one it reaches
            # is counted; once its client closed it, the ring stays (for clients that
            # reconnect with Last-Event-ID) and is counted by no answer
            auth = {"Authorization": f"Bearer {api.tokens['ops']}"}
            async with api.http.get(api.base + "/events/stream?pattern=orders.*",
                                    headers=auth) as stream, \
                    api.http.get(api.base + "/events/stream?pattern=other.*",
                                 headers=auth) as other:
                await _followers(d, 2)
                # (the client has its headers before its reader is on the ring: as
                # tests/test_events_glob.py waits for it)
                ring = api_of(d).ring
                await wait_until_async(lambda: len(ring.readers) == 2)
                assert await _published(sock, "orders.new") == "delivered to 2 subscribers\n"
                assert [e["data"]["topic"] for e in await sse_events(stream, 1)] == [
                    "orders.new"]
                assert await _published(sock, "other.new") == "delivered to 1 subscriber\n"
                assert [e["data"]["topic"] for e in await sse_events(other, 1)] == [
                    "other.new"]
            # (the streams' readers leave the ring as the daemon sees their clients close,
            # which a loaded host may show after the client's own close)
            await wait_until_async(lambda: not ring.readers)
            assert await _published(sock, "orders.new") == "delivered to 1 subscriber\n"
            status, body, _ = await api.ask("POST", "/events", "ops",
                                            {"topic": "orders.new", "data": 2})
            assert (status, body) == (200, {"delivered": 1})
            await _followers(d, 2)  # the tail's and the ring's
            assert live.stdout is not None
            heard = [msgspec.json.decode(await asyncio.to_thread(live.stdout.readline))
                     for _ in range(6)]
            assert [e["data"] for e in heard] == [{"n": 1}] * 5 + [2]
        finally:
            for p in (live, *gone):
                p.kill()
                await asyncio.to_thread(p.wait, 30)
