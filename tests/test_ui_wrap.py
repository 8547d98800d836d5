"""The dashboard keeps long texts inside its cards (issue 57 item 4): the fleet table's
actions and an exit's reason wrap in a narrow window rather than run past the card, a
run's long error wraps inside its box, and a one-shot that exited cleanly shows `done`
(green, as `corral status` says it), not a red `terminated`."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest

from .conftest import ROOT
from .daemon_harness import PY, running_daemon, shared_tmpdir
from .test_daemon_cli import wait_until
from .test_ui import chromium_page, needs_chromium

LONG = "a" * 60  # an agent's name near corral's bound (64)
# a step whose task fails with one long word: a path, a token, JSON without spaces
FAILS = '''
from corral.worker import run
def handle(inp, ctx):
    raise RuntimeError("no-such-file:" + "/very-long-directory-name" * 30)
run(handle)
'''


def fleet(directory: Path) -> str:
    script = directory / "fails.py"
    script.write_text(FAILS)
    return textwrap.dedent(f"""
        [agents.{LONG}]
        command = ["sleep", "600"]
        protocol = "none"

        [agents.once]
        command = ["sh", "-c", "exit 2"]
        protocol = "none"
        restart = "never"
        exit_codes = [0, 2]

        [agents.fails]
        command = ["{PY}", "{script}"]
        env = {{ PYTHONPATH = "{ROOT}" }}

        [workflows.broken]
        [[workflows.broken.steps]]
        name = "only"
        agent = "fails"
    """)


def outside(page: Any, inner: str, outer: str) -> list[str]:
    """Those of the elements `inner` selects whose right edge is past `outer`'s, or whose
    text runs past their own box."""
    return list(page.evaluate("""([inner, outer]) => {
        const box = document.querySelector(outer).getBoundingClientRect();
        return [...document.querySelectorAll(inner)].filter((e) =>
            e.getBoundingClientRect().right > box.right + 0.5
            || e.scrollWidth > e.clientWidth + 1).map((e) => e.outerHTML.slice(0, 80));
    }""", [inner, outer]))


@needs_chromium
@pytest.mark.timeout(180)
def test_long_texts_wrap_inside_their_cards_and_a_clean_one_shot_is_done() -> None:
    from playwright.sync_api import expect

    tmp = shared_tmpdir()
    with running_daemon(tmp, fleet(tmp), extra='[http]\nlisten = "127.0.0.1:0"\n') as d:
        run_id = d.json("workflows", "run", "broken")["run_id"]
        link = d.json("ui")["url"]
        with chromium_page() as page:
            page.set_viewport_size({"width": 900, "height": 800})
            page.goto(link)
            once = page.locator('#fleet tr[data-agent="once"] .state')
            expect(once).to_have_text("done")
            assert "state-done" in (once.get_attribute("class") or "")
            expect(page.locator('#fleet tr[data-summary="once"] .state')).to_have_text(
                "1 done")
            expect(page.locator(f'#fleet tr[data-agent="{LONG}"] .state')).to_have_text(
                "ready")
            assert outside(page, "#fleet button", "main section:has(#fleet)") == []

            wait_until(lambda: d.ask("runs.get", {"run_id": run_id})["status"]
                       == "failed", what="the run failed")
            page.evaluate(f"location.hash = '#/run/{run_id}'")
            error = page.locator("#run-error")
            expect(error).to_contain_text("/very-long-directory-name")
            assert outside(page, "#run-error", "#run") == []
