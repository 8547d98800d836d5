"""The inbox's service on the daemon's state database (supervisor/tasks/inbox.py,
daemon/inboxjournal.py, docs/approvals.md): an ask is committed before it is made, a
decision wakes its waiter once, the record keeps who decided what beside the originals,
a database opened again (a restart) holds every pending ask pending, a retried attempt
finds its call's ask again, and every refusal names what refused it."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from corral import jsonrpc
from corral.askviews import AskEnd, AskKind, AskOrigin
from corral.daemon.inboxjournal import AsksDB
from corral.daemon.store import StateStore
from corral.daemon.storeschema import StoreError
from corral.jsonrpc import RpcError
from corral.supervisor.stream import Stream
from corral.supervisor.tasks.askwaits import EXPIRE_RETRY
from corral.supervisor.tasks.inbox import (
    MAX_DECISION_BYTES,
    AskEnded,
    AskRequest,
    Decision,
    Inbox,
    InboxBounds,
    decide,
    ended_message,
)
from corral.supervisor.tasks.waitclock import WaitClock


def _approval(task_id: str = "t-1", key: str = "tool:1", attempt: int = 1,
              tenant: str | None = "acme", timeout: float | None = None) -> AskRequest:
    return AskRequest(AskKind.APPROVAL, tenant, task_id, attempt, "writer", key,
                      {"tool": "fs__write_file", "arguments": {"path": "/tmp/x",
                                                              "content": "hi"}}, timeout)


class Opened:
    """The state database opened as the daemon opens it, and the inbox on it."""

    def __init__(self, path: Path, clock: WaitClock | None = None) -> None:
        self.store = StateStore(path)
        self.store.open_writer()
        self.stream = Stream()
        self.inbox = Inbox(self.stream, AsksDB(self.store), clock)
        self.told: list[AskEnded] = []
        self.stream.subscribe(self.told.append, AskEnded)

    async def close(self) -> None:
        self.inbox.close()
        await self.store.close_writer()
        self.store.close()


@pytest.fixture
async def opened(tmp_path: Path) -> AsyncIterator[Opened]:
    o = Opened(tmp_path / "corral.db")
    yield o
    await o.close()


async def test_a_decision_wakes_its_waiter_and_the_record_keeps_both_arguments(
        opened: Opened) -> None:
    ask = await opened.inbox.ask(_approval())
    assert ask.pending and ask.id.startswith("ask-")
    waiter = asyncio.ensure_future(opened.inbox.wait(ask))
    await asyncio.sleep(0)
    assert not waiter.done()
    edited = {"arguments": {"path": "/tmp/y", "content": "hi"}}
    decided = await decide(opened.inbox, Decision(ask.id, AskEnd.APPROVED, "token alice",
                                                  edited))
    ended = await asyncio.wait_for(waiter, 5)
    assert ended == decided
    assert (ended.end, ended.by, ended.data) == (AskEnd.APPROVED, "token alice", edited)
    assert ended.subject["arguments"] == {"path": "/tmp/x", "content": "hi"}
    stored = opened.inbox.store.get(ask.id)
    assert stored == ended
    assert [e.ask.end for e in opened.told] == [None, AskEnd.APPROVED]
    assert opened.inbox.pending() == []


async def test_pending_asks_outlive_a_restart_and_their_deadline_still_ends_them(
        tmp_path: Path) -> None:
    first = Opened(tmp_path / "corral.db")
    kept = await first.inbox.ask(_approval("t-1"))
    timed = await first.inbox.ask(_approval("t-2", timeout=0.3))
    await first.close()

    again = Opened(tmp_path / "corral.db")
    try:
        assert again.inbox.load(AsksDB(again.store)) == 2
        assert [a.id for a in again.inbox.pending()] == [kept.id, timed.id]
        assert again.inbox.get(kept.id) == kept
        ended = await asyncio.wait_for(again.inbox.wait(timed), 5)
        assert (ended.end, ended.by) == (AskEnd.TIMED_OUT, "corral")
        assert [a.id for a in again.inbox.pending()] == [kept.id]
    finally:
        await again.close()


async def test_a_retried_attempt_finds_its_calls_ask_pending_or_decided(
        opened: Opened) -> None:
    ask = await opened.inbox.ask(_approval(attempt=1))
    assert await opened.inbox.ask(_approval(attempt=2)) == ask
    other = await opened.inbox.ask(_approval(key="tool:2", attempt=2))
    assert other.id != ask.id
    denied = await decide(opened.inbox, Decision(ask.id, AskEnd.DENIED, "uid 0",
                                                 {"reason": "no"}))
    assert await opened.inbox.ask(_approval(attempt=3)) == denied
    assert await opened.inbox.wait(denied) == denied


async def test_a_decision_replayed_is_refused_naming_how_the_ask_ended(
        opened: Opened) -> None:
    ask = await opened.inbox.ask(_approval())
    await decide(opened.inbox, Decision(ask.id, AskEnd.APPROVED, "token alice"))
    with pytest.raises(RpcError) as e:
        await decide(opened.inbox, Decision(ask.id, AskEnd.DENIED, "token bob"))
    assert e.value.code == jsonrpc.CONFLICT
    assert e.value.message.startswith(f"ask {ask.id} has ended: approved by token alice at ")
    assert opened.inbox.store.get(ask.id).by == "token alice"  # type: ignore[union-attr]


async def test_bad_decisions_are_refused_and_leave_the_ask_pending(opened: Opened) -> None:
    ask = await opened.inbox.ask(_approval())
    with pytest.raises(RpcError) as e:
        await decide(opened.inbox, Decision("ask-nope", AskEnd.APPROVED, "uid 0"))
    assert (e.value.code, e.value.message) == (jsonrpc.NOT_FOUND, "no such ask: ask-nope")
    with pytest.raises(RpcError) as e:
        await decide(opened.inbox, Decision(ask.id, AskEnd.ANSWERED, "uid 0", 1))
    assert (e.value.code, e.value.message) == (
        jsonrpc.INVALID_PARAMS, f"ask {ask.id} is an approval: it is approved or denied, "
                                f"not answered")
    big = {"arguments": {"content": "x" * MAX_DECISION_BYTES}}
    with pytest.raises(RpcError) as e:
        await decide(opened.inbox, Decision(ask.id, AskEnd.APPROVED, "uid 0", big))
    assert e.value.code == jsonrpc.INVALID_PARAMS
    assert e.value.message == (f"the decision's data is {MAX_DECISION_BYTES + 28} bytes of "
                               f"JSON, over the bound (max_decision_bytes "
                               f"{MAX_DECISION_BYTES})")
    assert [a.id for a in opened.inbox.pending()] == [ask.id]
    assert opened.inbox.store.get(ask.id) == ask


async def test_an_ask_is_its_requests_origin_with_an_id_and_a_deadline(
        opened: Opened) -> None:
    """The request and the record share their origin's fields (AskOrigin), declared
    once: every one of them is the request's, read back from the database too."""
    req = _approval(timeout=30)
    ask = await opened.inbox.ask(req)
    kept = opened.inbox.store.get(ask.id)
    assert kept is not None
    for made in (ask, kept):
        assert isinstance(made, AskOrigin)
        assert {f: getattr(made, f) for f in AskOrigin.__struct_fields__} == {
            f: getattr(req, f) for f in AskOrigin.__struct_fields__}
        assert made.id.startswith("ask-") and made.pending
        assert made.deadline == pytest.approx(made.created + 30)


