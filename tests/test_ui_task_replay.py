"""The dashboard's task page of a retried task and of one that reported usage (issue 78),
in a real Chromium: the retry's steps answered from the step journal are marked replayed
in the waterfall and counted in the attempts table; the usage the worker reported is on
the page, per model; at 1280 px the page has no horizontal scroll, its attempts table
none of its own either (a long error wraps).

Real processes: a daemon with [tracing] and a task journal, tests/durable_agent.py (its
first attempt SIGKILLs itself after three calls of the counting MCP server, its retry is
given them back from the journal) and examples/misbehave.py (usage/report)."""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import pytest

from .conftest import EXAMPLES, ROOT
from .daemon_harness import PY, Daemon, counting_fleet, shared_tmpdir
from .test_ui import chromium_page, needs_chromium

HTTP = '\n[http]\nlisten = "127.0.0.1:0"\n\n[tracing]\nexport_interval = 0.05\n'
REPORTS = [{"input_tokens": 1200, "output_tokens": 340, "cost_usd": 0.0125, "model": "m-big"},
           {"input_tokens": 800, "output_tokens": 60, "cost_usd": 0.002, "model": "m-small"},
           {"input_tokens": 1000, "output_tokens": 100, "cost_usd": 0.0105, "model": "m-big"}]


def fleet(tmp: Path) -> str:
    return counting_fleet(tmp, "durable", "durable_agent.py") + textwrap.dedent(f"""
        [agents.user]
        command = ["{PY}", "{EXAMPLES}/misbehave.py"]
        env = {{ PYTHONPATH = "{ROOT}" }}
    """)


# what at 1280 px scrolls sideways: the page, or a section of it (each scrolls its own)
SIDEWAYS = """() => [document.scrollingElement, ...document.querySelectorAll('section')]
    .filter((e) => e.scrollWidth > e.clientWidth + 1)
    .map((e) => `${e.id || e.tagName}: ${e.scrollWidth} > ${e.clientWidth}`)"""


@needs_chromium
@pytest.mark.timeout(240)
def test_a_retrys_replayed_steps_and_a_tasks_usage_are_on_its_page() -> None:
    from playwright.sync_api import expect

    home = shared_tmpdir()
    d = Daemon(home, fleet(home), extra=HTTP)
    try:
        d.start()
        retried = d.ask("tasks.submit", {"agent": "durable", "input": {
            "calls": 4, "stop_after": 3, "how": "die", "marker": str(home / "marker"),
            "pad": "x" * 300}})["task_id"]
        done = d.ask("tasks.get", {"task_id": retried, "wait": True})
        assert done["status"] == "succeeded", done
        assert [a.get("replayed") for a in done["attempts"]] == [None, 3], done["attempts"]
        used = d.ask("tasks.submit", {"agent": "user", "input": {
            "do": "usage", "reports": REPORTS}})["task_id"]
        assert d.ask("tasks.get", {"task_id": used, "wait": True})["status"] == "succeeded"
        # an error of 400 characters, one word of 200 among them: its cell wraps
        wordy = "no-such-thing-" + "x" * 200 + " and" * 50
        failed = d.ask("tasks.submit", {"agent": "user", "input": {"do": wordy}})["task_id"]
        assert d.ask("tasks.get", {"task_id": failed, "wait": True})["status"] == "failed"

        with chromium_page() as page:
            page.goto(d.cli("ui").stdout.strip())
            base = page.url.split("#")[0]
            page.goto(f"{base}#/task/{retried}")
            rows = page.locator("#waterfall g.span-row")
            expect(rows.first).to_be_visible()
            marked = page.locator('#waterfall g.span-row[data-replayed="true"]')
            expect(marked).to_have_count(3)
            for i in range(3):
                g = marked.nth(i)
                expect(g).to_have_attribute("data-name", "tools/call bump")
                expect(g.locator(".span-name")).to_have_text("tools/call bump ↺ replayed")
                expect(g.locator("rect")).to_have_attribute("class", "bar replayed")
                expect(g.locator("title")).to_contain_text(
                    "replayed: answered from the task's step journal, not made again")
            # the live calls are not marked: the first attempt's three and the retry's one
            live = page.locator('#waterfall g.span-row[data-name="tools/call bump"]'
                                ':not([data-replayed])')
            expect(live).to_have_count(4)
            attempts = page.locator("#attempts tbody tr")
            expect(attempts).to_have_count(2)
            expect(attempts.nth(0).locator(".replayed")).to_have_text("\u2013")  # (an en dash)
            expect(attempts.nth(1).locator(".replayed")).to_have_text("3")
            expect(page.locator("#task-usage")).to_have_text("No usage reported.")
            assert page.evaluate(SIDEWAYS) == []

            page.goto(f"{base}#/task/{used}")
            expect(page.locator("#task-usage .usage-total")).to_have_text(
                "3,000 in, 500 out tokens, $0.0250")
            expect(page.locator("#task-usage .note")).to_have_text("(3 reports)")
            big = page.locator('#task-models tr[data-model="m-big"] td')
            expect(big).to_have_text(["m-big", "2,200", "440", "$0.0230", "2"])
            small = page.locator('#task-models tr[data-model="m-small"] td')
            expect(small).to_have_text(["m-small", "800", "60", "$0.0020", "1"])
            assert page.evaluate(SIDEWAYS) == []

            page.goto(f"{base}#/task/{failed}")
            expect(page.locator("#attempts .attempt-error")).to_have_text(
                f"unknown misbehaviour: {wordy}")
            assert page.evaluate(SIDEWAYS) == []
            assert page.evaluate("window.__cspViolations") == []
        assert d.stop() == 0
    finally:
        d.close()
        shutil.rmtree(home, ignore_errors=True)
