"""Issue 55's approvals to the letter: a pydantic-ai agent (docs/frameworks.md's recipe,
examples/frameworks/pydantic_ai_agent.py, in its pinned venv) whose model (the stand-in
of tests/servers/scripted_model.py, through corral's model gateway) asks for
`fs__write_file {path, content}` of the real filesystem MCP server
(@modelcontextprotocol/server-filesystem, pinned in scripts/mcp-servers.sh), a call its
agent's `approve` holds for a person.

The ask is made and the task waits; the daemon is SIGKILLed while it waits and started
again on the same state: a fresh dashboard login shows the ask in its Inbox, and approved
there the file is written, once (the server's own stdin, copied to a file, holds one
`tools/call write_file`), and the task succeeds with the server's answer. A second task's
call denied from the dashboard with a reason: the file is not written, and pydantic-ai
tells its model the tool's error (its MCPToolset raises ModelRetry on an `isError`
result: a retry prompt, which the stand-in echoes in its final answer), so the task
succeeds with the denial's words in its answer.

One daemon for both: the framework's import is seconds at each of its worker's starts."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import textwrap
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from .conftest import EXAMPLES, ROOT
from .daemon_harness import PY, Daemon, free_port, shared_tmpdir
from .test_approvals import pending, wait_for
from .test_mcp_servers import NPM, NPM_VERSION

# autouse: the module's pages share a chromium (decision 962)
from .test_ui import chromium_of_module as chromium_of_module
from .test_ui import chromium_page, needs_chromium
from .test_ui import one_chromium as one_chromium
from .test_ui_approvals import open_inbox

HERE = Path(__file__).parent
FRAMEWORKS_PY = ROOT / ".venv-frameworks" / "bin" / "python"
FS_SERVER = NPM / "server-filesystem"
# a worker's start here is the framework's import: seconds, more on a loaded machine
START = 120.0
# what the page is given to show what it is sent (ms): a loaded machine's page is slow
SHOWN = 30_000


def missing() -> str | None:
    if not FRAMEWORKS_PY.exists():
        return ".venv-frameworks is not installed (scripts/frameworks.sh)"
    package = FS_SERVER / "package.json"
    if not package.exists() or f'"version": "{NPM_VERSION}"' not in package.read_text():
        return (f"@modelcontextprotocol/server-filesystem@{NPM_VERSION} is not installed "
                f"(scripts/mcp-servers.sh)")
    return None


pytestmark = [needs_chromium, pytest.mark.skipif(missing() is not None,
                                                 reason=missing() or "")]


def fleet(home: Path, model_url: str) -> str:
    """The recipe as agent `writer`, its `fs__write_file` held for a person; the
    filesystem server allowed `home`/files, its stdin copied to `home`/fs-stdin (every
    request corral sent it, as it read them)."""
    (home / "model.key").write_text("the-providers-key\n")
    return textwrap.dedent(f"""
        [agents.writer]
        command = ["{FRAMEWORKS_PY}", "{EXAMPLES}/frameworks/pydantic_ai_agent.py"]
        retries = 1
        backoff_initial = 0.05
        start_timeout = {START}
        stop_timeout = 10.0
        tools = ["fs__*"]
        approve = ["fs__write_file"]

        [agents.writer.env]
        PYTHONPATH = "{ROOT}"

        [mcp_servers.fs]
        command = ["/bin/sh", "-c", 'tee -a "$0" | exec node "$1" "$2"',
                   "{home}/fs-stdin", "{FS_SERVER}/dist/index.js", "{home}/files"]
        start_timeout = 60.0

        [models.gpt-5-mini]
        url = "{model_url}/v1"
        format = "openai"
        key_file = "{home}/model.key"

        [gateway]
        listen = "127.0.0.1:0"

        [tracing]
        export_interval = 0.05

        [http]
        listen = "127.0.0.1:0"
    """)


def started(d: Daemon) -> None:
    """`d` started, and ready: its agent's replica serving, after its worker's start."""
    d.start(wait_ready=False)
    d.notify.wait_for("READY", timeout=START, proc=d.proc)


@dataclass
class World:
    home: Path
    d: Daemon

    @property
    def files(self) -> Path:
        return self.home / "files"

    def writes(self) -> list[dict[str, Any]]:
        """The arguments of each `write_file` call the filesystem server was sent."""
        path = self.home / "fs-stdin"
        sent = [json.loads(line) for line in
                (path.read_text().splitlines() if path.exists() else []) if line.strip()]
        return [m["params"]["arguments"] for m in sent if m.get("method") == "tools/call"
                and m["params"]["name"] == "write_file"]

    def model_calls(self) -> list[str]:
        """The stand-in model's log: a line for each request it was sent."""
        log = self.home / "model-count"  # (none before the first: the tests' order is any)
        return log.read_text().splitlines() if log.exists() else []

    def submit(self, arguments: dict[str, str]) -> str:
        task: str = self.d.ask("tasks.submit", {"agent": "writer", "input": {
            "prompt": f"write {json.dumps(arguments)}"}})["task_id"]
        return task

    def status(self, task_id: str) -> str:
        status: str = self.d.ask("tasks.get", {"task_id": task_id})["status"]
        return status


