"""Which async HTTP client carries corral's MCP Streamable HTTP transport: httpx vs aiohttp.

Both POST the same small JSON-RPC message to the same local server (a separate process,
answering `application/json`), N requests at concurrency 1 and 8; requests per second,
median of 3 rounds.

    .venv/bin/python bench/http_clients.py [N]
"""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import sys
import time
from pathlib import Path

SERVER = r"""
import sys
from aiohttp import web
BODY = b'{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"hi"}]}}'
async def h(request):
    await request.read()
    return web.Response(body=BODY, content_type="application/json")
app = web.Application(); app.router.add_post("/mcp", h)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=lambda *a: print("up", flush=True))
"""
MSG = b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{}}}'
HEADERS = {"content-type": "application/json", "accept": "application/json, text/event-stream"}


async def run_aiohttp(url: str, n: int, conc: int) -> float:
    import aiohttp

    async with aiohttp.ClientSession() as s:
        async def one() -> None:
            async with s.post(url, data=MSG, headers=HEADERS) as r:
                await r.read()
        return await _drive(one, n, conc)


async def run_httpx(url: str, n: int, conc: int) -> float:
    import httpx2 as httpx

    async with httpx.AsyncClient() as c:
        async def one() -> None:
            r = await c.post(url, content=MSG, headers=HEADERS)
            r.read()
        return await _drive(one, n, conc)


async def _drive(one, n: int, conc: int) -> float:  # type: ignore[no-untyped-def]
    for _ in range(20):
        await one()
    per = n // conc

    async def worker() -> None:
        for _ in range(per):
            await one()
    t = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(conc)))
    return per * conc / (time.perf_counter() - t)


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    port = 18765
    srv = subprocess.Popen([sys.executable, "-c", SERVER, str(port)], stdout=subprocess.PIPE)
    try:
        assert srv.stdout is not None
        srv.stdout.readline()
        url = f"http://127.0.0.1:{port}/mcp"
        print(f"load: {Path('/proc/loadavg').read_text().strip()}")
        for conc in (1, 8):
            res = {}
            for name, fn in (("httpx", run_httpx), ("aiohttp", run_aiohttp)):
                res[name] = statistics.median(asyncio.run(fn(url, n, conc)) for _ in range(3))
            print(f"concurrency {conc}: httpx {res['httpx']:.0f} req/s, aiohttp "
                  f"{res['aiohttp']:.0f} req/s, aiohttp/httpx {res['aiohttp']/res['httpx']:.2f}x")
    finally:
        srv.kill()
        srv.wait()


if __name__ == "__main__":
    main()
