"""The dashboard's inbox (docs/approvals.md, "Deciding"): a real daemon, a real SDK agent
whose tool call waits for a person (tests/test_approvals.py's fleet) and one that asks a
question (tests/asking_agent.py), decided in a real Chromium. Each ask shows in the inbox
as it is made (approvals.watch over the session's EventSource); approved there with
edited arguments, the call runs once with them and the task succeeds; denied with a
reason, the agent reads the tool's error; a question is answered once its answer fits the
schema; every decision is audited as the dashboard session's. An ask whose daemon was
SIGKILLed while the call waited shows on a fresh login after the restart; approved there,
the call runs once."""

from __future__ import annotations

import json
import shutil
import signal
from typing import Any

import pytest

from .daemon_harness import Daemon, shared_tmpdir
from .test_approvals import bump, counted, pending, wait_for
from .test_approvals import fleet as approvals_fleet
from .test_questions import fleet as questions_fleet

# autouse: the module's pages share a chromium (decision 962)
from .test_ui import chromium_of_module as chromium_of_module
from .test_ui import chromium_page, needs_chromium
from .test_ui import one_chromium as one_chromium

HTTP = '\n[http]\nlisten = "127.0.0.1:0"\n'
SCHEMA = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}


def open_inbox(d: Daemon, page: Any) -> None:
    """A fresh dashboard login with `corral ui`'s link, on the inbox."""
    page.goto(d.cli("ui").stdout.strip())
    page.click('nav a[href="#/inbox"]')


def resolves(d: Daemon) -> list[tuple[str | None, str]]:
    """approvals.resolve's audit rows, oldest first: who, and the outcome."""
    rows = [r for r in d.ask("audit.list", {"limit": 200})["entries"]
            if r["method"] == "approvals.resolve"]
    return [(r["who"], r["outcome"]) for r in sorted(rows, key=lambda r: r["time"])]


@needs_chromium
@pytest.mark.timeout(240)
def test_asks_are_decided_from_the_dashboards_inbox() -> None:
    from playwright.sync_api import expect

    home = shared_tmpdir()
    d = Daemon(home, approvals_fleet(home) + questions_fleet(), extra=HTTP)
    try:
        d.start()
        with chromium_page() as page:
            open_inbox(d, page)
            expect(page.locator("#inbox-pending")).to_have_text("No task waits for a person.")

            # a tool call held: its ask comes on the open page's stream
            first = d.ask("tasks.submit", {"agent": "writer", "input": bump(1)})["task_id"]
            card = page.locator('.ask[data-kind="approval"]')
            expect(card).to_have_count(1)
            [ask] = pending(d)
            expect(card).to_have_attribute("data-ask", ask["id"])
            expect(card.locator(".ask-task")).to_have_text(first)
            expect(card.locator(".ask-agent")).to_have_text("writer")
            expect(card.locator(".ask-tool")).to_have_text("counting__bump")
            expect(card.locator(".ask-args")).to_have_value('{\n  "i": 1\n}')
            expect(page.locator("#nav-inbox")).to_have_text("Inbox (1)")

            # arguments that are no object are refused in the page: nothing is sent
            card.locator(".ask-args").fill("[1]")
            card.locator(".decide-approved").click()
            expect(card.locator(".ask-error")).to_have_text("the arguments are a JSON object")
            assert [a["id"] for a in pending(d)] == [ask["id"]]

            # approved with edited arguments: the call runs once, with them
            card.locator(".ask-args").fill('{"i": 11}')
            card.locator(".decide-approved").click()
            done = d.ask("tasks.get", {"task_id": first, "wait": True})
            assert done["status"] == "succeeded", done
            assert done["output"][0]["content"][0]["text"] == "bumped 11"
            assert counted(d.dir) == ["11"]
            row = page.locator(f'#inbox-decided tr[data-ask="{ask["id"]}"]')
            expect(row.locator(".end")).to_have_text("approved")
            expect(row.locator(".by")).to_have_text("token dashboard (uid 0)")
            expect(row.locator(".data")).to_have_text('{"arguments":{"i":11}}')
            expect(page.locator("#inbox-pending")).to_have_text("No task waits for a person.")
            expect(page.locator("#nav-inbox")).to_have_text("Inbox")
            ended = d.ask("approvals.get", {"id": ask["id"]})
            assert (ended["end"], ended["by"], ended["subject"]["arguments"]) == (
                "approved", "token dashboard (uid 0)", {"i": 1})

            # a second ask, denied with a reason: the agent reads the tool's error
            second = d.ask("tasks.submit", {"agent": "writer", "input": bump(2)})["task_id"]
            expect(card).to_have_count(1)
            expect(card.locator(".ask-task")).to_have_text(second)
            [ask2] = pending(d)
            card.locator(".ask-reason").fill("not today")
            card.locator(".decide-denied").click()
            done = d.ask("tasks.get", {"task_id": second, "wait": True})
            assert done["status"] == "succeeded", done
            [result] = done["output"]
            assert result["isError"] is True
            assert result["content"][0]["text"] == (
                f"tool call counting__bump was denied by token dashboard (uid 0) "
                f"(ask {ask2['id']}): not today")
            assert counted(d.dir) == ["11"]
            row = page.locator(f'#inbox-decided tr[data-ask="{ask2["id"]}"]')
            expect(row.locator(".end")).to_have_text("denied")
            expect(row.locator(".data")).to_have_text('{"reason":"not today"}')

            # a question: an answer its schema refuses is the daemon's refusal, shown as
            # worded, the ask still pending; one that fits is the agent's answer
            third = d.ask("tasks.submit", {"agent": "asker", "input": {
                "prompt": "how many?", "schema": SCHEMA}})["task_id"]
            question = page.locator('.ask[data-kind="question"]')
            expect(question).to_have_count(1)
            [ask3] = wait_for(lambda: pending(d), "the question's ask")
            expect(question.locator(".ask-task")).to_have_text(third)
            expect(question.locator(".ask-prompt")).to_have_text("how many?")
            expect(question.locator(".ask-schema")).to_have_text(json.dumps(SCHEMA, indent=2))
            question.locator(".ask-answer").fill('{"n": "x"}')
            question.locator(".decide-answered").click()
            expect(question.locator(".ask-error")).to_have_text(
                f"the answer does not fit ask {ask3['id']}'s schema: n: 'x' is not of type "
                f"'integer'")
            assert [a["id"] for a in pending(d)] == [ask3["id"]]
            question.locator(".ask-answer").fill('{"n": 3}')
            question.locator(".decide-answered").click()
            done = d.ask("tasks.get", {"task_id": third, "wait": True})
            assert (done["status"], done["output"]) == (
                "succeeded", {"answer": {"n": 3}, "second": None, "attempt": 1})
            row = page.locator(f'#inbox-decided tr[data-ask="{ask3["id"]}"]')
            expect(row.locator(".end")).to_have_text("answered")
            expect(row.locator(".by")).to_have_text("token dashboard (uid 0)")
            assert page.evaluate("window.corralLive['approvals.ask']") >= 6
            assert page.evaluate("window.__cspViolations") == []

        # every decision audited as the dashboard session's, the refused answer too
        # (its rows are written by the store's writer, after each call has answered)
        rows = wait_for(lambda: len(r := resolves(d)) >= 4 and r, "four audited decisions")
        assert [who for who, _ in rows] == ["token dashboard (uid 0)"] * 4, rows
        assert [outcome.split(":")[0] for _, outcome in rows] == [
            "ok", "ok", "error", "ok"], rows
        assert d.stop() == 0
    finally:
        d.close()
        shutil.rmtree(home, ignore_errors=True)


