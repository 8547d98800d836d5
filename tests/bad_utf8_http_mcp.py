"""A remote MCP server (Streamable HTTP, JSON answers) whose tool "bad" answers with a string
that is not UTF-8 (the raw byte 0xff) in its result, and "refused" with a 400 whose JSON-RPC
error has an id that is not UTF-8; "good" answers "ok". Over an event stream: "streamed"
sends a notification whose method is not UTF-8 before its answer; "resumed" closes its
stream after an event id, and the GET that resumes it sends an answer whose "jsonrpc" is
not UTF-8 (both unreadable envelopes); "noisy" sends a log line and a progress notification
not UTF-8 in their params alone (envelopes readable), then its answer. /sse, a legacy
HTTP+SSE server's stream, names an endpoint that is not UTF-8. Prints `port N`, then serves."""

import asyncio
import json

from aiohttp import web

BAD = b"\xff"
UNREAD_METHOD = b'{"jsonrpc":"2.0","method":"notifications/' + BAD + b'"}'
UNREAD_JSONRPC = b'{"jsonrpc":"' + BAD + b'","id":'  # then the id, then the result
NOISY = (b'{"jsonrpc":"2.0","method":"notifications/message","params":{"level":"info",'
         b'"data":"' + BAD + b'"}}',
         b'{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":1,'
         b'"progress":1,"message":"' + BAD + b'"}}')


def events(*data: bytes, last_id: str | None = None) -> web.Response:
    body = b"".join(b"data: " + d + b"\n\n" for d in data)
    if last_id is not None:  # a notification as the stream's last event, with an id
        body += (b"retry: 10\nid: " + last_id.encode() + b'\ndata: {"jsonrpc":"2.0",'
                 b'"method":"notifications/message","params":{"level":"info","data":"x"}}\n\n')
    return web.Response(content_type="text/event-stream", body=body)


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
                                      for n in ("bad", "refused", "good", "streamed",
                                                "resumed", "noisy")]})
    name = params.get("name")
    if method == "tools/call" and name == "bad":
        return web.Response(content_type="application/json", body=(
            b'{"jsonrpc":"2.0","id":' + json.dumps(rid).encode() + b',"result":{"content":'
            b'[{"type":"text","text":"' + BAD + b'"}]}}'))
    if method == "tools/call" and name == "refused":
        return web.Response(status=400, content_type="application/json", body=(
            b'{"jsonrpc":"2.0","id":"' + BAD + b'","error":{"code":-32000,"message":"no"}}'))
    if method == "tools/call" and name == "streamed":
        return events(UNREAD_METHOD, json.dumps({"jsonrpc": "2.0", "id": rid, "result": {
            "content": [{"type": "text", "text": "ok"}]}}).encode())
    if method == "tools/call" and name == "noisy":
        return events(*NOISY, json.dumps({"jsonrpc": "2.0", "id": rid, "result": {
            "content": [{"type": "text", "text": "ok"}]}}).encode())
    if method == "tools/call" and name == "resumed":
        return events(last_id=json.dumps(rid))
    if method in ("tools/call", "ping"):
        return answer(rid, {"content": [{"type": "text", "text": "ok"}]} if name else {})
    return web.json_response({"jsonrpc": "2.0", "id": rid, "error": {
        "code": -32601, "message": f"no {method}"}})


async def get(request: web.Request) -> web.StreamResponse:
    """No stream outside requests; "resumed"'s, its answer not UTF-8 in its envelope."""
    last = request.headers.get("Last-Event-ID")
    if last is None:
        return web.Response(status=405)
    return events(UNREAD_JSONRPC + last.encode() + b',"result":{"content":[]}}')


async def sse(request: web.Request) -> web.StreamResponse:
    """An endpoint event not UTF-8, and the stream held open (a call waits on it no longer)."""
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    await resp.write(b"event: endpoint\ndata: /messages?s=" + BAD + b"\n\n")
    await asyncio.Event().wait()
    return resp


async def main() -> None:
    app = web.Application()
    app.router.add_post("/mcp", post)
    app.router.add_get("/mcp", get)
    app.router.add_get("/sse", sse)
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
