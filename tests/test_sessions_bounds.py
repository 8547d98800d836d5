"""Sessions' bounds (docs/durable.md#sessions, docs/security.md): an agent's and a tenant's
live sessions are bounded in number (a task naming one more is refused with the reason)
and in state bytes (a checkpoint past them is refused, the session keeping its last
state); the daemon holds only a byte budget of states in memory, the others read back from
the state database when their session's next task starts, after a restart too.

The real daemon in this loop, SDK workers (tests/session_agent.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgspec

from corral import jsonrpc
from corral.supervisor.tasks.sessions import SessionKey
from corral.taskoptions import TaskOptions

from .daemon_harness import in_process
from .test_sessions import call, chat, refused


async def test_a_task_naming_a_session_past_max_sessions_is_refused_with_the_reason(
        tmp_path: Path) -> None:
    async with in_process(tmp_path, chat(extra="max_sessions = 2\n")) as d:
        tasks = d.sup.tasks
        for name in ("a", "b"):
            assert (await tasks.run("chat", {"turn": 1},
                                    TaskOptions(session=name))).status == "succeeded"
        # a turn of a live session is no new one
        assert (await tasks.run("chat", {"turn": 2},
                                TaskOptions(session="a"))).output["turns"] == [1, 2]
        assert (await refused(d, "tasks.run", {"agent": "chat", "session": "c"})) == (
            jsonrpc.REFUSED, "sessions full: agent chat has 2 live sessions (max_sessions "
                             "2); end one (corral sessions end) or wait for one to expire "
                             "(session_ttl)")
        assert tasks.sessions.stats()["refused"] == 1
        assert tasks.by_agent["chat"].counts["refused"] == 1
        assert "c" not in {s.name for s in tasks.sessions.listing("chat")}
        await call(d, "sessions.end", {"agent": "chat", "session": "b"})
        assert (await tasks.run("chat", {"turn": 1},
                                TaskOptions(session="c"))).output["turns"] == [1]


async def test_a_tenants_live_sessions_are_bounded_over_its_agents(tmp_path: Path) -> None:
    fleet = chat("a1", 'tenant = "t"\n') + chat("a2", 'tenant = "t"\n')
    async with in_process(tmp_path, fleet, "[tenants.t]\nmax_sessions = 3\n") as d:
        tasks = d.sup.tasks
        for agent, name in (("a1", "s1"), ("a1", "s2"), ("a2", "s1")):
            assert (await tasks.run(agent, {"turn": 1},
                                    TaskOptions(session=name))).status == "succeeded"
        assert (await refused(d, "tasks.run", {"agent": "a2", "session": "s2"})) == (
            jsonrpc.REFUSED, "sessions full: tenant t has 3 live sessions (max_sessions "
                             "3); end one (corral sessions end) or wait for one to expire "
                             "(session_ttl)")


async def test_a_checkpoint_past_max_session_bytes_is_refused_and_the_state_kept(
        tmp_path: Path) -> None:
    async with in_process(tmp_path, chat(extra="max_session_bytes = 200\n")) as d:
        tasks = d.sup.tasks
        # {"turns":["x…"]}: 14 bytes and the string's
        assert (await tasks.run("chat", {"turn": "x" * 100}, TaskOptions(session="a"))).status == (
            "succeeded")
        res = await tasks.run("chat", {"turn": "y" * 100}, TaskOptions(session="b"))
        assert res.status == "failed"
        assert res.error.message.endswith(
            "session/checkpoint: session state too large: agent chat's live sessions would "
            "hold 228 bytes of state (max_session_bytes 200); the session keeps its last "
            "state")
        b = tasks.sessions.table[SessionKey("default", "chat", "b")]
        assert b.state_bytes == 0 and tasks.sessions.stats()["state_bytes"] == 114
        # a smaller state fits; a larger one in place of a session's own counts the change
        assert (await tasks.run("chat", {"turn": 1},
                                TaskOptions(session="b"))).output["turns"] == [1]
        assert (await tasks.run("chat", {"turn": 2}, TaskOptions(session="a"))).output["turns"] == [
            "x" * 100, 2]
        assert tasks.sessions.stats()["state_bytes"] == 116 + 13
        await call(d, "sessions.end", {"agent": "chat", "session": "a"})
        assert tasks.sessions.stats()["state_bytes"] == 13


async def test_session_states_in_memory_stay_within_their_budget_and_are_read_back(
        tmp_path: Path) -> None:
    budget = 10 * 1024
    supervisor = f"session_memory_mb = {budget / 2**20}\n"
    big = "x" * 1000  # each state 1,014 bytes: ten fit the budget
    async with in_process(tmp_path, chat(), supervisor=supervisor) as d:
        sessions = d.sup.tasks.sessions
        for n in range(30):
            res = await d.sup.tasks.run("chat", {"turn": big}, TaskOptions(session=f"s{n}"))
            assert res.status == "succeeded"
            assert sessions.hot.bytes <= budget
        assert len(sessions.hot) == 10 and sessions.hot.evicted == 20
        assert sessions.stats()["state_bytes"] == 30 * 1014
        # the first ones left memory: their next turns read their states back
        for n in range(5):
            res = await d.sup.tasks.run("chat", {"turn": n}, TaskOptions(session=f"s{n}"))
            assert res.output["turns"] == [big, n] and res.output["given"] is True
        assert sessions.hot.loads == 5 and sessions.hot.bytes <= budget
    # a restarted daemon reads no state until a task of its session starts
    async with in_process(tmp_path, chat(), supervisor=supervisor) as d:
        sessions = d.sup.tasks.sessions
        assert (len(sessions.table), len(sessions.hot), sessions.hot.bytes) == (30, 0, 0)
        assert sessions.stats()["state_bytes"] == 25 * 1014 + 5 * 1016
        res = await d.sup.tasks.run("chat", {"turn": 2}, TaskOptions(session="s29"))
        assert res.output["turns"] == [big, 2]
        assert len(sessions.hot) == 1
        s29 = sessions.table[SessionKey("default", "chat", "s29")]
        assert msgspec.json.decode(sessions.hot.get(s29.key)  # type: ignore[arg-type]
                                   ) == {"turns": [big, 2]}


async def test_a_turn_cancelled_while_its_state_is_read_back_leaves_no_trace(
        tmp_path: Path) -> None:
    async with in_process(tmp_path, chat(), supervisor="session_memory_mb = 0\n") as d:
        tasks = d.sup.tasks
        sessions = tasks.sessions
        assert (await tasks.run("chat", {"turn": 1},
                                TaskOptions(session="s"))).status == "succeeded"
        assert len(sessions.hot) == 0  # no budget: every state is read back
        task = tasks.submit("chat", {"turn": 2}, TaskOptions(session="s"))
        assert (await tasks.info(task.id)).waiting == "session s: its state is being read back"
        tasks.cancel(task.id)
        assert task.status == "cancelled" and sessions.parked("chat") == 0
        res = await tasks.run("chat", {"turn": 3}, TaskOptions(session="s"))
        assert res.output["turns"] == [1, 3]


async def test_a_retried_turn_of_a_session_whose_state_left_memory_is_given_it(
        tmp_path: Path) -> None:
    async with in_process(tmp_path, chat(), supervisor="session_memory_mb = 0\n") as d:
        tasks = d.sup.tasks
        assert (await tasks.run("chat", {"turn": 1},
                                TaskOptions(session="s"))).status == "succeeded"
        # the worker SIGKILLs itself before its checkpoint: the retry goes back to the
        # queue's front once the state is read back again
        res = await tasks.run("chat", {"turn": 2, "how": "die",
                                       "marker": str(tmp_path / "m")}, TaskOptions(session="s"))
        assert [a.outcome for a in res.attempts] == ["lost", "succeeded"]
        assert res.output["turns"] == [1, 2] and res.output["given"] is True
        assert tasks.sessions.hot.loads >= 2 and len(tasks.sessions.hot) == 0


async def test_an_expired_session_does_not_count_against_max_sessions(tmp_path: Path) -> None:
    async with in_process(tmp_path, chat(extra="max_sessions = 1\nsession_ttl = 0.3\n")) as d:
        tasks = d.sup.tasks
        assert (await tasks.run("chat", {"turn": 1},
                                TaskOptions(session="a"))).status == "succeeded"
        await asyncio.sleep(0.4)  # a's ttl passes (time itself is the point)
        assert (await tasks.run("chat", {"turn": 1},
                                TaskOptions(session="b"))).output["turns"] == [1]
        assert [s.name for s in tasks.sessions.listing("chat")] == ["b"]
        assert tasks.sessions.expired == 1