async def test_a_question_is_answered_or_denied(opened: Opened) -> None:
    q = await opened.inbox.ask(AskRequest(
        AskKind.QUESTION, None, "t-q", 1, "writer", "ask:1",
        {"prompt": "which file?", "schema": {"type": "string"}}))
    with pytest.raises(RpcError) as e:
        await decide(opened.inbox, Decision(q.id, AskEnd.APPROVED, "uid 0"))
    assert e.value.message == f"ask {q.id} is a question: it is answered or denied, " \
                              f"not approved"
    answered = await decide(opened.inbox, Decision(q.id, AskEnd.ANSWERED, "uid 0", "/a"))
    assert (answered.end, answered.data) == (AskEnd.ANSWERED, "/a")


async def test_the_bounds_refuse_by_name(opened: Opened) -> None:
    inbox = opened.inbox
    inbox.load(inbox.store, InboxBounds(pending=3, per_tenant=2))
    await inbox.ask(_approval("t-1"))
    await inbox.ask(_approval("t-2"))
    with pytest.raises(RpcError) as e:
        await inbox.ask(_approval("t-3"))
    assert (e.value.code, e.value.message) == (
        jsonrpc.QUOTA_EXCEEDED, "tenant acme holds 2 pending asks, its bound "
                                "(max_pending_asks_per_tenant 2)")
    await inbox.ask(_approval("t-4", tenant="beta"))
    with pytest.raises(RpcError) as e:
        await inbox.ask(_approval("t-5", tenant="gamma"))
    assert e.value.message == ("the inbox holds 3 pending asks, its bound "
                               "(max_pending_asks 3)")
    assert len(inbox.pending()) == 3


