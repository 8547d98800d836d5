"""A run's step outputs are the state database's, not the daemon's memory (issue 52,
item 2; decision 444): `runs.get` reads them back a page at a time, a page ending once
its outputs pass 4 MiB, `steps_next` the offset of the next, so every item's output is
read whole across pages; a run's output past the same bound is not sent (its size is),
and its step's pages give it; the graph says where each step is whatever the page."""

from __future__ import annotations

import json
import textwrap
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from corral import jsonrpc
from corral.daemon.workflows.handlers import MAX_OUTPUT_SHOWN
from corral.jsonrpc import RpcError

from .daemon_harness import PY, in_process
from .test_http_api import SOCKET, Api

ROOT = Path(__file__).resolve().parent.parent
SIZE = 512 * 1024
ITEMS = 12
AGENT = """
from corral.worker import run

def handle(inp, ctx):
    return "x" * int(inp["bytes"]) + str(inp.get("i"))

run(handle)
"""


def fleet(tmp: Path) -> str:
    (tmp / "big.py").write_text(AGENT)
    steps = textwrap.dedent("""
        [[workflows.{name}.steps]]
        name = "each"
        agent = "big"
        map = "$input.items"
        concurrency = 4
        input = {{ bytes = "$input.bytes", i = "$index" }}
    """)
    return textwrap.dedent(f"""
        [agents.big]
        command = ["{PY}", "{tmp}/big.py"]
        env = {{ PYTHONPATH = "{ROOT}" }}
        replicas = 2
        [http]
        listen = "127.0.0.1:0"
        [workflows.then]
    """) + steps.format(name="then") + textwrap.dedent("""
        [[workflows.then.steps]]
        name = "done"
        agent = "big"
        input = { bytes = 2 }
        [workflows.last]
    """) + steps.format(name="last")


def item(i: int) -> str:
    return "x" * SIZE + str(i)


@asynccontextmanager
async def serving(tmp: Path) -> AsyncIterator[Api]:
    import aiohttp

    async with in_process(tmp, fleet(tmp)) as d, aiohttp.ClientSession() as session:
        api = Api(d, session)
        await api.token("op", "admin")
        yield api


async def ran(api: Api, name: str) -> Any:
    view = await api.d.dispatcher.call(SOCKET, "workflows.run", {
        "name": name, "input": {"items": list(range(ITEMS)), "bytes": SIZE}, "wait": 120})
    assert view.status == "succeeded", view
    return view


@pytest.mark.deadline(180)
async def test_a_runs_outputs_are_read_back_a_page_at_a_time(tmp_path: Path) -> None:
    async with serving(tmp_path) as api:
        run = await ran(api, "then")
        base = f"/runs/{run.run_id}"
        # the first page: the map's own row, then its items while their outputs fit
        status, first, _ = await api.ask("GET", base, "op")
        fit = MAX_OUTPUT_SHOWN // len(json.dumps(item(0)))
        assert status == 200
        assert [(s["step"], s["item"]) for s in first["steps"]] == [
            ("each", None), *[("each", i) for i in range(fit)]]
        assert first["steps_next"] == fit + 1
        assert [s["output"] for s in first["steps"][1:]] == [item(i) for i in range(fit)]
        assert (first["output"], first["output_bytes"]) == ("xxNone", 8)
        # the graph says where each step is, whatever the page holds
        assert [(g["step"], g["status"], g["items"]) for g in first["graph"]] == [
            ("each", "succeeded", {"succeeded": ITEMS}), ("done", "succeeded", {})]
        # the next pages, to the end: every output whole, each once
        rows, offset = first["steps"], first["steps_next"]
        while offset is not None:
            status, page, _ = await api.ask("GET", f"{base}?offset={offset}", "op")
            assert status == 200 and page["steps"], page
            rows += page["steps"]
            offset = page.get("steps_next")
        assert [(s["step"], s["item"], s["output"]) for s in rows] == [
            ("each", None, None), *[("each", i, item(i)) for i in range(ITEMS)],
            ("done", None, "xxNone")]
        # without outputs, every row in one page; a step's rows alone
        status, bare, _ = await api.ask("GET", f"{base}?outputs=false", "op")
        assert (len(bare["steps"]), {s["output"] for s in bare["steps"]}) == (ITEMS + 2,
                                                                              {None})
        assert "steps_next" not in bare
        status, done, _ = await api.ask("GET", f"{base}?step=done", "op")
        assert [(s["step"], s["output"]) for s in done["steps"]] == [("done", "xxNone")]
        status, said, _ = await api.ask("GET", f"{base}?step=nope", "op")
        assert (status, said["detail"]) == (400, f"run {run.run_id} has no step nope (its "
                                                 "steps: each, done)")


@pytest.mark.deadline(180)
async def test_a_runs_output_past_a_page_is_its_size_and_its_steps_pages(
        tmp_path: Path) -> None:
    async with serving(tmp_path) as api:
        run = await ran(api, "last")
        whole = json.dumps([item(i) for i in range(ITEMS)], separators=(",", ":"))
        assert (run.output, run.output_bytes) == (None, len(whole))
        got = await api.d.dispatcher.call(SOCKET, "runs.get", {
            "run_id": run.run_id, "step": "each", "limit": 3})
        assert ([s.item for s in got.steps], got.steps_next) == ([None, 0, 1], 3)
        with pytest.raises(RpcError) as bad:
            await api.d.dispatcher.call(SOCKET, "runs.get", {"run_id": run.run_id,
                                                             "limit": 10_001})
        assert bad.value.code == jsonrpc.INVALID_PARAMS
