"""The tasks whose end is handed to push delivery are held only until their configs are
forgotten: a node's Operations kept every such task id for ever (soakmem's census, one an
A2A task with a push config: 38 to 418 in 30 minutes of the soak)."""

from __future__ import annotations

import asyncio

from aiohttp import web

from corral.daemon.a2a import push
from corral.daemon.a2a import wire as w
from corral.supervisor.pushstore import MemoryPush

from ..daemon_harness import free_port

TASKS = 40


async def test_the_tasks_whose_end_was_delivered_are_let_go_once_their_configs_are_forgotten(
        ) -> None:
    posted: list[object] = []

    async def hook(request: web.Request) -> web.Response:
        posted.append(await request.json())
        return web.Response(status=204)

    app = web.Application()
    app.add_routes([web.post("/hook", hook)])
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    said: list[str] = []
    store = MemoryPush()
    configs = push.PushConfigs(True, said.append, store)
    try:
        for n in range(TASKS):
            await configs.add(f"t{n}", w.PushConfig(url=f"http://127.0.0.1:{port}/hook",
                                                    id="c"), {"via": "test"})
        await configs.deliver("t0", {"n": 0}, final=False)
        assert configs.ending == set()  # (not ended: nothing to hold)
        for n in range(TASKS):
            await configs.deliver(f"t{n}", {"n": n, "end": True}, final=True)
        assert configs.ending == {f"t{n}" for n in range(TASKS)}
        async with asyncio.timeout(30):
            # (the store's own listing: PushConfigs.tasks lets go of what it no longer keeps)
            while await store.tasks():
                await asyncio.sleep(0.05)
        assert configs.ending == set()
        assert len(posted) == TASKS + 1 and said == []
        assert (configs.delivered, configs.given_up, configs.dropped) == (TASKS + 1, 0, 0)
    finally:
        await configs.close()
        await runner.cleanup()
