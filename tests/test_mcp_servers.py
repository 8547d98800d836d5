"""The MCP servers people install today, at pinned versions (installed by test.sh), each
started by corral, listed and called with right and wrong arguments, and the results
compared with the official Python SDK client's for the same calls.

npm: server-filesystem (directory arguments, and roots), server-memory, server-sequential-
thinking, server-everything. PyPI through `uvx` as their READMEs say: mcp-server-time,
mcp-server-git, mcp-server-fetch (SDK 2.x servers: slow to start, 2026-07-28). A FastMCP
1.x server (mcp<2, through `uv run --with`) whose sync tool blocks its loop for 8 s.

The servers start once for the module, together, as a daemon would start them.
"""

from __future__ import annotations

import asyncio
import base64
import importlib.util
import json
import os
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from corral.jsonrpc import RpcError
from corral.supervisor import McpServerSpec, Supervisor
from corral.supervisor.mcpserver import McpServerReplica

from .conftest import ROOT, live_children

NPM = ROOT / ".npm-test" / "node_modules" / "@modelcontextprotocol"
UV = ROOT / ".venv" / "bin" / "uv"
UVX = ROOT / ".venv" / "bin" / "uvx"
FASTMCP1 = Path(__file__).parent / "servers" / "fastmcp1_server.py"
# pinned here and in test.sh (which installs them and warms the uv cache)
NPM_VERSION = "2026.8.31"
TIME, GIT, FETCH, MCP1 = ("mcp-server-time@2026.10.19", "mcp-server-git@2026.10.19",
                          "mcp-server-fetch@2026.10.24", "mcp==1.30.0")
# uv's cache inside the checkout, filled by test.sh; offline: no test reaches the network
UV_ENV = {"UV_CACHE_DIR": str(ROOT / ".uv-cache"), "UV_PYTHON_DOWNLOADS": "never",
          "UV_PYTHON": "python3", "UV_OFFLINE": "1"}


def missing() -> str | None:
    for pkg in ("server-filesystem", "server-memory", "server-sequential-thinking",
                "server-everything"):
        package = NPM / pkg / "package.json"
        if not package.exists() or f'"version": "{NPM_VERSION}"' not in package.read_text():
            return f"@modelcontextprotocol/{pkg}@{NPM_VERSION} is not installed (test.sh)"
    if not UVX.exists() or not (ROOT / ".uv-cache").is_dir():
        return "uv and its warmed cache are not installed (test.sh)"
    return None


pytestmark = [pytest.mark.skipif(missing() is not None, reason=missing() or ""),
              pytest.mark.asyncio(loop_scope="module")]


def node(pkg: str, *args: str) -> list[str]:
    return ["node", str(NPM / pkg / "dist" / "index.js"), *args]


