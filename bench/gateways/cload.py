"""bench/gateways' C load generator (loadgen.c) from Python: compiled on first use, its
spec written as the key=value lines it reads, and the MCP session it calls on opened
here first (loadgen.py's own code), handed to it as headers and the tool's name.

    command(spec, work)    argv of one run, spec as loadgen.py takes it; the figures
                           go to argv[-1], the same JSON loadgen.py writes
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from . import loadgen

SOURCE = Path(__file__).resolve().parent / "loadgen.c"


def binary() -> Path:
    """loadgen.c compiled into a cache outside the tree, keyed by the source's hash (a
    changed source is a new binary; two runs compiling at once each rename theirs)."""
    src = SOURCE.read_bytes()
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "corral-bench"
    exe = cache / f"loadgen-{hashlib.sha256(src).hexdigest()[:16]}"
    if not exe.exists():
        cache.mkdir(parents=True, exist_ok=True)
        tmp = exe.with_name(f"{exe.name}.{os.getpid()}.tmp")
        r = subprocess.run(["gcc", "-O2", "-Wall", "-Werror", "-o", str(tmp), str(SOURCE)],
                           capture_output=True, text=True)
        if r.returncode:
            raise RuntimeError(f"loadgen.c did not compile: {r.stderr[-2000:]}")
        os.replace(tmp, exe)
    return exe


async def _mcp_session(spec: dict[str, Any]) -> tuple[dict[str, str], str]:
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        return await loadgen.mcp_session(session, spec)


def spec_lines(spec: dict[str, Any]) -> str:
    """The C program's spec: the target, each call's headers and body template
    (`{{id}}`, `{{n}}`: the call's JSON-RPC id and number)."""
    url = urlsplit(spec["url"])
    if spec["kind"] == "model":
        headers = {"Content-Type": "application/json", **spec["headers"]}
        body = loadgen.model_body(spec).decode()
    else:
        headers, tool = asyncio.run(_mcp_session(spec))
        body = json.dumps(loadgen.tools_call(tool, "@ID@", "hi {{n}}")).replace(
            '"@ID@"', "{{id}}")
    fields = [("host", url.hostname), ("port", url.port), ("path", url.path or "/"),
              *(("header", f"{k}: {v}") for k, v in headers.items()),
              ("body", body), ("kind", spec["kind"]), ("stream", int(bool(spec.get("stream")))),
              ("n", spec["n"]), ("c", spec["c"]), ("warmup", spec["warmup"]),
              ("seconds", spec["seconds"])]
    for key, value in fields:
        if "\n" in str(value) or "\r" in str(value):
            raise ValueError(f"loadgen.c's {key} cannot hold a line break: {value!r}")
    return "".join(f"{k}={v}\n" for k, v in fields)


def command(spec: dict[str, Any], work: Path) -> list[str]:
    (work / "spec").write_text(spec_lines(spec))
    return [str(binary()), str(work / "spec"), str(work / "out.json")]
