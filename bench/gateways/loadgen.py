"""bench/gateways' load generator, a process of its own (aiohttp on uvloop): N requests to
one target at concurrency C over keep-alive connections (C of them), after a warm-up not
measured, each request's latency and, streamed, its first chunk's (the first `data:`
line of the answer) taken. A request counts as answered only when its answer is the
right one (the echo, or the tool's result); any other is an error, counted and the first
one quoted.

    loadgen.py JSON OUT    JSON: {"kind": "model" | "mcp", "url", "headers", "n", "c",
                              "warmup", "seconds", "stream" (model), "model" (model)}
                        (the warm-up bounded to a tenth of `seconds`)

Writes {"wall_s", "latencies", "first_chunks", "errors", "first_error"} (seconds) to the
file OUT (its stdout, a pipe, was seen broken at 64 and 128 KiB under load).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

MCP_ACCEPT = "application/json, text/event-stream"
Call = Callable[[int], Awaitable[float | None]]


class Wrong(Exception):
    """An answer that is not the right one: its kind (what the errors are counted by)
    and what it was."""

    def __init__(self, kind: str, detail: str = "") -> None:
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind


def model_body(spec: dict[str, Any]) -> bytes:
    return json.dumps({"model": spec["model"], "max_tokens": 16, "stream": spec["stream"],
                       "messages": [{"role": "user", "content": "hi there"}]}).encode()


def tools_call(tool: str, i: int | str, text: str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": i, "method": "tools/call",
            "params": {"name": tool, "arguments": {"text": text}}}


def model_call(session: aiohttp.ClientSession, spec: dict[str, Any]) -> Call:
    body = model_body(spec)
    headers = {"Content-Type": "application/json", **spec["headers"]}

    async def call(i: int) -> float | None:
        t0 = time.perf_counter()
        async with session.post(spec["url"], data=body, headers=headers) as r:
            if not spec["stream"]:
                raw = await r.read()
                if r.status != 200 or b"echo" not in raw:
                    raise Wrong(f"status {r.status}", repr(raw[:300]))
                return None
            first, seen = None, b""
            async for line in r.content:
                if first is None and line.startswith(b"data:"):
                    first = time.perf_counter() - t0
                if b"echo" in line:
                    seen = line
            if r.status != 200 or first is None or not seen:
                raise Wrong(f"a stream of status {r.status} with no echo")
            return first

    return call


async def mcp_post(session: aiohttp.ClientSession, url: str, headers: dict[str, str],
                   msg: dict[str, Any]) -> tuple[dict[str, Any] | None, aiohttp.ClientResponse]:
    """One JSON-RPC message posted; its answer read from a JSON body or an SSE stream
    (the first event carrying the request's id)."""
    async with session.post(url, data=json.dumps(msg).encode(), headers=headers) as r:
        if "id" not in msg:
            await r.read()
            return None, r
        if r.status != 200:
            raise Wrong(f"{msg['method']}: status {r.status}", repr((await r.read())[:300]))
        if r.content_type == "application/json":
            return json.loads(await r.read()), r
        async for line in r.content:
            if line.startswith(b"data:"):
                got = json.loads(line[5:])
                if got.get("id") == msg["id"]:
                    return dict(got), r
        raise Wrong(f"{msg['method']}: a stream with no answer")


async def mcp_session(session: aiohttp.ClientSession, spec: dict[str, Any]
                      ) -> tuple[dict[str, str], str]:
    """The MCP session opened (initialize, initialized, tools/list): the headers of its
    calls and the tool whose name ends in `echo` (each gateway prefixes it its own way)."""
    url = spec["url"]
    headers = {"Content-Type": "application/json", "Accept": MCP_ACCEPT, **spec["headers"]}
    init, r = await mcp_post(session, url, headers, {
        "jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {},
            "clientInfo": {"name": "bench-gateways", "version": "1"}}})
    assert init is not None
    if "result" not in init:
        raise Wrong("initialize refused", str(init))
    if "mcp-session-id" in r.headers:
        headers["Mcp-Session-Id"] = r.headers["mcp-session-id"]
    headers["MCP-Protocol-Version"] = init["result"]["protocolVersion"]
    await mcp_post(session, url, headers, {"jsonrpc": "2.0",
                                           "method": "notifications/initialized"})
    listed, _ = await mcp_post(session, url, headers,
                               {"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
    assert listed is not None
    names = [t["name"] for t in listed["result"]["tools"]]
    tool = next((n for n in names if n.endswith("echo")), None)
    if tool is None:
        raise Wrong("no echo tool", str(names))
    return headers, tool


async def mcp_call(session: aiohttp.ClientSession, spec: dict[str, Any]) -> Call:
    """The session opened; then one tools/call a call."""
    url = spec["url"]
    headers, tool = await mcp_session(session, spec)

    async def call(i: int) -> float | None:
        text = f"hi {i}"
        got, _ = await mcp_post(session, url, headers, tools_call(tool, i + 2, text))
        result = (got or {}).get("result") or {}
        said = (result.get("content") or [{}])[0].get("text")
        if said != text and isinstance(said, str) and said.startswith("hi "):
            raise Wrong("tools/call answered with another call's result",
                        f"asked {text!r}, answered {said!r}")
        if result.get("isError") or said != text:
            raise Wrong("tools/call: not its result", str(got)[:300])
        return None

    return call


async def drive(call: Call, n: int, c: int, start: int, seconds: float) -> dict[str, Any]:
    """`n` calls, `c` at a time, numbered from `start`; none begun after `seconds` (a
    target far slower than the others is measured on fewer calls, not for an hour)."""
    latencies: list[float] = []
    firsts: list[float] = []
    errors: list[tuple[str, str]] = []  # (kind, the first of that kind's words)
    numbers = itertools.count(start)
    end = start + n

    async def worker() -> None:
        while (i := next(numbers)) < end and time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            try:
                first = await call(i)
            except Wrong as exc:
                errors.append((exc.kind, str(exc)))
                continue
            except (TimeoutError, aiohttp.ClientError) as exc:
                errors.append((type(exc).__name__, f"{type(exc).__name__}: {exc}"))
                continue
            latencies.append(time.perf_counter() - t0)
            if first is not None:
                firsts.append(first)

    t0 = time.perf_counter()
    stop_at = t0 + seconds
    await asyncio.gather(*(worker() for _ in range(c)))
    kinds = Counter(kind for kind, _ in errors).most_common(3)
    example = {kind: said for kind, said in reversed(errors)}
    return {"wall_s": time.perf_counter() - t0, "latencies": latencies,
            "first_chunks": firsts, "errors": len(errors),
            "first_error": "; ".join(f"{n}x {example[k][:300]}" for k, n in kinds) or None}


async def main(spec: dict[str, Any]) -> dict[str, Any]:
    c = spec["c"]
    connector = aiohttp.TCPConnector(limit=c, force_close=False)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        call = model_call(session, spec) if spec["kind"] == "model" \
            else await mcp_call(session, spec)
        await drive(call, spec["warmup"], c, 0, spec["seconds"] / 10)
        return await drive(call, spec["n"], c, spec["warmup"], spec["seconds"])


if __name__ == "__main__":
    import uvloop

    Path(sys.argv[2]).write_text(json.dumps(uvloop.run(main(json.loads(sys.argv[1])))))
