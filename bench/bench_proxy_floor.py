"""The floor under the model gateway's added latency: a bare aiohttp pass-through.

    .venv/bin/python -m bench.bench_proxy_floor

What any proxy in Python adds on this host, before it does anything of its own: one
process serving a small Chat Completions answer (the upstream), another passing each
request to it through one pooled aiohttp ClientSession on uvloop (the proxy), a third
the same with the model gateway's own client instead (corral/daemon/models/http1.py,
decision 628: the hop corral's daemon makes), and one client timing calls over a
keep-alive `http.client` connection to each, interleaved call by call so that the load
drifts alike for all.
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

    from corral.daemon.models.http1 import UpstreamClient

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

    async def pass_on_http1(request: web.Request) -> web.Response:
        got = await client.post(f"http://127.0.0.1:{upstream}{PATH}", await request.read(),
                                {"Content-Type": "application/json"}, 60)
        try:
            body = await got.read()
        finally:
            got.release()
        return web.Response(body=body, status=got.status, content_type="application/json")

    if role == "proxy":
        session = ClientSession(connector=TCPConnector(limit=100))
    client = UpstreamClient()
    app = web.Application()
    app.router.add_post(PATH, {"upstream": answer, "proxy": pass_on,
                               "http1": pass_on_http1}[role])
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
    ports = {"upstream": free_port(), "proxy": free_port(), "http1": free_port()}
    procs = [subprocess.Popen([PY, "-m", "bench.bench_proxy_floor", "--serve", role,
                               str(port), str(ports["upstream"])], env=ENV,
                              stdout=subprocess.PIPE)
             for role, port in ports.items()]
    try:
        for p in procs:
            assert p.stdout is not None and p.stdout.readline().strip() == b"ready"
        conns = {role: http.client.HTTPConnection("127.0.0.1", port)
                 for role, port in ports.items()}
        for _ in range(WARMUP):
            for conn in conns.values():
                timed(conn)
        took: dict[str, list[float]] = {role: [] for role in conns}
        for _ in range(CALLS):
            for role, conn in conns.items():
                took[role].append(timed(conn))
        direct = took["upstream"]
        out: dict[str, Any] = {"load_1min": os.getloadavg()[0], "calls": CALLS,
                               "direct": {"p50_ms": pct(direct, 0.5),
                                          "p99_ms": pct(direct, 0.99)}}
        for role, name in (("proxy", "aiohttp_proxy"), ("http1", "http1_proxy")):
            out[name] = {"p50_ms": pct(took[role], 0.5), "p99_ms": pct(took[role], 0.99),
                         "added_p50_ms": round(pct(took[role], 0.5) - pct(direct, 0.5), 3),
                         "added_p99_ms": round(pct(took[role], 0.99) - pct(direct, 0.99),
                                               3)}
        report("proxy_floor", out)
    finally:
        for p in procs:
            p.kill()
            p.wait()


if __name__ == "__main__":
    main()
