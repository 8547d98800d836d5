"""What an operator does from the dashboard (issue 36, item 6): start, stop and restart an
agent or one replica, add and remove an agent, run a task and read its input and output;
what the fleet shows (grouped by agent with a summary row, an asleep agent with its
state), the log pane that follows, the page a refused login link gets, the favicon, and
chart axes whose labels are neither cut nor repeated. Driven in Debian's chromium, each
effect asserted on the daemon; the fixtures are tests/test_ui.py's."""

from __future__ import annotations

import json
import os
import re
import shlex
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import msgspec
import pytest

from corral import jsonrpc
from corral import methods as m
from corral.daemon.caller import Caller
from corral.daemon.http.ui import CSP
from corral.daemon.tokens import tokens_of
from corral.supervisor import State

from .conftest import EXAMPLES, PY, ROOT
from .daemon_harness import hello, in_process, problem, running_daemon, shared_tmpdir
from .test_daemon_cli import wait_until
from .test_sleep import sleepy_toml
from .test_ui import (
    ARTIFACTS,
    CHART_IDS,
    chromium_page,
    login_link,
    needs_chromium,
    page,
    running,
    wait_for_points,
)

# autouse: the module's pages share a chromium (decision 962)
from .test_ui import chromium_of_module as chromium_of_module
from .test_ui import one_chromium as one_chromium

OPERATOR = Caller(via="socket", uid=0)
HTTP = '[http]\nlisten = "127.0.0.1:0"\n'
SERVING = re.compile(r"^(ready|idle|busy)$")
SERVING_STATES = ("ready", "idle", "busy")


def console_problems(pg: Any) -> list[str]:
    problems: list[str] = []
    pg.on("console", lambda msg: problems.append(f"console {msg.type}: {msg.text}")
          if msg.type in ("error", "warning") else None)
    pg.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    return problems


def replica(d: Any, target: str) -> dict[str, Any]:
    return d.status().get(target, {})


def serving(d: Any, target: str) -> bool:
    return replica(d, target).get("state") in SERVING_STATES