async def test_asks_made_at_once_are_bounded_too(opened: Opened) -> None:
    """An ask is counted against the bounds from its check, not once its record is
    stored: asks made at once (each awaiting its commit) do not pass the bound together."""
    inbox = opened.inbox
    inbox.max_pending_per_tenant = 2
    inbox.max_pending = 3
    made = await asyncio.gather(*(inbox.ask(_approval(f"t-{i}")) for i in range(5)),
                                return_exceptions=True)
    assert [isinstance(m, RpcError) for m in made] == [False, False, True, True, True]
    others = await asyncio.gather(*(inbox.ask(_approval(f"u-{i}", tenant="beta"))
                                    for i in range(2)), return_exceptions=True)
    assert [isinstance(m, RpcError) for m in others] == [False, True]
    assert len(inbox.pending()) == 3


async def test_a_withdrawn_task_ends_its_asks_and_wakes_their_waiters(
        opened: Opened) -> None:
    ask = await opened.inbox.ask(_approval("t-1"))
    other = await opened.inbox.ask(_approval("t-2"))
    waiter = asyncio.ensure_future(opened.inbox.wait(ask))
    [withdrawn] = await opened.inbox.withdraw("t-1")
    assert (withdrawn.end, withdrawn.by) == (AskEnd.WITHDRAWN, "corral")
    assert await asyncio.wait_for(waiter, 5) == withdrawn
    assert opened.inbox.pending() == [other]
    assert opened.inbox.waiting_for("t-1") == []


async def _logged(caplog: pytest.LogCaptureFixture, text: str) -> str:
    """The first record saying `text`, once it is said (within 5 s)."""
    for _ in range(500):
        said = [r.getMessage() for r in caplog.records if text in r.getMessage()]
        if said:
            return said[0]
        await asyncio.sleep(0.01)
    raise AssertionError(f"never said: {text}")


