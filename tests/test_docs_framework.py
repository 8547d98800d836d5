"""docs/guide.md's "An agent written with a framework", run as a new user runs it beside
the Quick start: its stand-in model's command, its table appended to examples/corral.toml,
then a task by `corral run` and one by docs/a2a.md's client at the agent's A2A address.
A new user's trial found no step saying how, and the recipes failing over A2A (an A2A
message is their input, and they read `prompt` alone: KeyError).

Real parts: the Quick start's `corral daemon` (tests/quickstart.py), the OpenAI Agents
SDK's recipe in .venv-frameworks (scripts/frameworks.sh), the notes MCP server, the
stand-in model server and the official A2A client, each a process of its own."""

from __future__ import annotations

import json
import shlex
import subprocess
from pathlib import Path

import pytest

from .conftest import ROOT
from .daemon_harness import PY, corral_run, free_port
from .quickstart import PORT, quickstart, token
from .test_docs_clients import doc_client

HEADING = "### An agent written with a framework"
PROMPT = 'find {"word": "otters"}'
# the guide's addresses, each replaced by a free one of the test's
MODEL, GATEWAY = "127.0.0.1:8999", "127.0.0.1:8765"


def guide_blocks() -> tuple[str, str, str]:
    """The section's first sh block, its toml block and its second sh block."""
    text = (ROOT / "docs" / "guide.md").read_text()
    section = text[text.index(HEADING):].split("\n## ", 1)[0]
    setup, rest = section.split("```sh\n", 1)[1].split("```", 1)
    table, rest = rest.split("```toml\n", 1)[1].split("```", 1)
    return setup, table, rest.split("```sh\n", 1)[1].split("```", 1)[0]


@pytest.mark.timeout(600)  # a framework's start and two tasks: minutes on a loaded host
def test_the_guides_framework_agent_runs_a_task_and_answers_over_a2a(tmp_path: Path) -> None:
    if not (ROOT / ".venv-frameworks" / "bin" / "python").exists():
        pytest.skip(".venv-frameworks is not installed (scripts/frameworks.sh)")
    setup, table, commands = guide_blocks()
    model_line = next(line for line in setup.splitlines() if "scripted_model.py" in line)
    argv = shlex.split(model_line.split("&", 1)[0])
    assert argv[0] == ".venv/bin/python" and MODEL.rsplit(":", 1)[1] in argv, model_line
    assert f'url = "http://{MODEL}/v1"' in table and f'listen = "{GATEWAY}"' in table, table
    run_line = next(line for line in commands.splitlines() if " run assistant " in line)
    model_port = free_port()
    count = tmp_path / "model-calls.txt"
    # the table's relative paths are examples/'s parent's: the checkout's venv and corral
    (tmp_path / ".venv-frameworks").symlink_to(ROOT / ".venv-frameworks")
    (tmp_path / "corral").symlink_to(ROOT / "corral")
    model_argv = [PY, str(ROOT / argv[1]), str(model_port), argv[3], str(count), *argv[5:]]
    with subprocess.Popen(model_argv, stdout=subprocess.PIPE, text=True) as model:
        try:
            assert model.stdout is not None and model.stdout.readline() == "listening\n"
            appended = "\n" + table.replace(MODEL, f"127.0.0.1:{model_port}").replace(
                GATEWAY, "127.0.0.1:0")
            with quickstart(tmp_path, appended, dirs=("frameworks",)) as (port, env, sock):
                args = shlex.split(run_line.split("#", 1)[0])
                assert args[:2] == [".venv/bin/corral", "run"], run_line
                ran = corral_run(["--socket", str(sock), *args[1:]], env=env, timeout=300)
                assert ran.returncode == 0, ran.stderr
                assert json.loads(ran.stdout)["answer"].startswith("done 2: "), ran.stdout
                secret = token(env, sock, "a2a", "tasks:run", "tasks:read")
                client = doc_client("a2a.md", "## Calling it")
                pasted = (client.replace('token = "..."', f'token = "{secret}"')
                          .replace(f"127.0.0.1:{PORT}/a2a/researcher",
                                   f"127.0.0.1:{port}/a2a/assistant")
                          .replace('Part(text="find me papers")', f"Part(text={PROMPT!r})"))
                assert f"127.0.0.1:{port}/a2a/assistant" in pasted and PROMPT in pasted
                called = subprocess.run([PY, "-m", "asyncio"], input=pasted + "\n\n", env=env,
                                        capture_output=True, text=True, timeout=300)
                assert "Traceback" not in called.stderr, called.stderr
                assert "TASK_STATE_COMPLETED" in called.stdout, called.stdout
                assert 'string_value: "done 2: ' in called.stdout, called.stdout
        finally:
            model.kill()
    # each task's two tool calls and its answer, every one through corral's model gateway
    assert count.read_text().splitlines() == ["model 0 chat", "model 1 chat", "model 2 chat"] * 2
