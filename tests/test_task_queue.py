"""The task queue's order is total and its depth derived: the restart-churn sequence that
once left a task `queued` for ever (issue 8), as an operator ran it, and the order rules."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

from corral.supervisor import Supervisor
from corral.taskoptions import TaskOptions

from .conftest import EXAMPLES, PY, ROOT, agent, all_ready
from .daemon_harness import running_daemon, shared_tmpdir
from .test_daemon_cli import wait_until


def test_two_kills_under_retries_leave_no_task_queued_for_ever() -> None:
    agents = (f'[agents.churn]\ncommand = ["{PY}", "{EXAMPLES}/misbehave.py"]\n'
              f'env = {{ PYTHONPATH = "{ROOT}" }}\nbackoff_initial = 0.05\nreplicas = 1\n'
              "max_concurrent_tasks = 2\nretries = 1\nmax_restarts = 1\n")
    with running_daemon(shared_tmpdir(), agents) as d:
        ids = [d.cli("run", "churn", "--input", '{"do": "sleep", "seconds": 60}',
                     "--detach").stdout.strip() for _ in range(3)]

        def statuses() -> list[str]:
            return [d.json("task", t)["status"] for t in ids]

        wait_until(lambda: statuses() == ["running", "running", "queued"], what="2 running")
        first = d.status()["churn#0"]["pid"]
        os.kill(first, signal.SIGKILL)
        # both running tasks are retried, in their order, on the restarted replica
        wait_until(lambda: d.status()["churn#0"]["pid"] not in (None, first)
                   and statuses() == ["running", "running", "queued"], what="the retries")
        second = d.status()["churn#0"]["pid"]
        os.kill(second, signal.SIGKILL)
        wait_until(lambda: "queued" not in statuses() and "running" not in statuses(),
                   what="every task to end")
        infos = [d.json("task", t) for t in ids]
        assert [i["status"] for i in infos] == ["lost", "lost", "lost"]
        assert [[a["outcome"] for a in i["attempts"]] for i in infos] == [
            ["lost", "lost"], ["lost", "lost"], []]
        assert infos[2]["error"]["message"].startswith("agent churn is failed: ")
        stats = d.json("stats")["tasks"]["agents"]["churn"]
        assert (stats["queue_depth"], stats["running"], stats["lost"]) == (0, 0, 3)


async def test_equal_priorities_run_in_arrival_order_and_a_retry_keeps_its_place(
        sup: Supervisor, tmp_path: Path) -> None:
    sup.add(agent("one", "misbehave.py", max_concurrent_tasks=1, retries=1))
    await all_ready(sup, "one")
    marker = tmp_path / "crashed"
    first = sup.tasks.submit("one", {"do": "crash-once", "marker": str(marker)})
    waiting = [sup.tasks.submit("one", {"do": "echo", "n": i}, TaskOptions(priority=p))
               for i, p in enumerate([0, 0, 5, 0])]
    assert sup.tasks.stats()["agents"]["one"]["queue_depth"] == 4
    for t in [first, *waiting]:
        await t.done
    assert first.status == "succeeded" and len(first.attempts) == 2
    # priority 5 first; then the retried task, before every later task of its priority
    order = sorted([first, *waiting], key=lambda t: t.attempts[-1].started)
    assert [t.id for t in order] == [waiting[2].id, first.id, waiting[0].id, waiting[1].id,
                                     waiting[3].id]


async def test_cancelling_a_queued_task_takes_it_out_of_the_depth(sup: Supervisor) -> None:
    sup.add(agent("busy", "misbehave.py", max_concurrent_tasks=1))
    await all_ready(sup, "busy")
    running = sup.tasks.submit("busy", {"do": "sleep", "seconds": 30})
    queued = [sup.tasks.submit("busy", {"do": "echo"}) for _ in range(3)]
    sup.tasks.cancel(queued[1].id)
    stats = sup.tasks.stats()["agents"]["busy"]
    assert (stats["queue_depth"], stats["cancelled"]) == (2, 1)
    sup.tasks.cancel(running.id)
    for t in (queued[0], queued[2]):
        await t.done
    assert [t.status for t in queued] == ["succeeded", "cancelled", "succeeded"]
    assert sup.tasks.stats()["agents"]["busy"]["queue_depth"] == 0
    assert json.loads(json.dumps(sup.tasks.stats()))  # plain data


async def test_every_agent_has_task_stats_from_the_start_and_a_removed_one_none(
        sup: Supervisor) -> None:
    sup.add(agent("idle", autostart=False))
    sup.add(agent("worked", "misbehave.py"))
    await all_ready(sup, "worked")
    # before any task: an entry of zeros (a client polling for its queue finds it at once)
    idle = sup.tasks.stats()["agents"]["idle"]
    assert {k: idle[k] for k in ("accepted", "refused", "queue_depth", "running")} == {
        "accepted": 0, "refused": 0, "queue_depth": 0, "running": 0}
    assert idle["success_rate"] is None and idle["latency_ms"]["window"] == 0
    await sup.tasks.submit("worked", {"do": "echo"}).done
    stats = sup.tasks.stats()
    assert sorted(stats["agents"]) == ["idle", "worked"]
    assert (stats["agents"]["worked"]["succeeded"], stats["total"]["succeeded"]) == (1, 1)
    await sup.remove("idle")
    assert sorted(sup.tasks.stats()["agents"]) == ["worked"]
