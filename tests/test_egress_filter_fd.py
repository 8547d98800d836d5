"""An egress sandbox's seccomp filter is the daemon's descriptor only while its process
is spawned: bwrap holds its own copy once it runs, so the daemon's is closed at once,
never left to the collector to find with a replica that was removed (the soak, issue 90:
two dozen of them open at a time under churn of egress agents, each a replica kept
alive until a full collection)."""

from __future__ import annotations

import contextlib
import gc
import os
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from .conftest import ROOT
from .daemon_harness import PY, free_port, in_process
from .sandboxprobe import sandbox_refusal
from .test_http_api import SOCKET

HERE = Path(__file__).resolve().parent
pytestmark = pytest.mark.skipif(sandbox_refusal(None) is not None,
                                reason=f"no sandbox here: {sandbox_refusal(None)}")


def filters_open() -> int:
    """This process's descriptors on an egress filter file."""
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # (the listing's own, closed since)
            n += os.readlink(f"/proc/self/fd/{fd}").endswith("/egress.bpf")
    return n


@pytest.fixture
def collector_off() -> Iterator[None]:
    """No cyclic collection while it runs: what is closed is closed by the code."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


async def call(d: Any, method: str, params: dict[str, Any]) -> Any:
    out = await d.dispatcher.call(SOCKET, method, msgspec.json.encode(params))
    return msgspec.json.decode(msgspec.json.encode(out))


@pytest.mark.deadline(240)
async def test_the_filter_is_closed_once_the_sandbox_runs_and_none_outlives_removal(
        tmp_path: Path, collector_off: None) -> None:
    home = tmp_path / "home"
    home.mkdir()
    agents = "".join(textwrap.dedent(f"""
        [agents.box{i}]
        command = ["{PY}", "{HERE}/egress_agent.py"]
        env = {{ PYTHONPATH = "{ROOT}" }}
        cwd = "{home}"
        egress = "gateways"
        stop_timeout = 5.0
        start_timeout = 60.0
    """) for i in range(2))
    toml = f'\n[gateway]\nlisten = "127.0.0.1:{free_port()}"\n'
    before = filters_open()
    async with in_process(tmp_path, agents, toml) as d:
        for i in range(2):
            done = await call(d, "tasks.run", {"agent": f"box{i}", "input": {
                "do": "processes"}})
            assert done["status"] == "succeeded", done
        # two sandboxes running: neither's filter is the daemon's to hold
        assert filters_open() == before
        await call(d, "agents.remove", {"names": ["box0", "box1"]})
        assert filters_open() == before