@needs_chromium
@pytest.mark.timeout(300)
def test_start_stop_restart_add_remove_and_run_from_the_dashboard() -> None:
    from playwright.sync_api import expect

    agents = hello("hello", replicas=2) + sleepy_toml("nap")
    with running_daemon(shared_tmpdir(), agents, extra=HTTP) as d:
        wait_until(lambda: d.status_json()["elastic"]["nap"]["state"] == "asleep",
                   timeout=30, what="nap asleep")
        link = d.json("ui")["url"]
        with chromium_page() as pg:
            problems = console_problems(pg)
            pg.goto(link)
            fleet = pg.locator("#fleet")
            # grouped by agent: a summary row, then the agent's replicas
            summary = fleet.locator('tr.summary[data-summary="hello"]')
            expect(summary.locator("td").nth(1)).to_have_text("2")
            for i in (0, 1):
                expect(fleet.locator(f'tr[data-agent="hello"][data-replica="{i}"] .state')
                       ).to_have_text(SERVING)
            order = pg.evaluate("""() => [...document.querySelectorAll('#fleet tbody tr')]
                .map(r => r.dataset.summary !== undefined ? `=${r.dataset.summary}`
                          : `${r.dataset.agent}#${r.dataset.replica}`)""")
            assert order == ["=hello", "hello#0", "hello#1", "=nap"]
            # an asleep agent (scaled to zero) is shown with its state, not left out
            expect(fleet.locator('tr[data-summary="nap"] .state')).to_have_text("asleep")
            expect(fleet.locator('tr[data-summary="nap"] td').nth(1)).to_have_text("0")
            assert fleet.locator('tr[data-agent="nap"]').count() == 0
            fleet.locator('a[href="#/agent/nap"]').click()
            expect(pg.locator("#no-replicas")).to_have_text(
                "nap is asleep: scaled to zero, a task wakes it.")
            expect(pg.locator("#replicas-table tbody tr")).to_have_count(0)
            pg.click('nav a[href="#/fleet"]')

            # one replica: stop, start, restart; the other is not touched
            pid0, pid1 = (replica(d, f"hello#{i}")["pid"] for i in (0, 1))
            row1 = fleet.locator('tr[data-agent="hello"][data-replica="1"]')
            row1.locator("button.stop").click()
            wait_until(lambda: replica(d, "hello#1").get("state") == "terminated",
                       what="hello#1 stopped")
            expect(row1.locator(".state")).to_have_text("terminated")
            expect(summary.locator(".state")).to_contain_text("1 terminated")
            row1.locator("button.start").click()
            wait_until(lambda: serving(d, "hello#1"), what="hello#1 started")
            pid1 = replica(d, "hello#1")["pid"]
            row1.locator("button.restart").click()
            wait_until(lambda: serving(d, "hello#1") and replica(d, "hello#1")["pid"] != pid1,
                       what="hello#1 restarted")
            assert replica(d, "hello#0")["pid"] == pid0 and serving(d, "hello#0")

            # the agent: every replica
            summary.locator("button.stop").click()
            wait_until(lambda: all(replica(d, f"hello#{i}").get("state") == "terminated"
                                   for i in (0, 1)), what="hello stopped")
            expect(summary.locator(".state")).to_have_text("2 terminated")
            summary.locator("button.start").click()
            wait_until(lambda: all(serving(d, f"hello#{i}") for i in (0, 1)),
                       what="hello started")
            before = [replica(d, f"hello#{i}")["pid"] for i in (0, 1)]
            summary.locator("button.restart").click()
            wait_until(lambda: all(serving(d, f"hello#{i}")
                                   and replica(d, f"hello#{i}")["pid"] != before[i]
                                   for i in (0, 1)), what="hello restarted")
            audit = [e["method"] for e in d.json("audit")["entries"]]
            assert audit.count("agents.stop") == 2 and audit.count("agents.start") == 2

            # add an agent from the form: other keys of its table as JSON
            pg.fill("#add-name", "added")
            pg.fill("#add-command", shlex.join([PY, f"{EXAMPLES}/hello.py"]))
            pg.fill("#add-extra", "{env: 1}")
            pg.click("#add-submit")
            expect(pg.locator("#add-error")).to_contain_text(
                "the other keys are not JSON: ")
            pg.fill("#add-extra", json.dumps({"env": {"PYTHONPATH": str(ROOT)}}))
            pg.fill("#add-command", "/nonexistent/agent")
            pg.click("#add-submit")
            expect(pg.locator("#action-error")).to_have_text(
                "agents.add: agents.added.command: /nonexistent/agent: no such file "
                "(/nonexistent/agent) (--no-check to add it anyway)")
            assert "added#0" not in d.status()
            pg.fill("#add-command", shlex.join([PY, f"{EXAMPLES}/hello.py"]))
            pg.click("#add-submit")
            wait_until(lambda: serving(d, "added#0"), timeout=30, what="added serving")
            expect(fleet.locator('tr[data-agent="added"][data-replica="0"] .state')
                   ).to_have_text(SERVING)
            expect(pg.locator("#action-error")).to_have_count(0)
            assert d.json("describe", "added")["origin"] == "runtime"

            # run a task on it with the input editor; its page shows input and output
            fleet.locator('a[href="#/agent/added"]').click()
            editor = pg.locator("#task-input-editor")
            expect(editor).to_have_value("null")
            editor.fill('{"name": "editor",')
            pg.click("#run")
            expect(pg.locator(".error")).to_contain_text("the task's input is not JSON: ")
            assert d.json("tasks")["tasks"] == []
            editor.fill('{"name": "editor", "n": [1, 2]}')
            pg.click("#run")
            expect(pg.locator("#task-output")).to_contain_text('"greeting": "hello, editor"',
                                                               timeout=30_000)
            task_id = pg.url.rsplit("/", 1)[-1]
            expect(pg.locator("#task-input")).to_have_text(
                json.dumps({"name": "editor", "n": [1, 2]}, indent=2))
            assert d.json("task", task_id)["status"] == "succeeded"
            expect(pg.locator("#trace-note, #waterfall")).to_have_count(0)  # no [tracing]
            assert [t["agent"] for t in d.json("tasks")["tasks"]] == ["added"]
            pg.screenshot(path=str(ARTIFACTS / "dashboard-run.png"), full_page=True)

            # replicas serving in different states (one idle after a task, one ready) are
            # a serving agent (decision 382): said so, and coloured so, not as a warning
            r = d.cli("run", "hello", "--input", '{"name": "x"}')
            assert r.returncode == 0, r.stderr
            wait_until(lambda: {replica(d, f"hello#{i}").get("state") for i in (0, 1)}
                       == {"idle", "ready"}, what="one idle, one ready")
            pg.click('nav a[href="#/fleet"]')
            expect(summary.locator(".state")).to_have_text(
                re.compile(r"^2 serving \((1 ready, 1 idle|1 idle, 1 ready)\)$"))
            expect(summary.locator(".state")).to_have_class(re.compile(r"\bstate-serving\b"))

            # remove it, with a second click that says what it does
            pg.goto(pg.url.split("#")[0] + "#/agent/added")
            pg.click("#remove")
            expect(pg.locator("#remove-confirm")).to_have_text(
                "Remove added: its replicas stop")
            assert "added#0" in d.status()
            pg.click("#remove-confirm")
            expect(pg).to_have_url(re.compile(r"#/fleet$"))
            expect(fleet.locator('tr[data-summary="hello"]')).to_have_count(1)
            expect(fleet.locator('tr[data-summary="added"]')).to_have_count(0)
            assert "added" not in {a["name"] for a in d.json("status")["agents"]}
            assert [e["method"] for e in d.json("audit")["entries"]][-1] == "agents.remove"
            assert pg.evaluate("window.__cspViolations") == []
            # the one error the browser logs: the refused agents.add's answer
            assert problems == ["console error: Failed to load resource: the server "
                                "responded with a status of 400 (Bad Request)"], problems


