"""A task's `tags` (an option of corral/taskoptions.py, issue 53 item 1's proof that an
option is one field): given on the CLI, the socket and REST, shown by `corral task`,
`corral tasks`, tasks.get and GET /tasks/ID, filtered by `--tag`, `tag` and `?tag=`, kept
across a restart; and refused past its bounds with the bound's name, nothing accepted."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest

from .daemon_harness import in_process, running_daemon, shared_tmpdir, sleeper
from .test_http_api import Api
from .test_tokens import cli
from .test_ui import chromium_page, needs_chromium

HTTP = '[http]\nlisten = "127.0.0.1:0"\n'
ECHO = '{"do": "echo"}'


async def rpc(d: Any, method: str, params: dict[str, Any]) -> tuple[Any, Any]:
    """One JSON-RPC call on the daemon's control socket: (result, error)."""
    reader, writer = await asyncio.open_unix_connection(str(d.services.socket_path),
                                                        limit=2**24)
    try:
        writer.write(msgspec.json.encode({"jsonrpc": "2.0", "id": 1, "method": method,
                                          "params": params}) + b"\n")
        await writer.drain()
        while True:
            answer = msgspec.json.decode(await asyncio.wait_for(reader.readline(), 60))
            if answer.get("id") == 1:
                return answer.get("result"), answer.get("error")
    finally:
        writer.close()


async def ids(d: Any, *args: str) -> list[str]:
    """`corral tasks ARGS --json`: the listed tasks' ids, oldest first."""
    rc, out, err = await cli(d, "tasks", *args, "--json")
    assert rc == 0, err
    return [t["task_id"] for t in json.loads(out)["tasks"]]


@pytest.mark.deadline(180)
async def test_tags_are_shown_filtered_on_every_surface_and_kept_across_a_restart(
        tmp_path: Path) -> None:
    async with in_process(tmp_path, sleeper("w"), HTTP) as d, \
            aiohttp.ClientSession() as http:
        api = Api(d, http)
        await api.token("t", "tasks:run", "tasks:read")
        rc, out, err = await cli(d, "submit", "w", "--input", ECHO, "--tag", "env=prod",
                                 "--tag", "team/a,nightly")
        assert rc == 0, err
        prod = out.strip()
        plain, error = await rpc(d, "tasks.submit", {"agent": "w", "input": {"do": "echo"}})
        assert error is None
        status, body, _ = await api.ask("POST", "/tasks?wait=30", "t", {
            "agent": "w", "input": {"do": "echo"}, "tags": ["env=dev"]})
        assert status == 200, body
        dev = body["task_id"]
        for task_id in (prod, plain["task_id"]):
            rc, out, err = await cli(d, "task", task_id, "--wait")
            assert rc == 0, err
        # shown: corral task, corral tasks, tasks.get, GET /tasks/ID
        rc, out, err = await cli(d, "task", prod)
        assert 'tags: ["env=prod", "team/a", "nightly"]\n' in out
        rc, out, err = await cli(d, "tasks")
        head, *rows = out.splitlines()
        assert head.split()[-1] == "TAGS"
        assert [r.split()[-1] for r in rows] == ["env=prod,team/a,nightly", "-", "env=dev"]
        got, _ = await rpc(d, "tasks.get", {"task_id": dev})
        assert got["options"] == {"tags": ["env=dev"]}
        status, body, _ = await api.ask("GET", f"/tasks/{prod}", "t")
        assert (status, body["options"]) == (200, {"tags": ["env=prod", "team/a", "nightly"]})
        # filtered: --tag, tasks.list's tag, ?tag=
        assert await ids(d, "--tag", "team/a") == [prod]
        listed, _ = await rpc(d, "tasks.list", {"tag": "env=dev"})
        assert [t["task_id"] for t in listed["tasks"]] == [dev]
        status, body, _ = await api.ask("GET", "/tasks?tag=nightly", "t")
        assert (status, [t["task_id"] for t in body["tasks"]]) == (200, [prod])
        status, body, _ = await api.ask("GET", "/tasks?tag=none", "t")
        assert (status, body["tasks"]) == (200, [])
    # the next daemon reads them from the journal
    async with in_process(tmp_path, sleeper("w"), HTTP) as d:
        assert await ids(d, "--tag", "env=prod") == [prod]
        assert await ids(d) == [prod, plain["task_id"], dev]
        rc, out, err = await cli(d, "task", dev, "--json")
        assert json.loads(out)["options"] == {"tags": ["env=dev"]}


TOO_MANY = [f"t{i}" for i in range(17)]
REFUSED = [
    (TOO_MANY, "17 tags, more than max_tags (16)"),
    (["x" * 65], "a tag of 65 characters, more than max_tag_length (64)"),
    (["two words"], "tag 'two words' is not one: letters, digits and . _ : = / @ + - "
                    "(a letter or a digit first)"),
    ([""], "tag '' is not one: letters, digits and . _ : = / @ + - (a letter or a digit "
           "first)"),
]


@pytest.mark.deadline(180)
async def test_tags_past_their_bounds_are_refused_by_the_bounds_name_and_nothing_kept(
        tmp_path: Path) -> None:
    async with in_process(tmp_path, sleeper("w"), HTTP) as d, \
            aiohttp.ClientSession() as http:
        api = Api(d, http)
        await api.token("t", "tasks:run", "tasks:read")
        for tags, said in REFUSED:
            flags = [x for tag in tags for x in ("--tag", tag)]
            rc, out, err = await cli(d, "submit", "w", "--input", ECHO, *flags)
            assert (rc, err.splitlines()[-1]) == (2, f"Error: Invalid value: {said}"), tags
            result, error = await rpc(d, "tasks.submit", {"agent": "w", "tags": tags})
            assert (result, error["message"]) == (None, f"invalid params: {said}")
            status, body, _ = await api.ask("POST", "/tasks", "t", {"agent": "w",
                                                                    "tags": tags})
            assert (status, body["detail"]) == (400, f"invalid params: {said}")
        assert await ids(d) == []
        # at the bounds: taken
        rc, out, err = await cli(d, "submit", "w", "--input", ECHO,
                                 *[x for i in range(16) for x in ("--tag", f"{i:x}" * 64)])
        assert rc == 0, err
        assert await ids(d, "--tag", "f" * 64) == [out.strip()]


@needs_chromium
@pytest.mark.timeout(180)
def test_the_dashboards_task_view_shows_the_tags() -> None:
    from playwright.sync_api import expect

    with running_daemon(shared_tmpdir(), sleeper("w"), extra=HTTP) as d:
        r = d.cli("submit", "w", "--input", ECHO, "--tag", "env=prod", "--tag", "nightly")
        assert r.returncode == 0, r.stderr
        task_id = r.stdout.strip()
        assert d.json("task", task_id, "--wait")["status"] == "succeeded"
        link = d.cli("ui").stdout.strip()
        with chromium_page() as page:
            page.goto(link)
            page.goto(link.split("/login")[0] + f"/#/task/{task_id}")
            expect(page.locator("#task h2").first).to_contain_text(task_id)
            expect(page.locator("#task-options")).to_contain_text(
                'Options as submitted: tags = ["env=prod","nightly"]')
