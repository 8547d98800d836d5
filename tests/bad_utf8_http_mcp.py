"""A remote MCP server (Streamable HTTP, JSON answers) whose tool "bad" answers with a string
that is not UTF-8 (the raw byte 0xff) in its result, and "refused" with a 400 whose JSON-RPC
error has an id that is not UTF-8; "good" answers "ok". Prints `port N`, then serves."""

import asyncio
import json

from aiohttp import web

BAD = b"\xff"


def answer(rid: object, result: object) -> web.Response:
    return web.json_response({"jsonrpc": "2.0", "id": rid, "result": result})


async def post(request: web.Request) -> web.StreamResponse:
    msg = json.loads(await request.read())
    rid, method, params = msg.get("id"), msg.get("method"), msg.get("params") or {}
    if rid is None:
        return web.Response(status=202)
    if method == "initialize":
        return answer(rid, {"protocolVersion": params["protocolVersion"],
                            "capabilities": {"tools": {}},
                            "serverInfo": {"name": "bad-utf8-http", "version": "1"}})
    if method == "tools/list":
        return answer(rid, {"tools": [{"name": n, "inputSchema": {"type": "object"}}
                                      for n in ("bad", "refused", "good")]})
    name = params.get("name")
    if method == "tools/call" and name == "bad":
        return web.Response(content_type="application/json", body=(
            b'{"jsonrpc":"2.0","id":' + json.dumps(rid).encode() + b',"result":{"content":'
            b'[{"type":"text","text":"' + BAD + b'"}]}}'))
    if method == "tools/call" and name == "refused":
        return web.Response(status=400, content_type="application/json", body=(
            b'{"jsonrpc":"2.0","id":"' + BAD + b'","error":{"code":-32000,"message":"no"}}'))
    if method in ("tools/call", "ping"):
        return answer(rid, {"content": [{"type": "text", "text": "ok"}]} if name else {})
    return web.json_response({"jsonrpc": "2.0", "id": rid, "error": {
        "code": -32601, "message": f"no {method}"}})


async def main() -> None:
    app = web.Application()
    app.router.add_post("/mcp", post)
    app.router.add_route("*", "/mcp", lambda r: web.Response(status=405))
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    print(f"port {port}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main())
