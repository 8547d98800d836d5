"""The audit link at the model gateway's door (decisions 1190, 1180, 1320): a task's
model call is one row of the audit table, `model.call` by `agent NAME#N`, naming its model
and its task, written through the store's writer (no daemon log line), its outcome `ok`
or its refusal's words (an answered one's row the store's cheaper `call_row`). The real
daemon in this loop, an agent using the real `openai` client (tests/model_agent.py) and
the stand-in provider (tests/servers/model_upstream.py)."""

from __future__ import annotations

from pathlib import Path

import msgspec

from .daemon_harness import in_process
from .servers.model_upstream import StandIn
from .test_model_gateway import fleet, provider_key, run_task, upstream  # noqa: F401


async def test_a_tasks_model_calls_are_audit_rows_a_refusal_in_its_words(
        tmp_path: Path, upstream: StandIn) -> None:  # noqa: F811
    """tokens_per_minute 20 and 15 tokens a call: two calls answered, the third refused
    naming the budget; three rows in turn, the third's outcome that refusal."""
    toml = fleet(tmp_path, upstream.url, agent_extra="tokens_per_minute = 20")
    async with in_process(tmp_path, toml) as d:
        res = await run_task(d, {"api": "chat", "model": "gpt-small", "calls": 3})
        assert res.status == "succeeded", res
        rows = [(r[3], msgspec.json.decode(r[4]), r[5], r[6])
                for r in await d.services.store.audit_log_now(1000)
                if r[3] == "model.call"]
        label = rows[0][1]["client"] if rows else None
        assert label is not None and label.startswith("writer#"), rows
        params = {"client": label, "model": "gpt-small", "task": res.task_id}
        assert [(method, said, who) for method, said, _, who in rows] == [
            ("model.call", params, f"agent {label}")] * 3, rows
        assert [outcome for _, _, outcome, _ in rows[:2]] == ["ok", "ok"], rows
        outcome = rows[2][2]
        assert outcome.startswith("error: budget exceeded: agent writer's tokens_per_minute "
                                  "is 20, 30 used; room again at "), outcome
        log = (tmp_path / "state" / "logs" / "corral.log").read_text()
        assert "writer" in log and "model.call" not in log
