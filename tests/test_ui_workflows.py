"""The dashboard's workflow runs (issue 40): the runs listed, a run's graph drawn live in
chromium — each step coloured by its state as the run goes, a click on a step opening
its task (a map's: its items) — under the page's CSP."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from .conftest import ROOT
from .daemon_harness import PY, running_daemon, shared_tmpdir
from .test_ui import ARTIFACTS, chromium_page, needs_chromium

# a step that holds until its gate file exists: the test decides when the run goes on
GATED = '''
import os, time
from pathlib import Path
from corral.worker import run

def handle(inp, ctx):
    if isinstance(inp, dict) and inp.get("gate"):
        while not Path(inp["gate"]).exists():
            time.sleep(0.02)
    return inp

run(handle)
'''

LIVE = """
[workflows.live]
[[workflows.live.steps]]
name = "first"
agent = "gated"
input = { n = "$input.items" }
[[workflows.live.steps]]
name = "hold"
agent = "gated"
input = { gate = "$input.gate", items = "$input.items", after = "$steps.first.output" }
[[workflows.live.steps]]
name = "each"
agent = "gated"
map = "$steps.hold.output.items"
concurrency = 2
input = { x = "$item" }
[[workflows.live.steps]]
name = "join"
agent = "gated"
join = "each"
"""


def fleet(directory: Path) -> str:
    script = directory / "gated.py"
    script.write_text(GATED)
    return textwrap.dedent(f"""
        [agents.gated]
        command = ["{PY}", "{script}"]
        env = {{ PYTHONPATH = "{ROOT}" }}
        replicas = 2
        stop_timeout = 5.0
    """) + LIVE


@needs_chromium
@pytest.mark.timeout(180)
def test_a_runs_graph_is_drawn_live_and_a_step_opens_its_task() -> None:
    from playwright.sync_api import expect

    tmp = shared_tmpdir()
    gate = tmp / "gate"
    with running_daemon(tmp, fleet(tmp), extra='[http]\nlisten = "127.0.0.1:0"\n') as d:
        run_id = d.json("workflows", "run", "live", "--input",
                        f'{{"items": [1, 2, 3], "gate": "{gate}"}}')["run_id"]
        r = d.cli("ui")
        assert r.returncode == 0, r.stderr
        with chromium_page() as page:
            page.goto(r.stdout.strip())
            page.click('nav a[href="#/runs"]')
            expect(page.locator(f'#runs tr[data-run="{run_id}"]')).to_contain_text("live")
            # filtered as runs.list filters (the running run is no failed one)
            page.select_option("#run-status", "failed")
            expect(page.locator("#runs tbody tr")).to_have_count(0)
            page.select_option("#run-status", "")
            page.select_option("#run-workflow", "live")
            expect(page.locator(f'#runs tr[data-run="{run_id}"]')).to_be_visible()
            expect(page.locator("#runs-older")).to_have_count(0)  # one page
            page.click(f'#runs a[href="#/run/{run_id}"]')
            graph = page.locator("#run-graph")
            node = graph.locator(".node")
            expect(node).to_have_count(4)
            # while the gate is shut: first done, hold running, what waits for it pending
            expect(graph.locator('.node[data-step="hold"]')).to_have_attribute(
                "data-status", "running")
            expect(graph.locator('.node[data-step="first"]')).to_have_attribute(
                "data-status", "succeeded")
            for later in ("each", "join"):
                expect(graph.locator(f'.node[data-step="{later}"]')).to_have_attribute(
                    "data-status", "pending")
            edges = graph.locator(".edge")
            assert sorted((e.get_attribute("data-from"), e.get_attribute("data-to"))
                          for e in edges.all()) == [
                ("each", "join"), ("first", "hold"), ("hold", "each")]
            # coloured by state: each state's fill is its own
            fills = page.evaluate("""() => Object.fromEntries([...document.querySelectorAll(
                '#run-graph .node')].map(n => [n.dataset.status,
                getComputedStyle(n.querySelector('rect')).fill]))""")
            assert len(set(fills.values())) == 3, fills
            page.screenshot(path=str(ARTIFACTS / "dashboard-run-graph-live.png"),
                            full_page=True)

            heard = page.evaluate("window.corralLive['events.event']")
            gate.write_text("")  # the run goes on; the page follows it by its events
            for step in ("hold", "each", "join"):
                expect(graph.locator(f'.node[data-step="{step}"]')).to_have_attribute(
                    "data-status", "succeeded", timeout=30_000)
            assert page.evaluate("window.corralLive['events.event']") > heard
            expect(page.locator("#run h2 .state")).to_have_text("succeeded")
            expect(graph.locator('.node[data-step="each"] .node-detail')).to_contain_text(
                "3/3")
            view = d.json("run-status", run_id)

            # a map step: its items, each with its task
            graph.locator('.node[data-step="each"]').click()
            items = page.locator("#run-items tbody tr")
            expect(items).to_have_count(3)
            tasks = {s["item"]: s["task_id"] for s in view["steps"] if s["step"] == "each"
                     and s["item"] is not None}
            expect(items.nth(1).locator("a")).to_have_text(tasks[1])

            # a plain step: a click opens its task
            first = next(s for s in view["steps"] if s["step"] == "first")
            graph.locator('.node[data-step="first"]').click()
            expect(page.locator("#task h2").first).to_contain_text(first["task_id"])
            assert page.url.endswith(f"#/task/{first['task_id']}")
            page.screenshot(path=str(ARTIFACTS / "dashboard-run-task.png"), full_page=True)
            assert page.evaluate("window.__cspViolations") == []