Call = tuple[str, int, bool, str | None]


def spans(d: Daemon, task_id: str) -> list[Call]:
    """The model and tool calls of the task's trace, in the order they started: each
    one's name, attempt, whether it was answered from the journal, and its error; waited
    for until the trace holds the last (spans are exported a moment after the task)."""
    def calls() -> list[Call] | None:
        view = d.ask("traces.get", {"task_id": task_id})
        found = [(s["name"], s["attributes"]["corral.attempt"],
                  bool(s["attributes"].get("corral.step.replayed")), s["error"])
                 for s in sorted(view["spans"], key=lambda s: s["start"])
                 if s["name"].startswith(("chat ", "tools/call "))]
        return found if found and found[-1][0].startswith("chat ") else None
    found: list[Call] = wait_for(calls, "the task's trace")
    return found


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    """The stand-in model (asking for one write_file call with the prompt's arguments,
    then answering with the result it was given) and a daemon running the fleet."""
    home = shared_tmpdir()
    (home / "files").mkdir()
    port = free_port()
    model = subprocess.Popen([PY, str(HERE / "servers" / "scripted_model.py"), str(port),
                              "1", str(home / "model-count"), "write_file"],
                             stdout=subprocess.PIPE, text=True)
    d = Daemon(home, fleet(home, f"http://127.0.0.1:{port}"))
    try:
        assert model.stdout is not None and model.stdout.readline() == "listening\n"
        started(d)
        yield World(home, d)
        assert d.stop() == 0
    finally:
        d.close()
        model.kill()
        model.wait()
        shutil.rmtree(home, ignore_errors=True)


@pytest.mark.timeout(420)
def test_a_write_held_through_a_sigkill_approved_in_the_dashboard_is_made_once(
        world: World) -> None:
    from playwright.sync_api import expect

    d = world.d
    target = world.files / "approved.txt"
    # content no earlier run, and no other call, could have written
    content = f"approved once {uuid.uuid4()}\n"
    arguments = {"path": str(target), "content": content}
    # (the module's other test may have run first: its calls are in the stand-in's log)
    asked = world.model_calls()
    task_id = world.submit(arguments)
    [ask] = wait_for(lambda: pending(d), "the write's ask", timeout=START)
    assert (ask["kind"], ask["task_id"], ask["agent"], ask["subject"]) == (
        "approval", task_id, "writer", {"tool": "fs__write_file", "arguments": arguments})
    wait_for(lambda: world.status(task_id) == "waiting", "the task waiting")
    assert world.writes() == [] and not target.exists()
    # the first attempt's model call is in its trace before the kill (its span is
    # exported a moment after the call: what a SIGKILL comes before is lost with it)
    wait_for(lambda: [s for s in d.ask("traces.get", {"task_id": task_id})["spans"]
                      if s["name"].startswith("chat ")], "the first model call's span")

    # SIGKILLed (by its pid) while the call waits; started again on the same state
    assert d.stop(signal.SIGKILL) == -signal.SIGKILL
    started(d)
    assert [a["id"] for a in pending(d)] == [ask["id"]]
    # the retry's worker (the framework imported again) made the same call, and waits on
    # the same ask: no second one
    wait_for(lambda: (i := d.ask("tasks.get", {"task_id": task_id}))["status"] == "waiting"
             and len(i["attempts"]) == 2, "the retry waiting on the same ask",
             timeout=START)
    assert [a["id"] for a in pending(d)] == [ask["id"]]
    assert world.writes() == [] and not target.exists()

    with chromium_page() as page:
        open_inbox(d, page)
        card = page.locator('.ask[data-kind="approval"]')
        expect(card).to_have_count(1, timeout=SHOWN)
        expect(card).to_have_attribute("data-ask", ask["id"])
        expect(card.locator(".ask-task")).to_have_text(task_id)
        expect(card.locator(".ask-agent")).to_have_text("writer")
        expect(card.locator(".ask-tool")).to_have_text("fs__write_file")
        expect(card.locator(".ask-args")).to_have_value(json.dumps(arguments, indent=2))
        expect(page.locator("#nav-inbox")).to_have_text("Inbox (1)")

        card.locator(".decide-approved").click()
        done = d.ask("tasks.get", {"task_id": task_id, "wait": True})
        assert done["status"] == "succeeded", done
        row = page.locator(f'#inbox-decided tr[data-ask="{ask["id"]}"]')
        expect(row.locator(".end")).to_have_text("approved", timeout=SHOWN)
        expect(row.locator(".by")).to_have_text("token dashboard (uid 0)")
        expect(page.locator("#inbox-pending")).to_have_text("No task waits for a person.")
        assert page.evaluate("window.__cspViolations") == []

    # the agent was told the server's answer (pydantic-ai gives its model a result's
    # structuredContent); the file holds the content; the server was sent the call once
    # (its stdin, every request it read, holds one write_file); the task counted one call
    told = json.dumps({"content": f"Successfully wrote to {target}"}, separators=(",", ":"))
    assert done["output"] == {"answer": f"done 1: {told}"}, done
    assert target.read_text() == content
    # (tee writes its file just after it has given node the line: a moment, waited for)
    assert wait_for(world.writes, "the server's copied stdin") == [arguments]
    assert [a["outcome"] for a in done["attempts"]] == ["lost", "succeeded"], done
    # corral's books say the same: the task's one tool call, counted when it was made; the
    # trace's one write_file span, the retry's, live; the model asked twice (the retry's
    # first model call answered from the journal)
    assert done["tool_calls"] == 1, done
    assert spans(d, task_id) == [
        ("chat gpt-5-mini", 1, False, None), ("chat gpt-5-mini", 2, True, None),
        ("tools/call write_file", 2, False, None), ("chat gpt-5-mini", 2, False, None)]
    assert world.model_calls() == [*asked, "model 0 chat", "model 1 chat"]
    assert pending(d) == []
    ended = d.ask("approvals.get", {"id": ask["id"]})
    assert (ended["end"], ended["by"], ended["subject"]) == (
        "approved", "token dashboard (uid 0)",
        {"tool": "fs__write_file", "arguments": arguments})


