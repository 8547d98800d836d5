"""The framework recipes of docs/frameworks.md (issue 54 item 3), each run with its real,
pinned library (scripts/frameworks.sh): pydantic-ai, the OpenAI Agents SDK (on Chat
Completions and on its default, Responses), Agno, LangGraph (langchain-mcp-adapters), a
plain `openai` client and a plain `anthropic` one (its answers streamed) with the MCP
SDK's, each agent importing nothing of corral but `run`. Its tools are corral's MCP
gateway at the attempt's address; its model corral's model gateway (OPENAI_BASE_URL or
ANTHROPIC_BASE_URL, as corral gives them) in front of a stand-in model server of the
tests speaking the provider's wire format (tests/servers/scripted_model.py) that asks for
four `counting__bump` calls. The MCP server kills the worker at its 3rd call, after its
3rd model call and 2nd tool call (tests/servers/counting_mcp.py). The retry makes no tool
call and no model call twice (each server counts its calls in a file), the task's tool
budget and token usage count each once (its max_tool_calls_per_task and tokens_per_day
hold each call once, not a replayed one again), and the trace shows each call under its
attempt. Then again with that 3rd tool call held at the server past the kill (`held`):
the call outlives its worker, its answer is journaled and given to the retry, and the
server has every call once, the killed one too (docs/durable.md). A recipe's two tests
are two tasks of one daemon (its zygote's import of the framework, 1.5-3 s of CPU, made
once for both), each counting what was called from its own start."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import subprocess
import textwrap
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import msgspec
import pytest
import pytest_asyncio

from corral import methods as m
from corral.daemon.caller import Caller
from corral.taskoptions import TaskOptions

from .conftest import EXAMPLES, ROOT, SPARED
from .daemon_harness import PY, free_port, in_process
from .test_inflight import attempt_ended, release

# minutes of this file: a parallel run starts it first (tests/conftest.py longest_first)
pytestmark = pytest.mark.long

HERE = Path(__file__).parent
OPERATOR = Caller(via="socket")
# framework -> (its venv, its recipe, its model's format, the model API it calls as the
# stand-in logs it): scripts/frameworks.sh makes the venvs
RECIPES = {
    "pydantic-ai": (".venv-frameworks", "pydantic_ai_agent.py", "openai", "chat"),
    "openai-agents": (".venv-frameworks", "openai_agents_agent.py", "openai", "chat"),
    "openai-agents-responses": (".venv-frameworks", "openai_agents_responses_agent.py",
                                "openai", "responses"),
    "agno": (".venv-frameworks", "agno_agent.py", "openai", "chat"),
    "langgraph": (".venv-langgraph", "langgraph_agent.py", "openai", "chat"),
    "plain": (".venv-frameworks", "plain_agent.py", "openai", "chat"),
    "plain-anthropic": (".venv-frameworks", "anthropic_agent.py", "anthropic",
                        "messages stream"),
}
# each recipe's framework, imported once by its zygote (`preload`, decision 960): both of
# the worker's starts (the first and the retry after the kill) are forks of it, as
# docs/frameworks.md advises; a cold start imported it anew each time (1.5-3.2 s of CPU)
PRELOAD = {
    "pydantic-ai": ["pydantic_ai", "pydantic_ai.mcp", "pydantic_ai.models.openai"],
    "openai-agents": ["agents", "agents.mcp", "openai"],
    "openai-agents-responses": ["agents", "agents.mcp"],
    "agno": ["agno.agent", "agno.models.openai", "agno.tools.mcp"],
    "langgraph": ["langchain_mcp_adapters.client", "langchain_openai",
                  "langgraph.prebuilt"],
    "plain": ["httpx2", "mcp", "mcp.client.streamable_http", "openai"],
    "plain-anthropic": ["httpx2", "anthropic", "mcp", "mcp.client.streamable_http"],
}
CALLS = 4
# the recipes' model of each format, as the config names it
MODELS = {"openai": "gpt-5-mini", "anthropic": "claude-haiku-4-5"}


def interpreter(framework: str) -> Path:
    return ROOT / RECIPES[framework][0] / "bin" / "python"


@contextlib.contextmanager
def stand_in_model(tmp: Path) -> Iterator[str]:
    """The scripted model server, on a port of its own: its base URL; killed after."""
    port = free_port()
    # (its exit waited for and its stdout closed as the block ends)
    with subprocess.Popen([PY, str(HERE / "servers" / "scripted_model.py"), str(port),
                           str(CALLS), str(tmp / "model-count")],
                          stdout=subprocess.PIPE, text=True) as proc:
        SPARED.add(proc.pid)  # the test's own: the in-process daemon's containment spares it
        try:
            assert proc.stdout is not None and proc.stdout.readline() == "listening\n"
            yield f"http://127.0.0.1:{port}"
        finally:
            proc.kill()


def fleet(tmp: Path, framework: str, model_url: str) -> str:
    (tmp / "model.key").write_text("the-providers-key\n")
    form = RECIPES[framework][2]
    # an OpenAI base URL names the version; Anthropic's client adds its /v1 itself
    url = f"{model_url}/v1" if form == "openai" else model_url
    return textwrap.dedent(f"""
        [agents.recipe]
        command = ["{interpreter(framework)}", "{EXAMPLES}/frameworks/{RECIPES[framework][1]}"]
        preload = {msgspec.json.encode(PRELOAD[framework]).decode()}
        retries = 1
        backoff_initial = 0.05
        tools = ["counting__*"]
        start_timeout = 120.0
        # budgets each call fits once: a replayed call counted again would be refused
        # (the day's: the two tasks of the recipe's two tests, by the second one's end)
        max_tool_calls_per_task = {CALLS + 1}
        tokens_per_day = {2 * 15 * (CALLS + 1)}

        [agents.recipe.env]
        PYTHONPATH = "{ROOT}"
        OPENAI_AGENTS_DISABLE_TRACING = "1"
        AGNO_TELEMETRY = "false"

        [mcp_servers.counting]
        command = ["{PY}", "{HERE}/servers/counting_mcp.py", "{tmp}/server-count",
                   "{tmp}/kill"]

        [models.{MODELS[form]}]
        url = "{url}"
        format = "{form}"
        key_file = "{tmp}/model.key"

        [gateway]
        listen = "127.0.0.1:0"

        [tracing]
        export_interval = 0.05
    """)


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


class Recipe(NamedTuple):
    framework: str
    d: Any  # the in-process daemon
    tmp: Path  # its directory: the servers' count files, the kill file


@pytest_asyncio.fixture(loop_scope="module", scope="module", params=sorted(RECIPES))
async def recipe(request: pytest.FixtureRequest,
                 tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Recipe]:
    """A recipe's daemon (its stand-in model and counting server), for both of its
    tests: pytest runs a module's tests by this fixture's framework, one daemon at once."""
    framework = request.param
    if not interpreter(framework).exists():
        pytest.skip(f"{RECIPES[framework][0]} is not installed (scripts/frameworks.sh)")
    tmp = tmp_path_factory.mktemp(framework)
    # (the model's pid spared for the tests after the first too: tests/conftest.py)
    with stand_in_model(tmp) as model_url:
        async with in_process(tmp, fleet(tmp, framework, model_url)) as d:
            yield Recipe(framework, d, tmp)


async def worker_pid(d: Any) -> int:
    status = msgspec.convert(await d.dispatcher.call(OPERATOR, "agents.status", {}),
                             m.AgentsStatusResult)
    pid = next(r.pid for r in status.agents if r.name == "recipe")
    assert pid is not None
    return pid


@pytest.mark.timeout(300)
@pytest.mark.asyncio(loop_scope="module")  # the loop of its recipe's daemon (`recipe`)
@pytest.mark.parametrize("held", [False, True], ids=["answered-error", "held"])
async def test_a_recipe_retried_after_a_kill_makes_no_tool_call_twice(
        recipe: Recipe, tmp_path: Path, held: bool) -> None:
    framework, d, tmp = recipe.framework, recipe.d, recipe.tmp
    # what the servers were called before this test's task (the recipe's other test's)
    counted, modeled = len(lines(tmp / "server-count")), len(lines(tmp / "model-count"))
    # killed at its 3rd tool call: after its 3rd model call and 2nd tool call;
    # `held`: that call answered only once the killed attempt has ended
    kill, gate = f"{await worker_pid(d)} 3", tmp_path / "gate"
    if held:
        os.mkfifo(gate)
        kill += f" {gate}"
    (tmp / "kill").write_text(kill)
    first_ended = attempt_ended(d, "recipe", 1)
    running = asyncio.ensure_future(d.sup.tasks.run(
        "recipe", {"prompt": "bump the counter 4 times"}, TaskOptions(timeout=240)))
    if held:
        await asyncio.wait_for(first_ended, 240)
        await release(gate)
    res = await running
    assert res.status == "succeeded", res
    assert not (tmp / "kill").exists()  # the worker was killed once
    assert f"done {CALLS}" in str(res.output["answer"])
    # each call made once, whatever the retry asked again
    assert lines(tmp / "server-count")[counted:] == [
        str(i) for i in range(1, CALLS + 1)]
    api = RECIPES[framework][3]
    assert lines(tmp / "model-count")[modeled:] == [f"model {i} {api}"
                                                    for i in range(CALLS + 1)]
    first, second = res.attempts
    assert (first.outcome, second.outcome) == ("lost", "succeeded")
    # both starts forked from the zygote that imported the framework: none cold
    assert d.sup.stats.cold_fallbacks == 0
    info = await d.sup.tasks.info(res.task_id)
    # each call once, and the one that killed the worker (made: the server was
    # called, and answered an error) again; held, it was answered: made once
    assert info.tool_calls == CALLS + (not held)
    assert info.usage is not None  # the stand-in's 10 in and 5 out, each call once
    assert (info.usage.input_tokens, info.usage.output_tokens) == (
        10 * (CALLS + 1), 5 * (CALLS + 1))
    view = msgspec.convert(await d.dispatcher.call(
        OPERATOR, "traces.get", {"task_id": res.task_id}), m.TraceView)
    runs = {s.attributes["corral.attempt"]: s.span_id for s in view.spans
            if s.name == "task/run recipe"}

    def under_attempts(name: str) -> list[tuple[int, bool]]:
        return sorted((s.attributes["corral.attempt"],
                       bool(s.attributes.get("corral.step.replayed")))
                      for s in view.spans if s.name == name and s.error is None
                      and s.parent_id == runs[s.attributes["corral.attempt"]])

    # the first attempt's two live tool calls (its third killed it: no answer),
    # the retry's two from the journal and two live; held, the third answered
    # after the kill, and the retry's three from the journal and one live
    assert under_attempts("tools/call bump") == ([
        (1, False), (1, False), (1, False), (2, False), (2, True), (2, True),
        (2, True)] if held else [
        (1, False), (1, False), (2, False), (2, False), (2, True), (2, True)])
    # the first attempt's three model calls, the retry's three from the journal
    # and two live
    assert under_attempts(f"chat {MODELS[RECIPES[framework][2]]}") == [
        (1, False), (1, False), (1, False), (2, False), (2, False), (2, True),
        (2, True), (2, True)]


@pytest.mark.parametrize(("venv", "package"), [(".venv-frameworks", "pydantic_ai"),
                                               (".venv-langgraph", "langchain_core")])
def test_the_framework_venvs_are_byte_compiled(venv: str, package: str) -> None:
    """scripts/frameworks.sh compiles them: uv installs no byte-code, and where
    PYTHONDONTWRITEBYTECODE is set each recipe start compiled its framework again."""
    inits = sorted((ROOT / venv / "lib").glob(f"python3*/site-packages/{package}/__init__.py"))
    if not inits:
        pytest.skip(f"{venv} is not installed (scripts/frameworks.sh)")
    assert Path(importlib.util.cache_from_source(str(inits[0]))).is_file()
