"""A tenant's runtime agent stored before corral refused its env (issue 88): a table a
tenant's caller posted with `CORRAL_MCP_SOCKET` (bound writable into its sandbox) or a
`PYTHONPATH` outside its cwd was accepted then, and restored at every start since. The
tenant's env rule (corral/daemon/tenantbinds.py) is applied where it is restored: such an
agent is not started, the reason in the daemon's log; the tenant's other agents start."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

from .daemon_harness import EXAMPLES, PY, ROOT, in_process

TENANT = "\n[tenants.acme]\n"


def _table(env: dict[str, str]) -> dict[str, object]:
    return {"command": [PY, f"{EXAMPLES}/hello.py"], "tenant": "acme",
            "env": {"PYTHONPATH": str(ROOT), **env}, "backoff_initial": 0.05}


async def test_a_tenants_agent_stored_with_a_binding_env_is_not_restored(
        tmp_path: Path, capfd: object) -> None:
    async with in_process(tmp_path, "", TENANT) as d:
        db = Path(d.services.store.path)
    stored = {"fine": _table({}),
              "box": _table({"CORRAL_MCP_SOCKET": "/root"}),
              "lib": _table({"PYTHONPATH": f"{ROOT}:/root"})}
    with sqlite3.connect(db) as conn:  # as an older corral kept them
        for name, table in stored.items():
            conn.execute("INSERT INTO runtime_agents (name, spec, added_at) VALUES (?, ?, ?)",
                         (name, json.dumps(table), time.time()))
    async with in_process(tmp_path, "", TENANT) as d:
        assert sorted(d.sup.agents) == ["fine"]
        # kept as it was: the operator removes it, or sees it again after a fix
        assert sorted(d.services.store.runtime_agents()) == ["box", "fine", "lib"]
    err = capfd.readouterr().err  # type: ignore[attr-defined]
    said = [line for line in err.splitlines() if "not restored" in line]
    assert said == [
        "corral: runtime agent box not restored: agents.box.env: CORRAL_MCP_SOCKET: names "
        "starting CORRAL_, PYTHON, LD_ are corral's and its operator's to set (what they "
        "name is bound into the sandbox or run); stored before corral refused it of tenant "
        "acme's agents: remove it and add it again without (docs/tenants.md)",
        'corral: runtime agent lib not restored: agents.lib.env: PYTHONPATH names "/root": '
        f"a tenant's agent imports from its cwd ({tmp_path}) and corral's SDK ({ROOT}) "
        "alone, which the sandbox binds; stored before corral refused it of tenant acme's "
        "agents: remove it and add it again without (docs/tenants.md)"], err
