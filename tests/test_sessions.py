"""Sessions (issue 39 item 4, docs/durable.md#sessions): a session's tasks run one at a
time in submission order, on the replica that holds the session, each given the state
the last one checkpointed; across a worker's SIGKILL, the daemon's SIGKILL and a
hibernation every turn is kept, in order, once. Expiry, `corral sessions`, a tenant's
view, and the refusals.

Real processes throughout: the daemon (in this loop, or a process the test SIGKILLs) and
SDK workers (tests/session_agent.py)."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import textwrap
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest

from corral import jsonrpc
from corral.daemon.caller import Caller
from corral.daemon.tokens import tokens_of
from corral.jsonrpc import RpcError
from corral.supervisor.tasks.sessions import SessionKey
from corral.taskoptions import TaskOptions

from .conftest import ROOT
from .daemon_harness import PY, in_process
from .daemon_harness import Daemon as DaemonProcess
from .test_daemon_cli import tmp, wait_until  # noqa: F401  (tmp: a fixture)

HERE = Path(__file__).parent
OPERATOR = Caller(via="socket")


def chat(name: str = "chat", extra: str = "") -> str:
    return textwrap.dedent(f"""
        [agents.{name}]
        command = ["{PY}", "{HERE}/session_agent.py"]
        env = {{ PYTHONPATH = "{ROOT}" }}
        retries = 1
        max_concurrent_tasks = 4
    """) + textwrap.dedent(extra)


def turn(n: int, **more: Any) -> str:
    return json.dumps({"turn": n, **more})


# -- the twenty turns -------------------------------------------------------------------------
@pytest.mark.timeout(180)
def test_twenty_turns_across_a_worker_kill_a_daemon_kill_and_a_hibernation(
        tmp: Path) -> None:  # noqa: F811
    d = DaemonProcess(tmp, chat(extra="hibernate_after = 1.0\n"))
    marker = tmp / "marker"
    task_ids: list[str] = []

    def run(n: int, *extra: str, **more: Any) -> dict[str, Any]:
        r = d.cli("run", "chat", "--session", "s1", "--input", turn(n, **more), "--json",
                  *extra)
        assert r.returncode == 0, r.stderr
        res = json.loads(r.stdout)
        task_ids.append(res["task_id"])
        return res

    try:
        d.start()
        for n in range(1, 6):
            assert run(n)["output"]["turns"] == list(range(1, n + 1))
        # 6: the worker SIGKILLs itself before its checkpoint; the retry, on the
        # restarted worker, is given the state of turn 5
        res = run(6, how="die", marker=str(marker))
        assert [a["outcome"] for a in res["attempts"]] == ["lost", "succeeded"]
        assert res["output"]["turns"] == list(range(1, 7))
        for n in range(7, 11):
            assert run(n)["output"]["turns"] == list(range(1, n + 1))
        # 11: the daemon is SIGKILLed while the turn runs; the next daemon retries it with
        # the session's state as turn 10 left it
        marker.unlink()
        r = d.cli("run", "chat", "--session", "s1", "--detach", "--input",
                  turn(11, how="hang", marker=str(marker)))
        assert r.returncode == 0, r.stderr
        task_ids.append(r.stdout.strip())
        wait_until(marker.exists, 30, "turn 11 running")
        assert d.proc is not None
        d.proc.send_signal(signal.SIGKILL)
        d.proc.wait(10)
        d.start()
        r = d.cli("task", task_ids[-1], "--wait", "--json")
        info = json.loads(r.stdout)
        assert info["status"] == "succeeded", info
        assert info["output"]["turns"] == list(range(1, 12))
        assert info["attempts"][0]["error"] == "daemon restarted"
        for n in range(12, 16):
            assert run(n)["output"]["turns"] == list(range(1, n + 1))
        # hibernation: the agent goes to zero; the next turn wakes it, with the state
        wait_until(lambda: d.status_json()["elastic"]["chat"]["state"] == "asleep", 30,
                   "chat hibernated")
        for n in range(16, 21):
            out = run(n)["output"]
            assert out["turns"] == list(range(1, n + 1)) and out["given"]
        # `corral sessions`: the session, its twenty tasks, the replica that holds it
        listed = d.cli("sessions").stdout.splitlines()
        assert listed[0].split() == ["TENANT", "AGENT", "SESSION", "TASKS", "LAST", "USE",
                                     "HOLDER", "STATE", "NOW"]
        row = listed[1].split()
        assert row[:4] == ["default", "chat", "s1", "20"] and row[-3:] == ["chat#0", "62B", "idle"]
        shown = d.json("sessions", "show", "chat", "s1")
        assert [t["task_id"] for t in shown["history"]] == task_ids
        assert {t["status"] for t in shown["history"]} == {"succeeded"}
        assert shown["session"]["state_bytes"] == len(json.dumps(
            {"turns": list(range(1, 21))}, separators=(",", ":")))
        # ended: dropped, and a next turn starts afresh
        r = d.cli("sessions", "end", "chat", "s1")
        assert r.returncode == 0, r.stderr
        assert r.stdout == ("session s1 of chat ended: its state (62B) and the history "
                            "of its 20 tasks dropped\n")
        assert d.cli("sessions").stdout.splitlines()[1:] == []
        out = run(1)["output"]
        assert out["turns"] == [1] and not out["given"]
    finally:
        d.close()


# -- in the daemon's loop ---------------------------------------------------------------------
async def call(d: Any, method: str, params: Any = None, caller: Caller = OPERATOR) -> Any:
    return await d.dispatcher.call(caller, method, params)


async def refused(d: Any, method: str, params: Any, caller: Caller = OPERATOR
                  ) -> tuple[int, str]:
    with pytest.raises(RpcError) as e:
        await d.dispatcher.call(caller, method, params)
    return e.value.code, e.value.message


def fifo(path: Path) -> str:
    os.mkfifo(path)
    return str(path)


async def release(path: str) -> None:
    """Open the FIFO a held task waits on, and close it: the task goes on."""
    def go() -> None:
        with open(path, "wb"):
            pass
    await asyncio.to_thread(go)


async def test_two_sessions_interleaved_keep_their_order_each(tmp_path: Path) -> None:
    async with in_process(tmp_path, chat()) as d:
        tasks = d.sup.tasks
        submitted = [tasks.submit("chat", {"turn": n}, TaskOptions(session=s))
                     for n in range(1, 9) for s in ("a", "b")]
        for t in submitted:
            await asyncio.wait_for(asyncio.shield(t.done), 30)
        assert {t.status for t in submitted} == {"succeeded"}
        for s in ("a", "b"):
            mine = [t for t in submitted if t.session == s]
            assert [t.output["turns"] for t in mine] == [list(range(1, n + 1))
                                                         for n in range(1, 9)]
            # one at a time: each started after the one before it ended
            for before, after in itertools.pairwise(mine):
                assert after.attempts[0].started >= before.attempts[-1].finished
        listed = await call(d, "sessions.list", {"agent": "chat"})
        assert [(s.session, s.tasks, s.running, s.waiting) for s in listed.sessions] == [
            ("a", 8, None, 0), ("b", 8, None, 0)]


async def test_a_task_of_a_busy_session_waits_and_says_why(tmp_path: Path) -> None:
    async with in_process(tmp_path, chat(extra="replicas = 2\n")) as d:
        tasks = d.sup.tasks
        # replica 0 busy with a task of another session: the first turn of s goes to 1
        other = tasks.submit("chat", {"turn": 0, "hold": fifo(tmp_path / "f0")},
                             TaskOptions(session="other"))
        first = tasks.submit("chat", {"turn": 1, "hold": fifo(tmp_path / "f1")},
                             TaskOptions(session="s"))
        second = tasks.submit("chat", {"turn": 2}, TaskOptions(session="s"))
        assert (other.replica.index, first.replica.index) == (0, 1)  # type: ignore[union-attr]
        info = await tasks.info(second.id)
        assert info.status == "queued"
        assert info.waiting == f"session s: task {first.id} runs"
        shown = await call(d, "sessions.get", {"agent": "chat", "session": "s"})
        assert (shown.session.running, shown.session.waiting) == (first.id, 1)
        assert [t.task_id for t in shown.history] == [first.id, second.id]
        assert (await refused(d, "sessions.end", {"agent": "chat", "session": "s"})) == (
            jsonrpc.CONFLICT, f"session s of agent chat has 2 unfinished tasks: task "
                              f"{first.id} is running; cancel them or wait for them to end")
        await release(str(tmp_path / "f0"))
        await asyncio.wait_for(asyncio.shield(other.done), 30)
        await release(str(tmp_path / "f1"))
        await asyncio.wait_for(asyncio.shield(second.done), 30)
        assert second.output["turns"] == [1, 2]
        # both replicas were free: the session's turn went to the one that holds it
        assert second.attempts[-1].replica == 1
        third = await tasks.run("chat", {"turn": 3}, TaskOptions(session="s"))
        assert third.output["pid"] == second.output["pid"]
        assert (await call(d, "sessions.get", {"agent": "chat", "session": "s"})
                ).session.holder == "chat#1"


async def test_an_expired_session_starts_afresh(tmp_path: Path) -> None:
    # a ttl that a loaded host's stall between a turn and the looks after it does not
    # outlast (the session is looked at alive after each turn)
    ttl = 3.0
    async with in_process(tmp_path, chat(extra=f"session_ttl = {ttl}\n")) as d:
        tasks = d.sup.tasks
        assert (await tasks.run("chat", {"turn": 1},
                                TaskOptions(session="e"))).output["turns"] == [1]
        assert (await tasks.run("chat", {"turn": 2},
                                TaskOptions(session="e"))).output["turns"] == [1, 2]
        listed = await call(d, "sessions.list", {})
        # (abs: approx's relative bound of a wall time is far wider than a ttl)
        assert listed.sessions[0].expires == pytest.approx(
            listed.sessions[0].last_used + ttl, abs=0.001)
        await asyncio.sleep(ttl + 0.1)  # the session's ttl passes (time itself is the point)
        out = (await tasks.run("chat", {"turn": 3}, TaskOptions(session="e"))).output
        assert out["turns"] == [3] and out["given"] is False
        assert tasks.sessions.expired == 1
        stats = (await call(d, "stats.get")).tasks["sessions"]
        assert (stats["live"], stats["expired"], stats["refused"]) == (1, 1, 0)
        shown = await call(d, "sessions.get", {"agent": "chat", "session": "e"})
        assert shown.session.tasks == 1 and len(shown.history) == 1
        await asyncio.sleep(ttl + 0.1)
        assert (await call(d, "sessions.list", {})).sessions == []
        assert (await refused(d, "sessions.get", {"agent": "chat", "session": "e"})) == (
            jsonrpc.NOT_FOUND, "no such session: e of agent chat")


async def test_a_tenant_sees_only_its_own_agents_sessions(tmp_path: Path) -> None:
    fleet = chat("a1", 'tenant = "a"\n') + chat("b1", 'tenant = "b"\n')
    async with in_process(tmp_path, fleet, "[tenants.a]\n[tenants.b]\n") as d:
        await d.sup.tasks.run("a1", {"turn": 1}, TaskOptions(session="mine"))
        await d.sup.tasks.run("b1", {"turn": 1}, TaskOptions(session="theirs"))
        _, token = await tokens_of(d.services.store).create(
            "ta", ["tasks:read", "tasks:run"], None, None, "a")
        a = Caller(via="http", token=token.name, scopes=token.scopes, tenant=token.tenant)
        seen = await call(d, "sessions.list", {}, a)
        assert [(s.agent, s.session) for s in seen.sessions] == [("a1", "mine")]
        assert len((await call(d, "sessions.list", {})).sessions) == 2
        for method in ("sessions.get", "sessions.end"):  # as one there is not
            for agent in ("b1", "ghost"):
                code, message = await refused(d, method, {"agent": agent,
                                                          "session": "theirs"}, a)
                assert (code, message) == (jsonrpc.NOT_FOUND,
                                           f"no such session: theirs of agent {agent}")
        for agent in ("b1", "ghost"):  # another's agent lists as one there is not
            assert (await call(d, "sessions.list", {"agent": agent}, a)).sessions == []


async def test_bad_session_params_are_refused_exactly(tmp_path: Path) -> None:
    async with in_process(tmp_path, chat()) as d:
        for bad in ("", "has space", "x" * 129, "-leading"):
            code, message = await refused(d, "tasks.run", {"agent": "chat", "session": bad})
            assert code == jsonrpc.INVALID_PARAMS
            assert message == ("invalid params: Expected `str` matching regex "
                               "'^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$' - at `$.session`")
        assert (await refused(d, "sessions.end", {"agent": "chat", "session": "nope"})) == (
            jsonrpc.NOT_FOUND, "no such session: nope of agent chat")
        assert (await refused(d, "sessions.get", {"agent": "chat"}))[1] == (
            "invalid params: Object missing required field `session`")


async def test_session_checkpoint_of_a_task_without_a_session_is_refused(
        tmp_path: Path) -> None:
    async with in_process(tmp_path, chat()) as d:
        res = await d.sup.tasks.run("chat", {"turn": 1})
        assert res.status == "failed"
        assert res.error.message.endswith(
            f"session/checkpoint: task {res.task_id} has no session")


async def test_the_session_is_durable_in_the_state_database(tmp_path: Path) -> None:
    async with in_process(tmp_path, chat()) as d:
        await d.sup.tasks.run("chat", {"turn": 1}, TaskOptions(session="kept"))
    # a restarted daemon has it, state and history
    async with in_process(tmp_path, chat()) as d:
        shown = await call(d, "sessions.get", {"agent": "chat", "session": "kept"})
        assert (shown.session.tasks, len(shown.history)) == (1, 1)
        assert shown.history[0].status == "succeeded"
        res = await d.sup.tasks.run("chat", {"turn": 2}, TaskOptions(session="kept"))
        assert res.output["turns"] == [1, 2]
        kept = d.sup.tasks.sessions.table[SessionKey("default", "chat", "kept")]
        assert msgspec.json.decode(d.sup.tasks.sessions.hot.get(kept.key)  # type: ignore[arg-type]
                                   ) == {"turns": [1, 2]}


ASYNC_AGENT = """
from corral.worker import run


