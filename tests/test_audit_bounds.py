"""The audit table is bounded per party (issue 52): each tenant's callers' rows, and the
operator's apart, past `audit_max_rows` lose their oldest; a tenant's refused calls never
push out the operator's rows or another tenant's."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp

from .daemon_harness import PY, Daemon, free_port, running_daemon, shared_tmpdir

KEEP = 20
CALLS = 60


def audited(d: Daemon) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = d.json("audit", "-n", "100000")["entries"]
    return entries


def wait_for_row(d: Daemon, name: str) -> list[dict[str, Any]]:
    """The audit once the refusal naming agent `name` is in it (rows are written off
    the loop, batched)."""
    deadline = time.monotonic() + 60
    while True:
        rows = audited(d)
        if any(name in str(e["params"]) for e in rows):
            return rows
        assert time.monotonic() < deadline, f"no audit row of {name}"
        time.sleep(0.1)


def test_a_tenants_refused_calls_keep_at_most_its_bound_and_push_out_no_one_elses() -> None:
    port = free_port()
    tmp = shared_tmpdir()
    with running_daemon(tmp, f"""
[tenants.acme]
[tenants.globex]
[http]
listen = "127.0.0.1:{port}"
""", extra=f"audit_max_rows = {KEEP}") as d:
        ops = [d.json("token", "create", f"ops{i}", "--scope", "admin")["token"]
               for i in range(3)]
        acme = d.json("token", "create", "acme-ci", "--tenant", "acme", "--scope",
                      "agents:write")["token"]
        globex = d.json("token", "create", "globex-ci", "--tenant", "globex", "--scope",
                        "agents:write")["token"]
        assert len(ops) == 3

        async def refused(token: str, name: str) -> None:
            async with aiohttp.ClientSession() as http, http.post(
                    f"http://127.0.0.1:{port}/api/v1/agents",
                    json={"agents": {name: {"command": [PY, "x.py"], "user": "root"}}},
                    headers={"Authorization": f"Bearer {token}"}) as r:
                assert r.status == 403, await r.text()

        async def flood() -> None:
            await refused(globex, "globex-once")
            for i in range(CALLS):
                await refused(acme, f"greedy{i}")

        asyncio.run(flood())
        rows = wait_for_row(d, f"greedy{CALLS - 1}")
        acme_rows = [e for e in rows if e["tenant"] == "acme"]
        assert KEEP <= len(acme_rows) <= KEEP + 1, len(acme_rows)
        # the newest kept, the oldest gone
        assert f"greedy{CALLS - 1}" in str(acme_rows[-1]["params"])
        assert not any("greedy0'" in str(e["params"]) for e in acme_rows)
        # the operator's rows (its token creates) and globex's refusal are all there
        made = [e["params"]["name"] for e in rows
                if e["method"] == "tokens.create" and e["tenant"] is None]
        assert made == ["ops0", "ops1", "ops2", "acme-ci", "globex-ci"], made
        assert [e["tenant"] for e in rows if "globex-once" in str(e["params"])] == ["globex"]
