"""Time from start to every real MCP server serving, cold and warm npx/uvx caches.

corral: `corral daemon` launch -> READY=1, with the eight servers of
tests/test_mcp_servers.py as `start = "eager"` servers run the way their READMEs say
(`npx -y PKG@VERSION`, `uvx PKG@VERSION`, FastMCP 1.x through `uv run --with mcp==1.30.0`);
READY=1 comes when every eager server is serving (checked with `corral mcp status`).
Peer: the official MCP SDK's `Client` (mode "auto", the same probe rules) connecting to
the same eight servers concurrently, from its start to the last one connected.

Cold: each run gets empty npm and uv caches (packages are downloaded from the registries);
warm: caches filled by a previous run. Usage:

    .venv/bin/python -m bench.bench_mcp_start [--quick]   -> bench/results/mcp_start.json
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .harness import BIN, ENV, ROOT, CorralDaemon, median, report, workdir

NPM_VERSION = "2026.8.31"
FASTMCP1 = ROOT / "tests" / "servers" / "fastmcp1_server.py"


def servers(scratch: Path) -> dict[str, list[str]]:
    files = scratch / "files"
    repo = scratch / "repo"
    files.mkdir(exist_ok=True)
    if not repo.exists():
        subprocess.run(["git", "init", "-q", str(repo)], check=True)
    npx = ["npx", "-y"]
    return {
        "fs": [*npx, f"@modelcontextprotocol/server-filesystem@{NPM_VERSION}", str(files)],
        "memory": [*npx, f"@modelcontextprotocol/server-memory@{NPM_VERSION}"],
        "think": [*npx, f"@modelcontextprotocol/server-sequential-thinking@{NPM_VERSION}"],
        "ev": [*npx, f"@modelcontextprotocol/server-everything@{NPM_VERSION}", "stdio"],
        "time": [str(BIN / "uvx"), "mcp-server-time@2026.10.19"],
        "git": [str(BIN / "uvx"), "mcp-server-git@2026.10.19", "--repository", str(repo)],
        "fetch": [str(BIN / "uvx"), "mcp-server-fetch@2026.10.24"],
        "fm1": [str(BIN / "uv"), "run", "--no-project", "--with", "mcp==1.30.0", "python",
                str(FASTMCP1)],
    }


def cache_env(caches: Path) -> dict[str, str]:
    return {"npm_config_cache": str(caches / "npm"), "UV_CACHE_DIR": str(caches / "uv"),
            "UV_PYTHON_DOWNLOADS": "never", "UV_PYTHON": "python3",
            "npm_config_update_notifier": "false"}


def corral_run(scratch: Path, caches: Path) -> float:
    env = ", ".join(f"{k} = {json.dumps(v)}" for k, v in cache_env(caches).items())
    tables = "".join(
        f"\n[mcp_servers.{name}]\ncommand = {json.dumps(argv)}\nstart = \"eager\"\n"
        f"start_timeout = 120.0\nenv = {{ {env} }}\n"
        for name, argv in servers(scratch).items())
    d = CorralDaemon(workdir("mcpstart"), tables)
    try:
        took = d.start()
        st = subprocess.run([str(BIN / "corral"), "--socket", str(d.sock), "mcp", "status",
                             "--json"], capture_output=True, text=True, env=ENV, check=True)
        states = {s["name"]: s["state"] for s in json.loads(st.stdout)["mcp_servers"]}
        bad = {n: s for n, s in states.items() if s != "ready"}
        if bad:
            raise RuntimeError(f"not serving at READY=1: {bad}")
        return took
    finally:
        d.stop()


async def sdk_connect_all(scratch: Path, caches: Path) -> float:
    from mcp import Client
    from mcp.client.stdio import StdioServerParameters

    env = {**os.environ, **cache_env(caches)}
    argvs = list(servers(scratch).values())
    started = time.perf_counter()
    connected: list[float] = []
    done = asyncio.Event()

    # each client is entered and left in its own task (anyio's cancel scopes need that)
    async def one(argv: list[str]) -> None:
        params = StdioServerParameters(command=argv[0], args=argv[1:], env=env)
        async with Client(params, read_timeout_seconds=120):
            connected.append(time.perf_counter() - started)
            if len(connected) == len(argvs):
                done.set()
            await done.wait()

    await asyncio.gather(*(one(a) for a in argvs))
    return max(connected)


def sdk_run(scratch: Path, caches: Path) -> float:
    # its own process, as corral's daemon is, so neither shares the other's imports
    out = subprocess.run(
        [sys.executable, "-m", "bench.bench_mcp_start", "--sdk-once", str(scratch),
         str(caches)], capture_output=True, text=True, cwd=ROOT, env=ENV, check=True,
        timeout=600)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    if "--sdk-once" in sys.argv:
        i = sys.argv.index("--sdk-once")
        print(asyncio.run(sdk_connect_all(Path(sys.argv[i + 1]), Path(sys.argv[i + 2]))))
        return
    quick = "--quick" in sys.argv
    warm_runs = 2 if quick else 3
    cold_runs = 1
    scratch = workdir("mcpstart-scratch")
    result: dict[str, Any] = {"loadavg_before": Path("/proc/loadavg").read_text().split()[:3]}
    runs: dict[str, list[float]] = {"corral_cold": [], "sdk_cold": [], "corral_warm": [],
                                    "sdk_warm": []}
    warm = workdir("mcpstart-warm")
    for _ in range(cold_runs):  # alternate who goes first; each cold run has fresh caches
        for who, fn in (("corral", corral_run), ("sdk", sdk_run)):
            caches = workdir("mcpstart-cold")
            runs[f"{who}_cold"].append(fn(scratch, caches))
            shutil.rmtree(caches, ignore_errors=True)
    sdk_run(scratch, warm)  # fill the warm caches
    for i in range(warm_runs):
        order = (("corral", corral_run), ("sdk", sdk_run))
        for who, fn in order if i % 2 == 0 else order[::-1]:
            runs[f"{who}_warm"].append(fn(scratch, warm))
    result["runs"] = runs
    result["median_s"] = {k: round(median(v), 3) for k, v in runs.items()}
    result["ratio_corral_over_sdk"] = {
        c: round(median(runs[f"corral_{c}"]) / median(runs[f"sdk_{c}"]), 2)
        for c in ("cold", "warm")}
    result["loadavg_after"] = Path("/proc/loadavg").read_text().split()[:3]
    report("mcp_start", result)


if __name__ == "__main__":
    main()
