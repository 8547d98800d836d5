"""An idempotency key was its tenant's, so the task it named could be another caller's: a
`tasks:run`-only token sent another caller's key again and read its task's output (issue
88). A key is its caller's now (decision 1792): the same request with another caller's
key is a task of its own, and a replay answers its outcome only to a caller that may
read tasks, as tasks.get does."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest

from corral import jsonrpc
from corral.daemon.caller import Caller
from corral.daemon.tokens import tokens_of
from corral.jsonrpc import RpcError

from .conftest import PY, ROOT
from .daemon_harness import free_port, in_process

RECORDER = Path(__file__).parent / "recording_agent.py"


def recorder(record: Path) -> str:
    return textwrap.dedent(f"""
        [agents.rec]
        command = ["{PY}", "{RECORDER}"]
        env = {{ PYTHONPATH = "{ROOT}", RECORD = "{record}", WHO = "rec" }}
        stop_timeout = 10.0
    """)


async def post(http: aiohttp.ClientSession, url: str, token: str, body: dict[str, Any],
               key: str, query: str = "") -> tuple[int, Any]:
    async with http.post(f"{url}/tasks{query}", data=msgspec.json.encode(body), headers={
            "Authorization": f"Bearer {token}", "Content-Type": "application/json",
            "Idempotency-Key": key}) as r:
        return r.status, msgspec.json.decode(await r.read())


@pytest.mark.deadline(120)
async def test_a_run_only_token_reads_no_output_by_sending_anothers_key_again(
        tmp_path: Path) -> None:
    """The attack: the owner submits with key `order-1` and reads its output; a
    `tasks:run`-only token of the same tenant sends the same request with the key and
    was answered the owner's output. Now it is a task of its own, whose replay says the
    task and its status alone (the output is read with tasks:read), a keyed `tasks.run`
    needs tasks:read, and a 409 for the key names no task."""
    port = free_port()
    async with in_process(tmp_path, recorder(tmp_path / "record"),
                          f'[http]\nlisten = "127.0.0.1:{port}"\n') as d:
        made = tokens_of(d.services.store)
        owner, _ = await made.create("owner", ["tasks:run", "tasks:read"], None, None)
        runner, _ = await made.create("runner", ["tasks:run"], None, None)
        url = f"http://127.0.0.1:{port}/api/v1"
        asked = {"agent": "rec", "input": {"secret": "the owner's"}}
        async with aiohttp.ClientSession() as http:
            status, first = await post(http, url, owner, asked, "order-1", "?wait=30")
            assert (status, first["status"], first["output"]) == (200, "succeeded",
                                                                  {"by": "rec"})
            status, mine = await post(http, url, runner, asked, "order-1")
            assert status == 202 and mine["task_id"] != first["task_id"], mine
            status, again = await post(http, url, runner, asked, "order-1")
            assert status in (200, 202), again
            assert again == {"task_id": mine["task_id"], "status": again["status"],
                             "replayed": True}
            # the owner's own replay still reads it
            status, own = await post(http, url, owner, asked, "order-1")
            assert own == {**first, "replayed": True}
            # another request with the key: 409, and no task named
            status, body = await post(http, url, runner, {"agent": "rec", "input": 2},
                                      "order-1")
            assert (status, body["detail"]) == (
                409, "idempotency key order-1 was used for another request: send a new key")
            assert first["task_id"] not in msgspec.json.encode(body).decode()
        # a keyed run answers the task's outcome: refused to a run-only caller, the scope
        # named, before anything runs
        run_only = Caller(via="http", token="runner", scopes=frozenset({"tasks:run"}))
        with pytest.raises(RpcError) as e:
            await d.dispatcher.call(run_only, "tasks.run", msgspec.json.encode({
                "agent": "rec", "input": asked["input"], "idempotency_key": "order-1"}))
        assert e.value.code == jsonrpc.FORBIDDEN and "tasks:read" in e.value.message, \
            e.value.message
        await d.dispatcher.call(Caller(via="socket"), "tasks.get", msgspec.json.encode({
            "task_id": mine["task_id"], "wait": True}))
        assert len((tmp_path / "record").read_text().splitlines()) == 2


@pytest.mark.deadline(120)
async def test_a_token_made_again_under_a_revoked_ones_name_holds_none_of_its_keys(
        tmp_path: Path) -> None:
    """A key is its token's, and a token is its identity, not its name (DESIGN 20): a
    token revoked and another made under its name within the keys' 24 h was the same
    holder, so the new one was answered the first one's task for the same request and
    refused `used for another request` for another, and one of another tenant was given
    the first one's answer of a request that makes something else (`POST /agents`),
    replayed before its own limits were judged (decision 1807). Now each is a holder of
    its own."""
    port = free_port()
    async with in_process(tmp_path, recorder(tmp_path / "record") + "\n[tenants.acme]\n",
                          f'[http]\nlisten = "127.0.0.1:{port}"\n') as d:
        made = tokens_of(d.services.store)
        scopes = ["tasks:run", "tasks:read", "agents:write"]
        first, _ = await made.create("ci", scopes, None, None)
        url = f"http://127.0.0.1:{port}/api/v1"
        asked = {"agent": "rec", "input": {"secret": "the first token's"}}
        added = msgspec.json.encode({"agents": {"spy": {"command": ["true"]}},
                                     "check": False})
        async with aiohttp.ClientSession() as http:
            status, theirs = await post(http, url, first, asked, "k-1", "?wait=30")
            assert (status, theirs["output"]) == (200, {"by": "rec"}), theirs
            assert (await post(http, url, first, {"agent": "rec", "input": 3}, "k-3"))[0] == 202
            async with http.post(f"{url}/agents", data=added, headers={
                    "Authorization": f"Bearer {first}", "Idempotency-Key": "k-2"}) as r:
                assert r.status == 200, await r.read()
            await made.revoke("ci")
            second, _ = await made.create("ci", scopes, None, None)
            status, mine = await post(http, url, second, asked, "k-1")
            assert status == 202 and mine["task_id"] != theirs["task_id"], mine
            assert "replayed" not in mine, mine
            status, other = await post(http, url, second, {"agent": "rec", "input": 2}, "k-3")
            assert status == 202 and "replayed" not in other, other
            await made.revoke("ci")
            third, _ = await made.create("ci", scopes, None, None, "acme")
            async with http.post(f"{url}/agents", data=added, headers={
                    "Authorization": f"Bearer {third}", "Idempotency-Key": "k-2"}) as r:
                assert "Idempotent-Replayed" not in r.headers, (r.status, await r.read())