async def test_a_deadline_the_store_refuses_is_tried_again_until_it_is_written(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The deadline's end not written (the asks' table gone from under the writer): said,
    the ask pending and its waiter waiting; tried again EXPIRE_RETRY later on the
    engine's clock, it ends timed out once the store takes it."""
    clock = WaitClock(manual=True)
    o = Opened(tmp_path / "corral.db", clock)
    side = sqlite3.connect(tmp_path / "corral.db", isolation_level=None)
    try:
        ask = await o.inbox.ask(_approval(timeout=60))
        waiter = asyncio.ensure_future(o.inbox.wait(ask))
        side.execute("ALTER TABLE asks RENAME TO asks_away")
        clock.advance(60)
        said = await _logged(caplog, f"ask {ask.id} could not be timed out")
        assert said.endswith("; trying again") and "no such table: asks" in said, said
        assert o.inbox.get(ask.id) == ask and not waiter.done()
        side.execute("ALTER TABLE asks_away RENAME TO asks")
        clock.advance(EXPIRE_RETRY)
        ended = await asyncio.wait_for(waiter, 5)
        assert (ended.end, ended.by, ended.ended) == (AskEnd.TIMED_OUT, "corral",
                                                      clock.time())
        assert o.inbox.store.get(ask.id) == ended
        assert o.inbox.waits.ids(ask.task_id) == ()
    finally:
        side.close()
        await o.close()


async def test_a_deadline_met_while_a_person_decides_leaves_the_ask_as_decided(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The decision's record being written (the write lock held a moment by another
    connection) when the deadline comes: the deadline's end is refused as another
    caller's, quietly, and tried again later; the person's decision is the end."""
    clock = WaitClock(manual=True)
    o = Opened(tmp_path / "corral.db", clock)
    side = sqlite3.connect(tmp_path / "corral.db", isolation_level=None)
    try:
        ask = await o.inbox.ask(_approval(timeout=60))
        side.execute("BEGIN IMMEDIATE")
        deciding = asyncio.ensure_future(decide(
            o.inbox, Decision(ask.id, AskEnd.APPROVED, "token alice")))
        clock.advance(60)
        again = clock.time() + EXPIRE_RETRY
        for _ in range(500):  # the deadline refused: tried again EXPIRE_RETRY later
            if any(t.when == again for t in clock.timers):
                break
            await asyncio.sleep(0.01)
        else:
            raise AssertionError("the deadline was not tried again")
        assert not deciding.done()
        side.execute("ROLLBACK")
        decided = await asyncio.wait_for(deciding, 5)
        assert (decided.end, decided.by) == (AskEnd.APPROVED, "token alice")
        clock.advance(EXPIRE_RETRY)
        assert await asyncio.wait_for(o.inbox.wait(ask), 5) == decided
        assert o.inbox.store.get(ask.id) == decided
        assert [e.ask.end for e in o.told] == [None, AskEnd.APPROVED]
        assert not clock.timers and o.inbox.waits.ids(ask.task_id) == ()
        assert not [r for r in caplog.records if "could not be timed out" in r.getMessage()]
    finally:
        side.close()
        await o.close()


async def test_a_decision_met_by_its_tasks_withdrawal_is_told_the_withdrawal(
        opened: Opened) -> None:
    """The task's end withdraws its ask (the record being written: the write lock held a
    moment by another connection) as a person decides it: the decision waits for that
    write and is refused naming the withdrawal, not another caller."""
    ask = await opened.inbox.ask(_approval("t-1"))
    side = sqlite3.connect(opened.store.path, isolation_level=None)
    try:
        side.execute("BEGIN IMMEDIATE")
        withdrawing = asyncio.ensure_future(opened.inbox.withdraw("t-1"))
        await asyncio.sleep(0)  # (its end being written)
        deciding = asyncio.ensure_future(decide(
            opened.inbox, Decision(ask.id, AskEnd.APPROVED, "token alice")))
        await asyncio.sleep(0.05)
        assert not deciding.done() and not withdrawing.done()
        side.execute("ROLLBACK")
        [withdrawn] = await asyncio.wait_for(withdrawing, 5)
        with pytest.raises(RpcError) as refused:
            await asyncio.wait_for(deciding, 5)
    finally:
        side.close()
    assert refused.value.code == jsonrpc.CONFLICT
    assert refused.value.message.startswith(
        f"ask {ask.id} has ended: withdrawn by corral at "), refused.value.message
    assert opened.inbox.store.get(ask.id) == withdrawn


async def test_a_withdrawal_reads_so_from_its_tasks_end_while_it_is_written(
        opened: Opened) -> None:
    """The task's end withdraws its ask (the record being written: the write lock held a
    moment by another connection): from the call on, the ask reads withdrawn, listed no
    more and nothing its task waits for, as its task's end reads ended; it is told once
    written."""
    ask = await opened.inbox.ask(_approval("t-1"))
    other = await opened.inbox.ask(_approval("t-2"))
    side = sqlite3.connect(opened.store.path, isolation_level=None)
    try:
        side.execute("BEGIN IMMEDIATE")
        withdrawing = opened.inbox.withdraw("t-1")
        got = opened.inbox.get(ask.id)
        assert got is not None and (got.end, got.by) == (AskEnd.WITHDRAWN, "corral")
        assert opened.inbox.pending() == [other]
        assert (opened.inbox.waiting_for("t-1"), opened.inbox.asking("t-1")) == ([], False)
        await asyncio.sleep(0.05)
        assert not withdrawing.done()
        assert [e.ask.end for e in opened.told] == [None, None]  # (told once written)
        side.execute("ROLLBACK")
        assert await asyncio.wait_for(withdrawing, 5) == [got]
    finally:
        side.close()
    assert opened.inbox.store.get(ask.id) == got == opened.inbox.get(ask.id)
    assert [e.ask for e in opened.told][-1] == got


async def test_a_withdrawal_not_written_leaves_the_ask_pending_and_decidable(
        opened: Opened) -> None:
    """The withdrawal's record refused (the asks' table gone from under the writer): its
    future fails naming SQLite's reason, and the ask reads pending again, as it is kept."""
    ask = await opened.inbox.ask(_approval("t-1"))
    side = sqlite3.connect(opened.store.path, isolation_level=None)
    try:
        side.execute("ALTER TABLE asks RENAME TO asks_away")
        with pytest.raises(StoreError) as refused:
            await asyncio.wait_for(opened.inbox.withdraw("t-1"), 5)
        assert "no such table: asks" in str(refused.value), refused.value
        assert opened.inbox.get(ask.id) == ask
        assert opened.inbox.pending() == [ask] and opened.inbox.waiting_for("t-1") == [ask]
        side.execute("ALTER TABLE asks_away RENAME TO asks")
    finally:
        side.close()
    decided = await decide(opened.inbox, Decision(ask.id, AskEnd.DENIED, "token alice"))
    assert opened.inbox.store.get(ask.id) == decided