@needs_chromium
@pytest.mark.timeout(240)
def test_an_ask_outlives_a_sigkill_and_approved_in_the_dashboard_its_call_runs_once(
        ) -> None:
    from playwright.sync_api import expect

    home = shared_tmpdir()
    d = Daemon(home, approvals_fleet(home), extra=HTTP)
    try:
        d.start()
        task_id = d.ask("tasks.submit", {"agent": "writer", "input": bump(5)})["task_id"]
        [ask] = wait_for(lambda: pending(d), "the call's ask")
        wait_for(lambda: d.ask("tasks.get", {"task_id": task_id})["status"] == "waiting",
                 "the task waiting")

        # SIGKILLed while the call waits, restarted on the same state directory
        assert d.stop(signal.SIGKILL) == -signal.SIGKILL
        d.start()
        assert [a["id"] for a in pending(d)] == [ask["id"]]
        wait_for(lambda: d.ask("tasks.get", {"task_id": task_id})["status"] == "waiting",
                 "the retry waiting on the same ask")
        assert counted(d.dir) == []

        with chromium_page() as page:
            open_inbox(d, page)
            card = page.locator('.ask[data-kind="approval"]')
            expect(card).to_have_count(1)
            expect(card).to_have_attribute("data-ask", ask["id"])
            expect(card.locator(".ask-task")).to_have_text(task_id)
            expect(card.locator(".ask-agent")).to_have_text("writer")
            expect(card.locator(".ask-tool")).to_have_text("counting__bump")
            expect(card.locator(".ask-args")).to_have_value('{\n  "i": 5\n}')
            expect(page.locator("#nav-inbox")).to_have_text("Inbox (1)")

            card.locator(".decide-approved").click()
            done = d.ask("tasks.get", {"task_id": task_id, "wait": True})
            assert done["status"] == "succeeded", done
            assert done["output"][0]["content"][0]["text"] == "bumped 5"
            row = page.locator(f'#inbox-decided tr[data-ask="{ask["id"]}"]')
            expect(row.locator(".end")).to_have_text("approved")
            expect(row.locator(".by")).to_have_text("token dashboard (uid 0)")
            expect(page.locator("#inbox-pending")).to_have_text("No task waits for a person.")
            assert page.evaluate("window.__cspViolations") == []

        assert counted(d.dir) == ["5"]
        assert pending(d) == []
        ended = d.ask("approvals.get", {"id": ask["id"]})
        assert (ended["end"], ended["by"], ended["subject"]) == (
            "approved", "token dashboard (uid 0)",
            {"tool": "counting__bump", "arguments": {"i": 5}})
        assert d.stop() == 0
    finally:
        d.close()
        shutil.rmtree(home, ignore_errors=True)
