"""Ended MCP task handles are bounded per client in number and bytes (issue 74;
corral/daemon/mcptasks.py): a client's ended handles hold their results for task_ttl,
so past MAX_ENDED_BYTES_PER_CLIENT of results the oldest ended handle is let go first —
and a tasks/get of it says which bound let it go, never an unknown id in silence; the
newest is kept to be read. Through the real daemon's HTTP gateway at /mcp/corral, as
tests/test_gateway_tasks.py drives it."""

from __future__ import annotations

from corral.daemon.mcptasks import MAX_ENDED_BYTES_PER_CLIENT

from .test_gateway_tasks import Gateway, ended, gateway, rpc  # noqa: F401 (the fixture)

PAD = 512 * 1024  # an echo's result holds it twice (its text and structuredContent)


def test_a_clients_ended_handles_past_their_bytes_let_the_oldest_go_and_say_so(
        gateway: Gateway) -> None:  # noqa: F811 - the fixture
    g = gateway
    ids = []
    calls = MAX_ENDED_BYTES_PER_CLIENT // (2 * PAD) + 2
    for i in range(calls):
        handle = rpc(g, "acme", "tools/call", {"name": "chat", "arguments": {
            "do": "echo", "i": i, "pad": "x" * PAD}})["result"]
        assert ended(g, "acme", handle["taskId"])["status"] == "completed"
        ids.append(handle["taskId"])
    gone = rpc(g, "acme", "tasks/get", {"taskId": ids[0]})["error"]
    assert gone == {"code": -32602, "message": (
        f"invalid params: task {ids[0]} of this client ended and was let go: its "
        f"client's ended tasks' results past MAX_ENDED_BYTES_PER_CLIENT "
        f"({MAX_ENDED_BYTES_PER_CLIENT} bytes)"), "data": {"taskId": ids[0]}}, gone
    newest = rpc(g, "acme", "tasks/get", {"taskId": ids[-1]})["result"]
    assert newest["status"] == "completed"
    assert newest["result"]["structuredContent"]["i"] == calls - 1
    kept = [t for t in ids if "result" in rpc(g, "acme", "tasks/get", {"taskId": t})]
    # what is kept fits the bound (each result ~2 PAD), the newest ones
    assert kept == ids[-len(kept):] and len(kept) * 2 * PAD <= MAX_ENDED_BYTES_PER_CLIENT
    # another tenant's client is told nothing of it
    other = rpc(g, "globex", "tasks/get", {"taskId": ids[0]})["error"]
    assert other["message"] == f"invalid params: no task {ids[0]} of this client"
