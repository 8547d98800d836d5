"""The dashboard's task page says what a task waits for (issue 78): a real daemon, a real
SDK agent whose tool call waits for a person (tests/test_approvals.py's fleet), its page
open in a real Chromium. The page names the approval it waits for and links to its card
in the inbox; approved there, the task runs on and its page no longer says it waits. The
fleet shows the replica whose task waits so as waiting, not busy."""

from __future__ import annotations

import re
import shutil

import pytest

from .daemon_harness import Daemon, shared_tmpdir
from .test_approvals import bump, counted, pending, wait_for
from .test_approvals import fleet as approvals_fleet
from .test_ui import chromium_page, needs_chromium

HTTP = '\n[http]\nlisten = "127.0.0.1:0"\n'


@needs_chromium
@pytest.mark.timeout(240)
def test_a_task_waiting_for_approval_names_it_and_links_to_it() -> None:
    from playwright.sync_api import expect

    home = shared_tmpdir()
    d = Daemon(home, approvals_fleet(home), extra=HTTP)
    try:
        d.start()
        task_id = d.ask("tasks.submit", {"agent": "writer", "input": bump(3)})["task_id"]
        [ask] = wait_for(lambda: pending(d), "the call's ask")
        wait_for(lambda: d.ask("tasks.get", {"task_id": task_id})["status"] == "waiting",
                 "the task waiting")
        # a second task queued behind it: the replica's one slot is the waiting task's
        second = d.ask("tasks.submit", {"agent": "writer", "input": bump(4)})["task_id"]
        queued = d.ask("tasks.get", {"task_id": second})
        assert queued["status"] == "queued" and queued["waiting"], queued
        with chromium_page() as page:
            page.goto(d.cli("ui").stdout.strip())
            # the fleet: the replica whose one task waits for a person is waiting, not
            # busy (agents.sample's waiting_for_person)
            replica = page.locator('#fleet tr[data-agent="writer"][data-replica="0"] .state')
            expect(replica).to_have_text("waiting")
            page.goto(page.url.split("#")[0] + f"#/task/{task_id}")
            expect(page.locator("#task h2 .state")).to_have_text("waiting")
            waiting = page.locator("#task-waiting")
            expect(waiting.locator("strong")).to_have_text("Waiting for a person:")
            link = waiting.locator(f'li[data-ask="{ask["id"]}"] a.waiting-ask')
            expect(link).to_have_text('approval of counting__bump {"i":3}')
            expect(link).to_have_attribute("href", f"#/inbox/{ask['id']}")
            expect(page.locator("#task-output")).to_have_text("(waiting…)")

            # the queued task's page says why it has not started, as tasks.get does, and
            # links to its agent, where capacity is acted on
            page.goto(page.url.split("#")[0] + f"#/task/{second}")
            expect(page.locator("#task h2 .state")).to_have_text("queued")
            why = d.ask("tasks.get", {"task_id": second})["waiting"]
            expect(page.locator("#task-waiting")).to_have_text(
                f"Not started: {why} (agent writer)")
            expect(page.locator("#task-waiting a")).to_have_attribute("href", "#/agent/writer")
            page.go_back()

            # the link opens the inbox on the ask's card, marked; approved there, the
            # call runs once and the task's page no longer says it waits
            link.click()
            card = page.locator(".ask.focused")
            expect(card).to_have_count(1)
            expect(card).to_have_attribute("data-ask", ask["id"])
            expect(card).to_be_in_viewport()
            expect(card.locator("p").first).to_contain_text(", agent writer of tenant")
            card.locator(".decide-approved").click()
            done = d.ask("tasks.get", {"task_id": task_id, "wait": True})
            assert done["status"] == "succeeded", done
            assert counted(d.dir) == ["3"]
            page.go_back()
            expect(page.locator("#task h2 .state")).to_have_text("succeeded")
            expect(page.locator("#task-waiting")).to_have_count(0)
            # the second runs now, and asks in turn: approved, the replica is free
            [ask2] = wait_for(lambda: pending(d), "the second call's ask")
            assert ask2["task_id"] == second
            assert d.cli("approvals", "approve", ask2["id"]).returncode == 0
            done = d.ask("tasks.get", {"task_id": second, "wait": True})
            assert done["status"] == "succeeded", done
            page.click('nav a[href="#/fleet"]')
            expect(replica).to_have_text(re.compile("^(ready|idle)$"))
            assert page.evaluate("window.__cspViolations") == []
        assert d.stop() == 0
    finally:
        d.close()
        shutil.rmtree(home, ignore_errors=True)