@needs_chromium
@pytest.mark.timeout(240)
def test_the_log_pane_opens_at_the_newest_line_and_follows() -> None:
    from playwright.sync_api import expect

    with running_daemon(shared_tmpdir(), hello("hello"), extra=HTTP) as d:
        # enough lines that the pane scrolls: each restart logs its transitions
        for _ in range(8):
            assert d.cli("restart", "hello").returncode == 0
        with chromium_page() as pg:
            pg.goto(d.json("ui")["url"])
            pg.click('#fleet a[href="#/agent/hello"]')
            log = pg.locator("#log")
            expect(log).to_contain_text("event: starting -> ready")
            geometry = "el => [el.scrollTop, el.clientHeight, el.scrollHeight]"

            def at_bottom() -> bool:
                top, height, total = log.evaluate(geometry)
                return bool(total > height and top + height >= total - 4)

            pg.wait_for_function("""() => { const el = document.getElementById('log');
                return el.scrollHeight > el.clientHeight &&
                       el.scrollTop + el.clientHeight >= el.scrollHeight - 4; }""",
                                 timeout=10_000)
            assert at_bottom()
            # a new line: shown, and the pane is at it
            lines = log.inner_text().count("\n")
            assert d.cli("stop", "hello").returncode == 0
            pg.wait_for_function(f"""() => document.getElementById('log').innerText
                .split('\\n').length > {lines + 1}""")
            pg.wait_for_function("""() => { const el = document.getElementById('log');
                return el.scrollTop + el.clientHeight >= el.scrollHeight - 4; }""",
                                 timeout=5_000)
            # scrolled up by the reader: it stays there as lines come
            log.evaluate("el => { el.scrollTop = 0; el.dispatchEvent(new Event('scroll')); }")
            lines = log.inner_text().count("\n")
            assert d.cli("start", "hello").returncode == 0
            pg.wait_for_function(f"""() => document.getElementById('log').innerText
                .split('\\n').length > {lines + 1}""")
            assert log.evaluate("el => el.scrollTop") == 0
            assert pg.evaluate("window.__cspViolations") == []