async def handle(task_input, ctx):
    turns = [*(ctx.session_state or {"turns": []})["turns"], task_input["turn"]]
    await ctx.checkpoint_session({"turns": turns})
    return {"turns": turns, "session": ctx.session}


run(handle)
"""


async def test_a_coroutine_handler_awaits_its_session_checkpoint(tmp_path: Path) -> None:
    program = tmp_path / "async_agent.py"
    program.write_text(ASYNC_AGENT)
    fleet = chat().replace(f"{HERE}/session_agent.py", str(program))
    async with in_process(tmp_path, fleet) as d:
        for n in (1, 2, 3):
            res = await d.sup.tasks.run("chat", {"turn": n}, TaskOptions(session="co"))
            assert res.output == {"turns": list(range(1, n + 1)), "session": "co"}


@pytest.mark.timeout(120)
def test_a_session_keeps_its_turns_in_order_across_an_upgrade(tmp: Path) -> None:  # noqa: F811
    d = DaemonProcess(tmp, chat())
    hold = fifo(tmp / "hold")
    try:
        d.start()
        r = d.cli("run", "chat", "--session", "u", "--input", turn(1), "--json")
        assert r.returncode == 0, r.stderr
        second = d.cli("submit", "chat", "--session", "u", "--input",
                       turn(2, hold=hold)).stdout.strip()
        third = d.cli("submit", "chat", "--session", "u", "--input", turn(3)).stdout.strip()
        wait_until(lambda: d.task(second)["status"] == "running", what="turn 2")
        assert d.json("task", third)["waiting"] == f"session u: task {second} runs"
        r = d.cli("upgrade")
        assert r.returncode == 0, r.stderr + r.stdout
        # the running turn was handed over; the next still waits for it
        assert d.json("task", third)["waiting"] == f"session u: task {second} runs"
        with open(hold, "wb"):
            pass
        r = d.cli("task", third, "--wait", "--json")
        info = json.loads(r.stdout)
        assert info["status"] == "succeeded", info
        assert info["output"]["turns"] == [1, 2, 3]
        assert d.stop() == 0
    finally:
        d.close()


async def test_a_cancelled_turn_leaves_the_line_and_the_next_one_runs(tmp_path: Path) -> None:
    async with in_process(tmp_path, chat()) as d:
        tasks = d.sup.tasks
        first = tasks.submit("chat", {"turn": 1, "hold": fifo(tmp_path / "f1")},
                             TaskOptions(session="c"))
        second = tasks.submit("chat", {"turn": 2}, TaskOptions(session="c"))
        third = tasks.submit("chat", {"turn": 3}, TaskOptions(session="c"))
        fourth = tasks.submit("chat", {"turn": 4}, TaskOptions(session="c"))
        assert tasks.queue.depth("chat") == 3  # the parked turns count as waiting
        assert (await tasks.info(third.id)).waiting == (
            f"session c: task {first.id} runs (1 task of it ahead)")
        # a waiting turn cancelled leaves the line; the running one cancelled lets the
        # next start (its worker is asked to stop it)
        assert tasks.cancel(third.id).status == "cancelled"
        assert tasks.cancel(first.id).status == "cancelled"
        await release(str(tmp_path / "f1"))
        await asyncio.wait_for(asyncio.shield(fourth.done), 30)
        assert second.output["turns"] == [2] and fourth.output["turns"] == [2, 4]
        assert tasks.queue.depth("chat") == 0
        shown = await call(d, "sessions.get", {"agent": "chat", "session": "c"})
        assert [(t.task_id, t.status) for t in shown.history] == [
            (first.id, "cancelled"), (second.id, "succeeded"), (third.id, "cancelled"),
            (fourth.id, "succeeded")]


async def test_a_turn_held_for_its_time_waits_in_its_line_and_leaves_it_at_its_cancel(
        tmp_path: Path) -> None:
    """A turn with a delay takes its place in its session's line as it is accepted,
    counted among the delayed alone (max_queue adds both: not twice); cancelled there it
    leaves the line and its time, never requeued, and the turn behind it has the place."""
    async with in_process(tmp_path, chat()) as d:
        tasks = d.sup.tasks
        first = tasks.submit("chat", {"turn": 1, "hold": fifo(tmp_path / "f1")},
                             TaskOptions(session="c"))
        held = tasks.submit("chat", {"turn": 2}, TaskOptions(session="c", delay=600))
        after = tasks.submit("chat", {"turn": 3}, TaskOptions(session="c"))
        s = tasks.sessions.table[tasks.sessions.key_of("chat", "c")]
        assert ([t.id for t in s.line], tasks.queue.depth("chat"),
                tasks.delays.count("chat")) == ([held.id, after.id], 1, 1)
        assert tasks.cancel(held.id).status == "cancelled"
        assert ([t.id for t in s.line], tasks.queue.depth("chat"),
                tasks.delays.holds(held)) == ([after.id], 1, False)
        await release(str(tmp_path / "f1"))
        await asyncio.wait_for(asyncio.shield(after.done), 30)
        assert (first.output["turns"], after.output["turns"]) == ([1], [1, 3])
        assert (tasks.queue.depth("chat"), s.current, s.line) == (0, None, [])


async def test_a_retry_waiting_for_its_backoff_keeps_its_sessions_turn(
        tmp_path: Path) -> None:
    fleet = chat(extra="retry_backoff = 0.3\nretry_jitter = false\n")
    async with in_process(tmp_path, fleet) as d:
        tasks = d.sup.tasks
        first = tasks.submit("chat", {"turn": 1, "how": "die",
                                      "marker": str(tmp_path / "m")}, TaskOptions(session="r"))
        second = tasks.submit("chat", {"turn": 2}, TaskOptions(session="r"))
        await asyncio.wait_for(asyncio.shield(second.done), 30)
        assert [a.outcome for a in first.attempts] == ["lost", "succeeded"]
        assert first.output["turns"] == [1] and second.output["turns"] == [1, 2]
        assert second.attempts[0].started >= first.attempts[-1].finished


async def test_turns_waiting_for_their_session_are_no_load_for_the_autoscaler(
        tmp_path: Path) -> None:
    # one replica per task running or queued, at once: each turn counted would be one more
    elastic = "[agents.chat.autoscale]\nmin_replicas = 1\nmax_replicas = 5\nupscale_delay = 0\n"
    async with in_process(tmp_path, chat(extra=elastic)) as d:
        tasks = d.sup.tasks
        first = tasks.submit("chat", {"turn": 1, "hold": fifo(tmp_path / "f")},
                             TaskOptions(session="l"))
        later = [tasks.submit("chat", {"turn": n}, TaskOptions(session="l")) for n in range(2, 6)]
        assert (tasks.queue.depth("chat"), tasks.sessions.parked("chat")) == (4, 4)
        assert tasks.by_agent["chat"].running == 1
        d.sup.elastic.tick(time.monotonic())
        entry = d.sup.elastic.status("chat")
        assert entry is not None and entry.desired == 1
        await release(str(tmp_path / "f"))
        await asyncio.wait_for(asyncio.shield(later[-1].done), 30)
        assert first.status == "succeeded" and later[-1].output["turns"] == [1, 2, 3, 4, 5]


async def test_a_sessions_history_keeps_its_last_thousand_tasks(tmp_path: Path) -> None:
    from corral.daemon.sessionjournal import PRUNE_EVERY
    from corral.supervisor.tasks.sessions import KEEP_HISTORY, SessionRow

    async with in_process(tmp_path, chat()) as d:
        journal = d.sup.tasks.sessions.journal
        n = KEEP_HISTORY + 2 * PRUNE_EVERY
        for i in range(1, n + 1):
            row = SessionRow("default", "chat", "long", 0.0, 0.0, i, None, 7)
            journal.put(row)
            journal.add_task(row, f"t{i}")
            if i % 100 == 0:
                await journal.committed()
        await journal.committed()
        history = await journal.history(row)
        assert [h.task_id for h in history] == [f"t{i}" for i in range(n - KEEP_HISTORY + 1,
                                                                     n + 1)]
        assert all(h.status is None for h in history)  # no such tasks journaled
        db = d.services.store.db
        (kept,) = db.execute("SELECT count(*) FROM session_tasks WHERE session = 'long'"
                             ).fetchone()
        assert kept == KEEP_HISTORY + n % PRUNE_EVERY  # pruned every PRUNE_EVERY tasks


async def test_a_delayed_turn_keeps_its_session_from_expiring(tmp_path: Path) -> None:
    async with in_process(tmp_path, chat(extra="session_ttl = 0.2\n")) as d:
        tasks = d.sup.tasks
        assert (await tasks.run("chat", {"turn": 1},
                                TaskOptions(session="d"))).output["turns"] == [1]
        later = tasks.submit("chat", {"turn": 2},
                             TaskOptions(session="d", not_before=time.time() + 5.0))
        await asyncio.sleep(0.3)  # past the ttl, while the turn waits for its time
        # (its acceptance, which counts the turn in its session, is the journal's commit:
        # a loaded host's lands later; an expired session would never list again)
        deadline = time.monotonic() + 4.0
        while True:
            listed = (await call(d, "sessions.list", {})).sessions
            seen = [(s.session, s.tasks, s.expires) for s in listed]
            if seen == [("d", 2, None)] or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        assert seen == [("d", 2, None)]
        assert (await refused(d, "sessions.end", {"agent": "chat", "session": "d"})) == (
            jsonrpc.CONFLICT, f"session d of agent chat has 1 unfinished task: task "
                              f"{later.id} is queued; cancel them or wait for them to end")
        await asyncio.wait_for(asyncio.shield(later.done), 30)
        assert later.output["turns"] == [1, 2] and tasks.sessions.expired == 0


async def test_a_sessions_turns_are_traced_as_its_conversation(tmp_path: Path) -> None:
    """Issue 41: with [tracing], each turn's task span carries `gen_ai.conversation.id`
    (the session), read back from the local store; a task of no session has none."""
    async with in_process(tmp_path, chat(), "[tracing]\nexport_interval = 0.05\n") as d:
        tasks = d.sup.tasks
        turns = [await tasks.run("chat", {"turn": n}, TaskOptions(session="s1")) for n in (1, 2)]
        alone = await tasks.run("chat", {"turn": 1})
        for res, conversation in ((turns[0], "s1"), (turns[1], "s1"), (alone, None)):
            view = await call(d, "traces.get", {"task_id": res.task_id})
            (task_span,) = [s for s in view.spans if s.name == "invoke_agent chat"]
            assert task_span.attributes.get("gen_ai.conversation.id") == conversation
        first = await call(d, "traces.get", {"task_id": turns[0].task_id})
        second = await call(d, "traces.get", {"task_id": turns[1].task_id})
        assert first.trace_id != second.trace_id  # a turn is a trace; the id joins them
