"""A push config is its maker's (decisions 2122-2123, daemon/a2a/push.py): another caller
neither lists, gets, replaces nor deletes it, and a config whose maker the door refuses at
a delivery is posted nothing, said once for it and its events counted. PushConfigs over
one MemoryPush home, a real receiver."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web

from corral.daemon.a2a import push
from corral.daemon.a2a import wire as w
from corral.supervisor.pushstore import MemoryPush

from ..daemon_harness import free_port
from .test_push import receiver

MAKER = {"via": "a2a", "token": "maker", "since": 1.5}
OTHER = {"via": "a2a", "token": "other", "since": 2.5}
ENDED = {"statusUpdate": {"status": {"state": "TASK_STATE_COMPLETED"}}}


async def test_another_callers_config_is_not_listed_got_replaced_or_deleted() -> None:
    configs = push.PushConfigs(True, lambda _: None, MemoryPush())
    try:
        made = await configs.add("t1", w.PushConfig(url="http://8.8.8.8/", id="mine",
                                                    token="secret"), MAKER)
        with pytest.raises(w.A2aError) as refused:
            await configs.add("t1", w.PushConfig(url="http://8.8.4.4/", id="mine"), OTHER)
        assert (refused.value.kind, refused.value.message) == (
            w.INVALID_PARAMS, "invalid params: task t1 has a push config mine of another caller")
        assert await configs.of("t1", OTHER) == []
        with pytest.raises(w.A2aError) as missing:
            await configs.get("t1", "mine", OTHER)
        assert (missing.value.kind, missing.value.message) == (
            w.TASK_NOT_FOUND, "task t1 has no push config mine")
        await configs.delete("t1", "mine", OTHER)
        # a later token of the maker's name is another maker
        assert await configs.of("t1", MAKER | {"since": 9.0}) == []
        assert await configs.of("t1", MAKER) == [made]
        await configs.delete("t1", "mine", MAKER)
        assert await configs.tasks() == []
    finally:
        await configs.close()


async def test_a_config_whose_maker_is_refused_is_posted_nothing_and_said_once() -> None:
    async with receiver() as (hook, got):
        said: list[str] = []
        configs = push.PushConfigs(True, said.append, MemoryPush())
        try:
            await configs.add("t1", w.PushConfig(url=hook, id="gone"), MAKER)
            await configs.add("t1", w.PushConfig(url=hook, id="kept"), OTHER)

            def refusal(maker: dict[str, object]) -> str | None:
                return "its maker's token maker is revoked" \
                    if maker["token"] == "maker" else None

            await configs.deliver("t1", {"statusUpdate": {}}, False, refusal)
            await configs.deliver("t1", ENDED, True, refusal)
            # the other's config is posted both, in order
            assert [(await got.get())[1] for _ in range(2)] == [{"statusUpdate": {}}, ENDED]
            async with asyncio.timeout(30):  # its end delivered: the configs forgotten
                while await configs.tasks():
                    await asyncio.sleep(0.02)
            assert got.empty()
            assert (configs.delivered, configs.refused) == (2, 2)
            assert said == ["a2a push config gone of task t1 refused: its maker's token "
                            "maker is revoked; its events are not sent"]
        finally:
            await configs.close()


async def test_events_queued_before_their_makers_refusal_are_not_posted_after_it() -> None:
    """The door's word on a config's maker is asked before each post, not as an event
    is queued: events waiting behind a receiver when the maker's token is revoked (its
    end among them) were posted after the revocation; now the post in flight is the last."""
    gate = asyncio.Event()
    got: list[object] = []

    async def hook(request: web.Request) -> web.Response:
        got.append(await request.json())
        await gate.wait()
        return web.Response(status=204)

    app = web.Application()
    app.add_routes([web.post("/hook", hook)])
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    said: list[str] = []
    configs = push.PushConfigs(True, said.append, MemoryPush())
    revoked: list[str] = []
    try:
        await configs.add("t1", w.PushConfig(url=f"http://127.0.0.1:{port}/hook",
                                            id="gone"), MAKER)

        def refusal(maker: dict[str, object]) -> str | None:
            return revoked[0] if revoked and maker["token"] == "maker" else None

        await configs.deliver("t1", {"statusUpdate": {"n": 1}}, False, refusal)
        async with asyncio.timeout(30):  # the first posted, its answer held
            while not got:
                await asyncio.sleep(0.02)
        await configs.deliver("t1", {"statusUpdate": {"n": 2}}, False, refusal)
        await configs.deliver("t1", ENDED, True, refusal)
        revoked.append("its maker's token maker is revoked")
        gate.set()
        async with asyncio.timeout(30):  # its end handled: the configs forgotten
            while await configs.tasks():
                await asyncio.sleep(0.02)
        assert got == [{"statusUpdate": {"n": 1}}]
        assert (configs.delivered, configs.refused) == (1, 2)
        assert said == ["a2a push config gone of task t1 refused: its maker's token "
                        "maker is revoked; its events are not sent"]
    finally:
        await configs.close()
        await runner.cleanup()
