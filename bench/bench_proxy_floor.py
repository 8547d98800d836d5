"""The floor under the model gateway's added latency: a bare aiohttp pass-through.

    .venv/bin/python -m bench.bench_proxy_floor

What any proxy in Python adds on this host, before it does anything of its own: one
process serving a small Chat Completions answer (the upstream), another passing each
request to it through one pooled aiohttp ClientSession on uvloop (the proxy, as
corral's daemon runs), and one client timing calls over a keep-alive `http.client`
connection to each, interleaved call by call so that the load drifts alike for both.
bench_model_gateway's `added` figures are read against this one's, taken in the same
sitting: the part above it is the gateway's own work (token, body, attempt, journal,
usage, budget).
"""

from __future__ import annotations

import asyncio
import http.client
import os
import subprocess
import sys
import time
from typing import Any

from .harness import ENV, PY, free_port, report

CALLS = 2000
WARMUP = 200
BODY = b'{"model":"m","messages":[{"role":"user","content":"hi"}]}'
ANSWER = (b'{"id":"x","object":"chat.completion","choices":[{"index":0,"message":'
          b'{"role":"assistant","content":"echo: hi there"},"finish_reason":"stop"}],'
          b'"usage":{"prompt_tokens":10,"completion_tokens":5,"total_tokens":15}}')
PATH = "/v1/chat/completions"


async def serve(role: str, port: int, upstream: int) -> None:
    from aiohttp import ClientSession, TCPConnector, web

    session: ClientSession | None = None

    async def answer(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=ANSWER, content_type="application/json")

    async def pass_on(request: web.Request) -> web.Response:
        assert session is not None
        body = await request.read()
        async with session.post(f"http://127.0.0.1:{upstream}{PATH}", data=body,
                                headers={"Content-Type": "application/json"}) as got:
            return web.Response(body=await got.read(), status=got.status,
                                content_type="application/json")

    if role == "proxy":
        session = ClientSession(connector=TCPConnector(limit=100))
    app = web.Application()
    app.router.add_post(PATH, answer if role == "upstream" else pass_on)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    print("ready", flush=True)
    await asyncio.Event().wait()


def timed(conn: http.client.HTTPConnection) -> float:
    t0 = time.perf_counter()
    conn.request("POST", PATH, BODY, {"Content-Type": "application/json"})
    conn.getresponse().read()
    return time.perf_counter() - t0


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return round(s[min(len(s) - 1, int(q * len(s)))] * 1000, 3)


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--serve":
        import uvloop
        uvloop.run(serve(sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
        return
    up, px = free_port(), free_port()
    procs = [subprocess.Popen([PY, "-m", "bench.bench_proxy_floor", "--serve", role,
                               str(port), str(up)], env=ENV, stdout=subprocess.PIPE)
             for role, port in (("upstream", up), ("proxy", px))]
    try:
        for p in procs:
            assert p.stdout is not None and p.stdout.readline().strip() == b"ready"
        direct = http.client.HTTPConnection("127.0.0.1", up)
        proxy = http.client.HTTPConnection("127.0.0.1", px)
        for _ in range(WARMUP):
            timed(direct), timed(proxy)
        d: list[float] = []
        p_: list[float] = []
        for _ in range(CALLS):
            d.append(timed(direct))
            p_.append(timed(proxy))
        out: dict[str, Any] = {
            "load_1min": os.getloadavg()[0], "calls": CALLS,
            "direct": {"p50_ms": pct(d, 0.5), "p99_ms": pct(d, 0.99)},
            "aiohttp_proxy": {"p50_ms": pct(p_, 0.5), "p99_ms": pct(p_, 0.99)},
            "added_p50_ms": round(pct(p_, 0.5) - pct(d, 0.5), 3),
            "added_p99_ms": round(pct(p_, 0.99) - pct(d, 0.99), 3)}
        report("proxy_floor", out)
    finally:
        for p in procs:
            p.kill()
            p.wait()


if __name__ == "__main__":
    main()