@needs_chromium
@pytest.mark.timeout(180)
def test_the_agent_page_shows_what_the_boundary_refused_it() -> None:
    """boundary.refused on the agent's page (issue 88): an egress = "none" agent knocking
    at an address off the host, each refusal a row with its kind and address."""
    from playwright.sync_api import expect

    from corral.supervisor.sandbox import host_refusal

    if os.geteuid() != 0 or host_refusal("bwrap", None) is not None:
        pytest.skip("refusals are seen in a namespace the daemon holds, as root, sandboxed")
    tmp = shared_tmpdir()
    home = tmp / "home"
    home.mkdir()
    (home / "knock.py").write_text(
        "import socket, time\n"
        "while True:\n"
        "    with socket.socket() as s:\n"
        "        try:\n"
        "            s.connect(('192.0.2.1', 443))\n"
        "        except OSError:\n"
        "            pass\n"
        "    time.sleep(0.2)\n")
    agent = (f'[agents.box]\nprotocol = "none"\ncommand = ["{PY}", "knock.py"]\n'
             f'egress = "none"\ncwd = "{home}"\n')
    with running_daemon(tmp, agent, extra=HTTP) as d, chromium_page() as pg:
        pg.goto(d.json("ui")["url"])
        pg.click('#fleet a[href="#/agent/box"]')
        rows = pg.locator("#refusals tbody tr")
        expect(rows.first).to_contain_text("connect", timeout=20_000)
        expect(rows.first).to_contain_text("192.0.2.1:443")
        assert pg.evaluate("window.__cspViolations") == []


@needs_chromium
@pytest.mark.timeout(180)
def test_a_refused_login_link_is_a_page_that_says_what_to_do_and_the_favicon() -> None:
    from playwright.sync_api import expect

    with running_daemon(shared_tmpdir(), hello("hello"), extra=HTTP) as d:
        link = d.json("ui")["url"]
        base = link.split("/ui/")[0]
        with chromium_page() as pg:
            problems = console_problems(pg)
            icons: list[tuple[str, int, str]] = []
            pg.on("response", lambda r: icons.append(
                (r.url, r.status, r.headers.get("content-type", "")))
                if "favicon" in r.url else None)
            pg.goto(link)
            expect(pg.locator('#fleet tr[data-summary="hello"]')).to_have_count(1)
            href = pg.evaluate("document.querySelector('link[rel=icon]').href")
            assert href == f"{base}/ui/static/favicon.svg"
            wait_until(lambda: bool(icons), timeout=10, what="the favicon asked for")
            assert icons[0] == (href, 200, "image/svg+xml")
        with chromium_page() as pg:
            problems = console_problems(pg)
            response = pg.goto(link)  # used already
            assert response is not None and response.status == 401
            assert response.headers["content-type"] == "text/html; charset=utf-8"
            assert response.headers["content-security-policy"] == CSP
            assert "set-cookie" not in response.headers and pg.context.cookies() == []
            expect(pg.locator("h2")).to_have_text("This login link does not work")
            expect(pg.locator("#why")).to_have_text(
                "this login link is not valid: it was used already, or it never was; run "
                "`corral ui` for a new one")
            expect(pg.locator("#login")).to_contain_text(
                "On the daemon's machine, run corral ui and open the new link it prints.")
            # styled by the dashboard's own sheet: nothing else was loaded
            assert pg.evaluate("getComputedStyle(document.body).margin") == "0px"
            assert pg.evaluate("window.__cspViolations") == []
            assert [p for p in problems if "401" not in p] == []
        # a client that asks for JSON still gets the problem document (test_ui.py's)
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(urllib.request.Request(link, headers={
                "Accept": "application/json"}))
        assert err.value.code == 401
        assert err.value.headers["Content-Type"] == "application/problem+json"