async def test_the_loser_of_a_decision_race_waits_for_the_winners_write_and_is_told_it(
        opened: Opened) -> None:
    """Two people decide the ask at once (the first decision's record being written: the
    write lock held a moment by another connection): the second waits for that write and
    is refused naming the first's end, never as "another caller"."""
    ask = await opened.inbox.ask(_approval("t-1"))
    side = sqlite3.connect(opened.store.path, isolation_level=None)
    try:
        side.execute("BEGIN IMMEDIATE")
        first = asyncio.ensure_future(decide(
            opened.inbox, Decision(ask.id, AskEnd.APPROVED, "token alice")))
        await asyncio.sleep(0)  # (its end being written)
        second = asyncio.ensure_future(decide(
            opened.inbox, Decision(ask.id, AskEnd.DENIED, "token bob")))
        await asyncio.sleep(0.05)
        assert not first.done() and not second.done()
        side.execute("ROLLBACK")
        won = await asyncio.wait_for(first, 5)
        with pytest.raises(RpcError) as refused:
            await asyncio.wait_for(second, 5)
    finally:
        side.close()
    assert (won.end, won.by) == (AskEnd.APPROVED, "token alice")
    assert refused.value.code == jsonrpc.CONFLICT
    assert refused.value.message == ended_message(won)
    assert opened.inbox.store.get(ask.id) == won
