"""The dashboard of a cluster node, in Chromium (tests/test_ui.py's browser): the nodes
table shows both nodes alive, a node killed by pid shown dead within its TTL and a beat,
and Redis gone shown as the reason the nodes cannot be read."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest

from ..daemon_harness import hello
from ..redis_harness import RedisServer
from ..test_ui import ARTIFACTS, WATCH_CSP, chromium_page, needs_chromium, token_login
from .harness import BEAT, TTL, nodes

HTTP = '\n[http]\nlisten = "127.0.0.1:0"\n'


def node_states(page: Any) -> dict[str, str]:
    """The nodes table as the page shows it: node -> its state's text."""
    rows = page.evaluate("""() => [...document.querySelectorAll('#nodes tbody tr')]
        .map(r => [r.dataset.node, r.querySelector('.state').innerText])""")
    return dict(rows)


@needs_chromium
@pytest.mark.timeout(180)
def test_the_dashboard_shows_the_nodes_and_one_going_away(tmp: Path,
                                                          redis: RedisServer) -> None:
    from playwright.sync_api import ConsoleMessage, expect

    serving = re.compile(r"^(ready|idle|busy)$")
    with nodes(tmp, redis, {"n1": hello("g1") + HTTP, "n2": hello("g2")}) as made:
        n1, n2 = made["n1"], made["n2"]
        r = n1.cli("ui")
        assert r.returncode == 0, r.stderr
        problems: list[str] = []

        def on_console(msg: ConsoleMessage) -> None:
            # the one error the page may log: nodes.list answering 503 (Redis gone)
            if msg.type in ("error", "warning") and "503" not in msg.text:
                problems.append(f"console {msg.type}: {msg.text}")

        with chromium_page() as page:
            page.on("console", on_console)
            page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
            page.goto(r.stdout.strip())
            expect(page.locator('#fleet tr[data-agent="g1"] .state')).to_have_text(serving)
            # both nodes, alive, each with its agents, as `corral nodes --json` has them
            expect(page.locator('#nodes tr[data-node="n1"] .state')).to_have_text("alive")
            expect(page.locator('#nodes tr[data-node="n2"] .state')).to_have_text("alive")
            listed = {x["node"]: x for x in n1.call("nodes.list")["nodes"]}
            assert sorted(listed) == ["n1", "n2"]
            for name, x in listed.items():
                cells = page.locator(f'#nodes tr[data-node="{name}"] td')
                expect(cells.nth(2)).to_have_text(str(x["incarnation"]))
                expect(cells.nth(6)).to_have_text(", ".join(x["agents"]))
            page.evaluate("window.sameDocument = true")
            page.screenshot(path=str(ARTIFACTS / "dashboard-nodes.png"), full_page=True)

            # n2 killed by pid: its key lapses within the TTL, and the page, which
            # reads the nodes at each stats sample (a second apart), shows it dead
            killed = time.monotonic()
            n2.kill9()
            expect(page.locator('#nodes tr[data-node="n2"] .state')).to_have_text(
                "dead", timeout=15_000)
            took = time.monotonic() - killed
            # the key's TTL, a beat, and the page's read a sample apart (plus slack for
            # a loaded machine)
            assert took <= TTL + BEAT + 1.0 + 2.0, took
            assert node_states(page) == {"n1": "alive", "n2": "dead"}
            assert page.evaluate("window.sameDocument") is True

            # a tenant's dashboard on the same node: the nodes are the operator's, and
            # are neither shown nor asked for (asked, they would be refused in the page)
            secret = n1.cli("token", "create", "td", "--tenant", "default", "--scope",
                            "admin").stdout.strip()
            # (a context of its own: cookies of its own)
            other = page.context.browser.new_context()
            try:
                tenant_page = other.new_page()
                tenant_page.add_init_script(WATCH_CSP)
                tenant_page.on("console", on_console)
                tenant_page.goto(token_login(r.stdout.split("/ui/")[0], secret))
                expect(tenant_page.locator('#fleet tr[data-agent="g1"] .state')
                       ).to_have_text(serving)
                tenant_page.wait_for_function(
                    "() => window.corralLive['stats.sample'] >= 3", timeout=15_000)
                assert tenant_page.locator("#nodes, #nodes-error").count() == 0
                assert tenant_page.evaluate("window.__cspViolations") == []
            finally:
                other.close()

            # Redis gone: the page says why the nodes cannot be read, and keeps the
            # last table under it
            redis.kill()
            error = page.locator("#nodes-error")
            expect(error).to_contain_text(
                f"The cluster's nodes cannot be read: the cluster's Redis at {redis.url} "
                "is unreachable (", timeout=15_000)
            expect(error).to_contain_text(
                "): the nodes cannot be listed (the table is the last read)")
            assert node_states(page) == {"n1": "alive", "n2": "dead"}
            # the fleet goes on: local work does not need Redis
            expect(page.locator('#fleet tr[data-agent="g1"] .state')).to_have_text(serving)
            page.screenshot(path=str(ARTIFACTS / "dashboard-nodes-redis-gone.png"),
                            full_page=True)
            assert page.evaluate("window.__cspViolations") == []
        assert problems == []