@needs_chromium
@pytest.mark.timeout(180)
def test_chart_axes_neither_cut_nor_repeat_their_labels() -> None:
    """uPlot draws tick labels on a canvas, cut at the axis's width: the labels are read
    as drawn (each axis's `_values`) and measured in its font against its width."""
    with running_daemon(shared_tmpdir(), hello("hello"), extra=HTTP) as d, \
            chromium_page() as pg:
            pg.goto(d.json("ui")["url"])
            pg.click('nav a[href="#/metrics"]')
            pg.click("#range-live")
            wait_for_points(pg, 2)
            now = time.time()
            # a gigabyte that barely moves (ticks a few KiB apart), then a wide range
            for rss in ([1_070_000_000, 1_070_020_000, 1_070_050_000, 1_070_030_000],
                        [12_000, 900_000_000, 190_700_000, 5_000],
                        [190_000_000, 190_700_000, 190_400_000, 190_600_000]):
                ticks = pg.evaluate("""async ([t, ys]) => {
                    const read = (u) => {
                        const a = u.axes[1];
                        u.ctx.font = a.font[0];
                        const room = a._size - a.ticks.size - a.gap;
                        return (a._values || []).map((v) => [String(v),
                            u.ctx.measureText(String(v)).width / devicePixelRatio, room]);
                    };
                    const m = window.corralCharts.memory;
                    m.setData([t, ys]);
                    await new Promise((r) => queueMicrotask(r));  // after uPlot's draw
                    const out = { memory: read(m) };
                    for (const [id, u] of Object.entries(window.corralCharts)) {
                        if (id !== "memory") out[id] = read(u);
                    }
                    return out;
                }""", [[now - 3, now - 2, now - 1, now], rss])
                assert sorted(ticks) == sorted(CHART_IDS)
                labels = [v for v, _, _ in ticks["memory"]]
                assert len(labels) >= 2, ticks["memory"]
                for chart, drawn in ticks.items():
                    texts = [v for v, _, _ in drawn]
                    assert len(set(texts)) == len(texts), (chart, texts)
                    for text, width, room in drawn:
                        assert width <= room, (chart, text, width, room)
                assert all(re.fullmatch(r"\d+(\.\d+)? (B|KiB|MiB|GiB)", v) for v in labels)