class World:
    """The servers' scratch places and the commands that start them."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.files = tmp / "files"
        self.rooted = tmp / "rooted"
        self.repo = tmp / "repo"
        for d in (self.files, self.rooted):
            d.mkdir()
        (self.files / "hello.txt").write_text("hello from corral\n")
        (self.rooted / "inside.txt").write_text("inside the root\n")
        # a 7 MB image: base64 in content and in structuredContent make a ~19 MB line,
        # over the 16 MiB a worker may send
        self.image = os.urandom(7 * 1024 * 1024)
        (self.files / "big.png").write_bytes(self.image)
        self.repo.mkdir()
        git = ["git", "-C", str(self.repo), "-c", "user.name=t", "-c", "user.email=t@t"]
        subprocess.run([*git, "init", "-q", "-b", "main"], check=True)
        (self.repo / "a.txt").write_text("one\n")
        subprocess.run([*git, "add", "a.txt"], check=True)
        subprocess.run([*git, "commit", "-q", "-m", "first"], check=True)
        (self.repo / "a.txt").write_text("two\n")
        self.memory = tmp / "memory.jsonl"
        uv_env = {**UV_ENV}
        self.commands: dict[str, tuple[list[str], dict[str, str]]] = {
            "fs": (node("server-filesystem", str(self.files)), {}),
            "fsroots": (node("server-filesystem"), {}),
            "memory": (node("server-memory"), {"MEMORY_FILE_PATH": str(self.memory)}),
            "think": (node("server-sequential-thinking"),
                      {"DISABLE_THOUGHT_LOGGING": "true"}),
            "ev": (node("server-everything", "stdio"), {}),
            "time": ([str(UVX), TIME, "--local-timezone", "UTC"], uv_env),
            "git": ([str(UVX), GIT, "--repository", str(self.repo)], uv_env),
            "fetch": ([str(UVX), FETCH], uv_env),
            "fm1": ([str(UV), "run", "--no-project", "--with", MCP1, "python",
                     str(FASTMCP1)], uv_env),
        }

    def spec(self, name: str) -> McpServerSpec:
        command, env = self.commands[name]
        return McpServerSpec(
            name=name, command=command, env=env, start="eager", start_timeout=60.0,
            timeout=30.0, stop_timeout=2.0,
            roots=[str(self.rooted)] if name == "fsroots" else [])


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return World(tmp_path_factory.mktemp("servers"))


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def sup(world: World) -> AsyncIterator[Supervisor]:
    s = Supervisor(heartbeat_interval=0.2, heartbeat_timeout=2.0)
    s.open()
    try:
        for name in world.commands:
            s.add_mcp_server(world.spec(name))
        yield s
    finally:
        await s.close(graceful=False)
        children = live_children()
        for p in children:
            p.kill()
        assert not children, f"processes left: {[(p.pid, p.cmdline()) for p in children]}"


async def serving(sup: Supervisor, name: str) -> McpServerReplica:
    inst: McpServerReplica = await sup.mcp.instance(sup.mcp.server(name), None)
    return inst


def norm(result: Any) -> Any:
    """A result as the SDK's model_dump gives it and as the server sent it, alike: the
    SDK fills in defaults (resultType, isError, and the caching hints ttlMs and
    cacheScope)."""
    if isinstance(result, dict):
        out = {k: v for k, v in result.items()
               if k not in ("resultType", "ttlMs", "cacheScope")}
        if "content" in out:
            out.setdefault("isError", False)
        return out
    return result


async def sdk(world: World, name: str, calls: list[tuple[str, Any]]) -> list[Any]:
    """The same calls through the official SDK client (mode "auto": its probe rules)."""
    from mcp import Client
    from mcp.client.stdio import StdioServerParameters

    command, env = world.commands[name]
    params = StdioServerParameters(command=command[0], args=command[1:],
                                   env={**os.environ, **env})
    out: list[Any] = []
    try:
        async with Client(params, read_timeout_seconds=60) as client:
            for method, args in calls:
                if method == "call":
                    r: Any = await client.call_tool(*args)
                elif method == "read":
                    r = await client.read_resource(args)
                elif method == "list_prompts":
                    r = await client.list_prompts()
                elif method == "get_prompt":
                    r = await client.get_prompt(*args)
                else:
                    r = await client.list_tools()
                out.append(norm(r.model_dump(mode="json", by_alias=True, exclude_none=True)))
    except* ProcessLookupError:
        # the SDK's stdio teardown on uvloop, under load: the server exits between the
        # SDK's last wait and its close(), and uvloop's close() then fails to signal it.
        # What is compared was answered before; every answer must be in hand.
        assert len(out) == len(calls), out
    return out


# -- every server serves --------------------------------------------------------------------
async def test_every_server_comes_up_on_its_revision_without_a_restart(
        sup: Supervisor) -> None:
    insts = dict(zip(list(sup.mcp.servers),
                     await asyncio.gather(*(serving(sup, n) for n in sup.mcp.servers)),
                     strict=True))
    versions = {n: i.client.version for n, i in insts.items()}
    assert versions == {"fs": "2025-11-25", "fsroots": "2025-11-25", "memory": "2025-11-25",
                        "think": "2025-11-25", "ev": "2025-11-25", "time": "2026-07-28",
                        "git": "2026-07-28", "fetch": "2026-07-28", "fm1": "2025-11-25"}
    assert {n: i.restarts for n, i in insts.items()} == dict.fromkeys(insts, 0)
    tools = await sup.mcp.list_tools()
    names = {t["name"] for t in tools}
    assert {"fs__read_text_file", "memory__read_graph", "think__sequentialthinking",
            "time__convert_time", "git__git_status", "fetch__fetch", "fm1__block",
            "ev__simulate-research-query"} <= names


# -- filesystem -----------------------------------------------------------------------------
async def test_filesystem_with_directory_arguments_matches_the_sdk(
        sup: Supervisor, world: World) -> None:
    await serving(sup, "fs")
    path = str(world.files / "hello.txt")
    ok = await sup.mcp.call("fs__read_text_file", {"path": path})
    outside = await sup.mcp.call("fs__read_text_file", {"path": "/etc/hostname"})
    wrong = await sup.mcp.call("fs__read_text_file", {"nopath": 1})
    assert ok["content"][0]["text"] == "hello from corral\n"
    assert outside["isError"] is True and "outside allowed directories" in \
        outside["content"][0]["text"]
    assert wrong["isError"] is True
    theirs = await sdk(world, "fs", [("call", ("read_text_file", {"path": path})),
                                     ("call", ("read_text_file", {"path": "/etc/hostname"})),
                                     ("call", ("read_text_file", {"nopath": 1}))])
    assert [norm(ok), norm(outside), norm(wrong)] == theirs


async def test_filesystem_without_directories_serves_the_configured_roots(
        sup: Supervisor, world: World) -> None:
    inst = await serving(sup, "fsroots")
    assert inst.client.client_capabilities() == {"roots": {"listChanged": True}}
    allowed = await sup.mcp.call("fsroots__list_allowed_directories", {})
    assert str(world.rooted.resolve()) in allowed["content"][0]["text"]
    res = await sup.mcp.call("fsroots__read_text_file",
                             {"path": str(world.rooted / "inside.txt")})
    assert res["content"][0]["text"] == "inside the root\n"


async def test_a_7_mb_image_through_read_media_file(sup: Supervisor, world: World) -> None:
    inst = await serving(sup, "fs")
    res = await sup.mcp.call("fs__read_media_file", {"path": str(world.files / "big.png")})
    image = res["content"][0]
    assert (image["type"], image["mimeType"]) == ("image", "image/png")
    assert base64.b64decode(image["data"]) == world.image
    assert inst.state.value == "ready" and inst.garbage_lines == 0


# -- memory, sequential thinking ------------------------------------------------------------
async def test_memory_tools_and_resource(sup: Supervisor, world: World) -> None:
    await serving(sup, "memory")
    created = await sup.mcp.call("memory__create_entities", {"entities": [
        {"name": "otter", "entityType": "animal", "observations": ["swims"]}]})
    assert created.get("isError") is not True
    graph = await sup.mcp.call("memory__read_graph", {})
    assert graph["structuredContent"]["entities"][0]["name"] == "otter"
    wrong = await sup.mcp.call("memory__create_entities", {"entities": "otter"})
    assert wrong["isError"] is True
    resources = await sup.mcp.list_resources(server="memory")
    assert resources and all(r["server"] == "memory" for r in resources)
    read = await sup.mcp.read_resource("memory", resources[0]["uri"])
    assert "otter" in read["contents"][0]["text"]
    theirs = await sdk(world, "memory", [("call", ("read_graph", {})),
                                         ("read", resources[0]["uri"]),
                                         ("call", ("create_entities", {"entities": "otter"}))])
    assert theirs == [norm(graph), norm(read), norm(wrong)]


async def test_sequential_thinking(sup: Supervisor, world: World) -> None:
    await serving(sup, "think")
    args = {"thought": "first", "nextThoughtNeeded": False, "thoughtNumber": 1,
            "totalThoughts": 1}
    res = await sup.mcp.call("think__sequentialthinking", args)
    assert res.get("isError") is not True
    wrong = await sup.mcp.call("think__sequentialthinking", {"thought": 3})
    assert wrong["isError"] is True
    theirs = await sdk(world, "think", [("call", ("sequentialthinking", args)),
                                        ("call", ("sequentialthinking", {"thought": 3}))])
    assert theirs == [norm(res), norm(wrong)]


# -- server-everything: resources, prompts, progress, tasks, completion ---------------------
async def test_everything_resources_prompts_and_completion(
        sup: Supervisor, world: World) -> None:
    await serving(sup, "ev")
    resources = await sup.mcp.list_resources(server="ev")
    templates = await sup.mcp.list_resource_templates(server="ev")
    assert resources and templates
    first = await sup.mcp.read_resource("ev", resources[0]["uri"])
    assert first["contents"][0]["uri"] == resources[0]["uri"]
    prompts = await sup.mcp.list_prompts(server="ev")
    names = [p["name"] for p in prompts]
    assert "ev__simple-prompt" in names
    simple = await sup.mcp.get_prompt("ev__simple-prompt", {})
    with pytest.raises(RpcError) as err:
        await sup.mcp.get_prompt("ev__no-such-prompt", {})
    assert err.value.code == -32602 or "not found" in err.value.message.lower()
    args_prompt = next(p for p in prompts if p.get("arguments"))
    argument = args_prompt["arguments"][0]["name"]
    done = await sup.mcp.complete(
        "ev", {"type": "ref/prompt", "name": args_prompt["name"].split("__", 1)[1]},
        {"name": argument, "value": ""})
    assert isinstance(done["completion"]["values"], list)
    theirs = await sdk(world, "ev", [("read", resources[0]["uri"]),
                                     ("get_prompt", ("simple-prompt", {}))])
    assert theirs == [norm(first), norm(simple)]


async def test_everything_task_augmented_tool_is_called_as_a_task(sup: Supervisor) -> None:
    inst = await serving(sup, "ev")
    tool = inst.client.tool("simulate-research-query")
    assert tool is not None and tool["execution"] == {"taskSupport": "required"}
    res = await sup.mcp.call("ev__simulate-research-query", {"topic": "otters"})
    assert res.get("isError") is not True, res
    assert "otters" in json.dumps(res)


async def test_everything_structured_content_matches_its_output_schema(
        sup: Supervisor, world: World) -> None:
    await serving(sup, "ev")
    res = await sup.mcp.call("ev__get-structured-content", {"location": "New York"})
    assert res.get("isError") is not True and "temperature" in res["structuredContent"]


# -- the uvx servers (SDK 2.x, 2026-07-28) --------------------------------------------------
async def test_time_server_matches_the_sdk(sup: Supervisor, world: World) -> None:
    await serving(sup, "time")
    args = {"source_timezone": "UTC", "time": "12:00", "target_timezone": "Asia/Tokyo"}
    bad = {**args, "source_timezone": "Nope/Zone"}
    ok = await sup.mcp.call("time__convert_time", args)
    wrong = await sup.mcp.call("time__convert_time", bad)
    assert ok["structuredContent"]["time_difference"] == "+9.0h"
    assert wrong["isError"] is True and "Invalid timezone" in wrong["content"][0]["text"]
    theirs = await sdk(world, "time", [("call", ("convert_time", args)),
                                       ("call", ("convert_time", bad))])
    assert theirs == [norm(ok), norm(wrong)]


async def test_git_server_on_a_scratch_repository(sup: Supervisor, world: World) -> None:
    await serving(sup, "git")
    status = await sup.mcp.call("git__git_status", {"repo_path": str(world.repo)})
    assert "a.txt" in status["content"][0]["text"]
    log = await sup.mcp.call("git__git_log", {"repo_path": str(world.repo)})
    assert "first" in log["content"][0]["text"]
    wrong = await sup.mcp.call("git__git_status", {"repo_path": str(world.tmp / "nope")})
    assert wrong["isError"] is True
    theirs = await sdk(world, "git", [
        ("call", ("git_status", {"repo_path": str(world.repo)})),
        ("call", ("git_status", {"repo_path": str(world.tmp / "nope")}))])
    assert theirs == [norm(status), norm(wrong)]


async def test_fetch_server_lists_its_tool_and_prompt(sup: Supervisor, world: World) -> None:
    inst = await serving(sup, "fetch")
    prompts = await sup.mcp.list_prompts(server="fetch")
    assert [p["name"] for p in prompts] == ["fetch__fetch"]
    theirs = await sdk(world, "fetch", [("tools", None), ("list_prompts", None)])
    assert [t["name"] for t in theirs[0]["tools"]] == [t["name"] for t in inst.client.tools]
    assert theirs[0]["tools"][0]["inputSchema"] == inst.client.tools[0]["inputSchema"]
    assert [p["name"] for p in theirs[1]["prompts"]] == ["fetch"]


# -- FastMCP 1.x: a sync tool blocks the server's loop -----------------------------------------
async def test_a_fastmcp1_sync_tool_blocking_8_s_is_not_a_hang(sup: Supervisor) -> None:
    inst = await serving(sup, "fm1")
    pid = inst.pid
    res = await sup.mcp.call("fm1__block", {"seconds": 8})  # heartbeat_timeout is 2 s
    assert res["content"][0]["text"] == "blocked 8 s"
    assert (inst.state.value, inst.pid, inst.restarts) == ("ready", pid, 0)


async def test_uv_is_pinned_where_test_sh_installs_it() -> None:
    assert shutil.which("uvx", path=str(UVX.parent)) == str(UVX)
    version = subprocess.run([str(UV), "--version"], capture_output=True, text=True).stdout
    assert version.startswith("uv 0.13.9")


async def test_the_uvx_servers_environments_are_byte_compiled() -> None:
    """scripts/mcp-servers.sh compiles them: uv installs no byte-code, and where
    PYTHONDONTWRITEBYTECODE is set each server's start compiled its packages again
    (async: the module's tests share its loop)."""
    envs = sorted((ROOT / ".uv-cache" / "environments-v2").glob("*/*/lib"))
    assert len(envs) == 4  # the three servers' and FastMCP 1.x's
    for lib in envs:
        inits = sorted(lib.glob("python3*/site-packages/mcp/__init__.py"))
        assert len(inits) == 1, lib
        assert Path(importlib.util.cache_from_source(str(inits[0]))).is_file(), lib
