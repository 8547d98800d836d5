"""Issue 74: what ended MCP task handles hold of the daemon (corral/daemon/mcptasks.py).

    .venv/bin/python -m bench.bench_gateway_handles [--quick]

One daemon on this host with its HTTP gateway and an agent of examples/misbehave.py; an
API token (`mcp:call`) calls the agent at /mcp/corral as a 2026-07-28 client that
declared the tasks extension, CALLS times, each an echo of a 512 KiB pad (a result of
~1 MiB of JSON: its text and its structuredContent), each polled (`tasks/get`) to its
end before the next. Measured: the daemon's RSS (VmRSS) after one warm call and after
the CALLS (1 s idle each), and how many of the handles still answer their result — a
client's ended handles are bounded (MAX_ENDED_PER_CLIENT, MAX_ENDED_BYTES_PER_CLIENT)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

import httpx2

from .harness import PY, ROOT, CorralDaemon, cleanup, free_port, report, workdir

QUICK = "--quick" in sys.argv
CALLS = 20 if QUICK else 100
PAD = 512 * 1024
TASKS = "io.modelcontextprotocol/tasks"


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def main() -> None:
    d = workdir("handles")
    port = free_port()
    daemon = CorralDaemon(d, f"""
[agents.chat]
command = ["{PY}", "{ROOT}/examples/misbehave.py"]
env = {{ PYTHONPATH = "{ROOT}" }}

[gateway]
listen = "127.0.0.1:{port}"
""")
    try:
        daemon.start()
        assert daemon.proc is not None
        made = subprocess.run([PY, "-m", "corral", "--socket", str(daemon.sock), "token",
                               "create", "bench", "--scope", "mcp:call", "--json"],
                              capture_output=True, text=True, check=True,
                              env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
        token = json.loads(made.stdout)["token"]
        http = httpx2.Client(timeout=60)

        def rpc(method: str, params: dict[str, Any]) -> Any:
            body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": {
                **params, "_meta": {
                    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
                    "io.modelcontextprotocol/clientCapabilities": {
                        "extensions": {TASKS: {}}}}}}
            named = params.get("name", params.get("taskId"))
            headers = {"Authorization": f"Bearer {token}",
                       "Accept": "application/json, text/event-stream",
                       "MCP-Protocol-Version": "2026-07-28", "Mcp-Method": method,
                       **({"Mcp-Name": named} if isinstance(named, str) else {})}
            return http.post(f"http://127.0.0.1:{port}/mcp/corral", json=body,
                             headers=headers).json()

        def call(arguments: dict[str, Any]) -> str:
            handle = rpc("tools/call", {"name": "chat", "arguments": arguments})["result"]
            while rpc("tasks/get", {"taskId": handle["taskId"]})["result"]["status"] \
                    not in ("completed", "failed", "cancelled"):
                time.sleep(0.02)
            return str(handle["taskId"])

        pid = daemon.proc.pid
        call({"do": "echo"})
        time.sleep(1)
        before = rss(pid)
        ids = [call({"do": "echo", "i": i, "pad": "x" * PAD}) for i in range(CALLS)]
        time.sleep(1)
        after = rss(pid)
        kept = sum(1 for t in ids if "result" in rpc("tasks/get", {"taskId": t}))
        report("gateway_handles", {
            "calls": CALLS, "result_bytes_each": 2 * PAD,
            "rss_before_mib": round(before / 2**20, 1),
            "rss_after_mib": round(after / 2**20, 1),
            "grew_mib": round((after - before) / 2**20, 1), "handles_answering": kept})
    finally:
        daemon.stop()
        cleanup(d)


if __name__ == "__main__":
    main()