@needs_chromium
@pytest.mark.timeout(240)
def test_the_task_view_draws_its_trace_as_a_waterfall() -> None:
    """Bars on the trace's time axis, the tool calls under their attempt, the slow one
    and the failed one marked (a daemon without [tracing] shows no trace section: the
    test above)."""
    from playwright.sync_api import expect

    from .test_tracing import SCRIPTED

    tmp = shared_tmpdir()
    script = tmp / "traced_agent.py"
    script.write_text(TRACED_AGENT)
    agents = f"""
[agents.traced]
command = ["{PY}", "{script}"]
env = {{ PYTHONPATH = "{ROOT}" }}
tools = ["sc__*"]

[mcp_servers.sc]
command = ["{PY}", "{SCRIPTED}", "v2025-11"]
start_timeout = 30.0
backoff_initial = 0.05
"""
    with running_daemon(tmp, agents, extra=HTTP + "\n[tracing]\n") as d:
        task = d.json("run", "traced")
        assert task["status"] == "succeeded" and task["output"]["failed"], task
        spans = d.json("trace", task["task_id"])["spans"]
        link = d.json("ui")["url"]
        with chromium_page() as pg:
            problems = console_problems(pg)
            pg.goto(link)
            expect(pg.locator("#fleet")).to_be_visible()
            pg.evaluate(f"location.hash = '#/task/{task['task_id']}'")
            rows = pg.locator("#waterfall g.span-row")
            expect(rows).to_have_count(len(spans))
            expect(pg.locator("#trace-id")).to_have_text(spans[0]["trace_id"])
            drawn = pg.evaluate("""() => [...document.querySelectorAll(
                '#waterfall g.span-row')].map(g => {
                  const r = g.querySelector('rect');
                  return [g.dataset.name, +g.dataset.depth, r.getAttribute('class'),
                          +r.getAttribute('x'), +r.getAttribute('width'),
                          g.dataset.span]; })""")
            names = [(name, depth) for name, depth, *_ in drawn]
            assert names == [("invoke_agent traced", 0), ("corral.queue", 1),
                             ("task/run traced", 1)] + [("tools/call echo", 2)] * 3 + [
                ("tools/call slow", 2), ("tools/call die", 2)]
            # slow: a tool call over twice the median of the task's; failed: an error
            tools = sorted(s["end"] - s["start"] for s in spans
                           if s["name"].startswith("tools/call "))
            median = tools[len(tools) // 2]  # (five of them: the middle one)
            expected = {s["span_id"]: " ".join(
                ["bar"] + (["slow"] if s["name"].startswith("tools/call ")
                           and s["end"] - s["start"] > 2 * median else [])
                + (["failed"] if s["error"] else [])) for s in spans}
            assert {span_id: cls for _, _, cls, _, _, span_id in drawn} == expected
            classes = {name: cls for name, _, cls, *_ in drawn}
            assert classes["tools/call slow"] == "bar slow"
            # (marked slow as well when a loaded host made its failure slow: `expected`)
            assert "failed" in classes["tools/call die"].split()
            assert classes["invoke_agent traced"] == classes["task/run traced"] == "bar"
            # the axis: the task's bar spans it; each bar where its span is in time
            t0 = min(s["start"] for s in spans)
            total = max(s["end"] for s in spans) - t0
            by_id = {s["span_id"]: s for s in spans}
            for name, _, _, x, width, span_id in drawn:
                s = by_id[span_id]
                assert abs(x - (330 + (s["start"] - t0) / total * 658)) < 1.5, name
                assert abs(width - max(2, (s["end"] - s["start"]) / total * 658)) < 1.5, name
            slow = pg.locator('#waterfall g.span-row[data-name="tools/call slow"] title')
            assert slow.text_content().startswith("tools/call slow: ")
            assert "slow" in (slow.text_content() or "")
            failed = pg.locator('#waterfall g.span-row[data-name="tools/call die"] title')
            assert "failed: " in (failed.text_content() or "")
            pg.screenshot(path=str(ARTIFACTS / "dashboard-trace.png"), full_page=True)
            assert pg.evaluate("window.__cspViolations") == []
            assert problems == [], problems


# -- the rules hold for every new action -------------------------------------------------------
@pytest.mark.deadline(90)
async def test_each_new_action_needs_the_csrf_header_and_this_origin(tmp_path: Path) -> None:
    async with running(tmp_path) as d, page(d) as p:
        await p.login((await login_link(d)).url)
        agent = d.sup.agent("hello")
        pid = agent.replicas[0].pid
        table = {"x": {"command": [PY, str(EXAMPLES / "hello.py")]}}
        calls = [("agents.stop", {"names": ["hello"]}),
                 ("agents.start", {"names": ["hello#0"]}),
                 ("agents.restart", {"names": ["hello#0"]}),
                 ("agents.add", {"agents": table}),
                 ("agents.remove", {"names": ["hello"]}),
                 ("tasks.submit", {"agent": "hello", "input": {"name": "x"}})]
        for method, params in calls:
            for csrf, origin, detail in [
                    ("-", None, "forbidden: missing or wrong X-CSRF-Token header"),
                    (None, "http://evil.example",
                     "forbidden: Origin 'http://evil.example' is not this dashboard's")]:
                status, _, body = await p.call(method, params, csrf=csrf, origin=origin)
                assert (status, body) == (403, problem(403, "forbidden", detail,
                                                       jsonrpc.FORBIDDEN)), method
        assert [(r.state, r.pid) for r in agent.replicas] == [(State.READY, pid)]
        assert sorted(d.sup.agents) == ["hello"]
        assert (await d.dispatcher.call(OPERATOR, "tasks.list")).tasks == []

        # with both, the same calls act (the page's own way)
        status, _, accepted = await p.call("tasks.submit", calls[-1][1])
        assert status == 200 and accepted["status"] in ("queued", "running", "succeeded")
        status, _, info = await p.call("tasks.get", {"task_id": accepted["task_id"],
                                                     "wait": True, "input": True})
        assert (status, info["input"], info["output"]["greeting"]) == (
            200, {"name": "x"}, "hello, x")
        status, _, info = await p.call("tasks.get", {"task_id": accepted["task_id"]})
        assert status == 200 and "input" not in info
        status, _, body = await p.call("agents.add", {"agents": table})
        assert (status, body) == (200, {"added": ["x"]})
        await d.sup.wait_state("x", State.READY, timeout=20)
        status, _, body = await p.call("agents.remove", {"names": ["x"]})
        assert (status, body) == (200, {"removed": ["x"]})
        assert sorted(d.sup.agents) == ["hello"]


@pytest.mark.deadline(90)
async def test_a_tasks_input_is_read_over_rest_behind_tasks_read(tmp_path: Path) -> None:
    """`GET /api/v1/tasks/ID?input=true`: the input as sent, after the task finished (the
    journal keeps it with the row), for a token with tasks:read that sees the agent."""
    import aiohttp

    agents = hello("hello") + hello("other")
    async with in_process(tmp_path, agents, HTTP) as d:
        tokens = tokens_of(d.services.store)
        reader, _ = await tokens.create("reader", ["tasks:read"], None, None)
        runner, _ = await tokens.create("runner", ["tasks:run"], None, None)
        elsewhere, _ = await tokens.create("elsewhere", ["tasks:read"], "other", None)
        sent = {"name": "kept", "deep": [1, {"a": None}]}
        done = await d.dispatcher.call(OPERATOR, "tasks.run", m.TasksRun(
            agent="hello", input=msgspec.Raw(msgspec.json.encode(sent))))
        assert done.status == "succeeded"
        # gone from the engine's memory: the journal's row answers
        assert d.sup.tasks.active.get(done.task_id) is None
        url = f"{d.services.ui.url}/api/v1/tasks/{done.task_id}"
        async with aiohttp.ClientSession() as http:
            async def get(secret: str, query: str) -> tuple[int, Any]:
                async with http.get(url + query, headers={
                        "Authorization": f"Bearer {secret}"}) as r:
                    return r.status, await r.json(content_type=None)

            status, body = await get(reader, "?input=true")
            assert (status, body["input"]) == (200, sent)
            status, body = await get(reader, "")
            assert status == 200 and "input" not in body
            status, body = await get(runner, "?input=true")
            assert (status, body["detail"]) == (403, "forbidden: tasks.get needs the "
                                                     "tasks:read scope, which token runner "
                                                     "does not hold")
            status, body = await get(elsewhere, "?input=true")
            assert (status, body["detail"]) == (404, f"no such task: {done.task_id}")
            status, body = await get(reader, "?input=maybe")
            assert status == 400 and body["detail"].startswith("invalid params: ")


@pytest.mark.deadline(90)
async def test_a_limited_sessions_actions_stay_within_its_tokens_agents(
        tmp_path: Path) -> None:
    """A session asked for by a token limited to `web-*`: its new actions on other agents
    are refused as the token's own would be, and change nothing."""
    async with in_process(tmp_path, hello("hello") + hello("web-a"), HTTP) as d:
        _, webs = await tokens_of(d.services.store).create("webs", ["admin"], "web-*", None)
        caller = Caller(via="http", token="webs", scopes=webs.scopes, agents="web-*")
        sup = d.sup
        pids = {name: sup.agent(name).replicas[0].pid for name in ("hello", "web-a")}
        async with page(d) as p:
            await p.login((await login_link(d, caller)).url)
            table = {"command": [PY, str(EXAMPLES / "hello.py")]}
            got = {}
            for method, params in [
                    ("agents.stop", {"names": ["hello"]}),
                    ("agents.start", {"names": ["hello#0"]}),
                    ("agents.restart", {"names": ["hello"]}),
                    ("agents.remove", {"names": ["hello"]}),
                    ("agents.add", {"agents": {"other": table}}),
                    ("tasks.submit", {"agent": "hello", "input": None})]:
                status, _, body = await p.call(method, params)
                got[method] = (status, body["detail"])
            unseen = (404, "no such agent: hello (agents: web-a)")
            assert got == {
                "agents.stop": unseen, "agents.start": unseen, "agents.restart": unseen,
                "agents.remove": unseen, "tasks.submit": unseen,
                "agents.add": (403, "forbidden: token dashboard (webs) is limited to agents "
                                    "matching web-*: may not add other")}
            # its own agents it may act on
            status, _, body = await p.call("agents.restart", {"names": ["web-a#0"]})
            assert (status, body) == (200, {"restarted": ["web-a#0"]})
        assert sorted(sup.agents) == ["hello", "web-a"]
        assert sup.agent("hello").replicas[0].pid == pids["hello"]
        assert sup.agent("hello").replicas[0].state == State.READY
        assert (await d.dispatcher.call(OPERATOR, "tasks.list")).tasks == []


TRACED_AGENT = """
from corral.worker import run


def handle(task, ctx):
    for _ in range(3):
        ctx.call_tool("sc__echo", {"text": "x"})
    # (past twice the median call on a loaded host too, where a shorter one was not)
    ctx.call_tool("sc__slow", {"seconds": 2.0})
    try:
        ctx.call_tool("sc__die", {})
    except Exception as exc:  # the failed call is what the page marks
        return {"failed": str(exc)}
    return {"failed": None}


run(handle)
"""
