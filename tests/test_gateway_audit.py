"""The audit link at the MCP gateway's door (decisions 1190, 1630): an agent replica's
answered `tools/call` at `/mcp` is one row of the audit table, `gateway.call` by `gateway
client NAME#N`, `{"client", "tool", "task"}`, the store's cheaper `call_row` as the worker
link's and the model gateway's answered calls are, and no line of the daemon log; a call
the chain refused keeps its row in the refusal's words, and its log line. The real daemon
in this loop, an agent posting its calls to its attempt's address with its replica's
token (tests/gateway_answering_agent.py), the fixture server over stdio."""

from __future__ import annotations

import textwrap
from pathlib import Path

import msgspec
import pytest

from .conftest import ROOT
from .daemon_harness import PY, in_process
from .test_elicitations import FIXTURES, HERE, finished, submit
from .warmforks import sdk_toml

CALL = {"tool": "echo__test_simple_text"}
pytestmark = pytest.mark.usefixtures("warm_mcp_sdk")


def fleet() -> str:
    return textwrap.dedent(f"""
        [agents.caller]
        command = ["{PY}", "{HERE}/gateway_answering_agent.py"]
        env = {{ PYTHONPATH = "{ROOT}" }}
        tools = ["echo__*"]
        max_tool_calls_per_task = 1

        [mcp_servers.echo]
        command = {sdk_toml(FIXTURES)}
        shared = true

        [gateway]
        listen = "127.0.0.1:0"
    """)


async def test_an_answered_mcp_call_is_a_row_alone_a_refused_one_in_its_words(
        tmp_path: Path) -> None:
    """max_tool_calls_per_task 1: the task's first call at /mcp is answered, the second
    refused by the chain's budget link; two rows in turn, the first `ok` with no log line,
    the second the refusal's words, its log line as before."""
    async with in_process(tmp_path, fleet()) as d:
        task_id = await submit(d, {"calls": [CALL, CALL]}, agent="caller")
        done, output = await finished(d, task_id)
        assert done.status == "succeeded", done
        assert output[0]["result"]["content"][0]["text"] == "This is a simple text response "\
            "for testing.", output
        refusal = output[1]["error"]["message"]
        assert refusal.startswith("tool budget exceeded: "), output
        rows = [(r[1], r[2], r[3], msgspec.json.decode(r[4]), r[5], r[6])
                for r in await d.services.store.audit_log_now(1000)
                if r[3] == "gateway.call"]
        label = rows[0][3]["client"] if rows else None
        assert label is not None and label.startswith("caller#"), rows
        params = {"client": label, "tool": CALL["tool"], "task": task_id}
        assert rows == [(-1, -1, "gateway.call", params, "ok", f"gateway client {label}"),
                        (-1, -1, "gateway.call", params, f"error: {refusal}",
                         f"gateway client {label}")], rows
        log = (tmp_path / "state" / "logs" / "corral.log").read_text()
        said = [line for line in log.splitlines() if "gateway.call" in line]
        shown = msgspec.json.encode(params).decode()
        assert len(said) == 1 and said[0].endswith(
            f"gateway client {label}: gateway.call {shown} -> error: {refusal}"), said