@pytest.mark.timeout(300)
def test_a_write_denied_in_the_dashboard_is_a_tool_error_pydantic_ai_tells_its_model(
        world: World) -> None:
    from playwright.sync_api import expect

    d = world.d
    target = world.files / "denied.txt"
    arguments = {"path": str(target), "content": "never written\n"}
    before, asked = world.writes(), world.model_calls()
    task_id = world.submit(arguments)
    [ask] = wait_for(lambda: pending(d), "the write's ask", timeout=START)
    assert ask["subject"] == {"tool": "fs__write_file", "arguments": arguments}

    with chromium_page() as page:
        open_inbox(d, page)
        card = page.locator('.ask[data-kind="approval"]')
        expect(card).to_have_count(1, timeout=SHOWN)
        expect(card).to_have_attribute("data-ask", ask["id"])
        expect(card.locator(".ask-task")).to_have_text(task_id)
        expect(card.locator(".ask-tool")).to_have_text("fs__write_file")
        expect(card.locator(".ask-args")).to_have_value(json.dumps(arguments, indent=2))
        card.locator(".ask-reason").fill("not in this directory")
        card.locator(".decide-denied").click()
        done = d.ask("tasks.get", {"task_id": task_id, "wait": True})
        row = page.locator(f'#inbox-decided tr[data-ask="{ask["id"]}"]')
        expect(row.locator(".end")).to_have_text("denied", timeout=SHOWN)
        expect(row.locator(".data")).to_have_text('{"reason":"not in this directory"}')
        assert page.evaluate("window.__cspViolations") == []

    # pydantic-ai's MCPToolset raised the isError result as ModelRetry (its default
    # tool_error_behavior), and told its model the error as the tool's return, an error
    # outcome wrapped in {"error": ...} (Chat Completions has no error channel); the model
    # answered, and the task succeeded
    assert done["status"] == "succeeded", done
    denial = (f"tool call fs__write_file was denied by token dashboard (uid 0) "
              f"(ask {ask['id']}): not in this directory")
    told = json.dumps({"error": denial}, separators=(",", ":"))
    assert done["output"] == {"answer": f"done 1: {told}"}, done
    assert not target.exists()
    assert world.writes() == before
    assert world.model_calls() == [*asked, "model 0 chat", "model 1 chat"]
    ended = d.ask("approvals.get", {"id": ask["id"]})
    assert (ended["end"], ended["by"], ended["data"]) == (
        "denied", "token dashboard (uid 0)", {"reason": "not in this directory"})
