"""An audit row is a write nobody waits for (a gateway call's, one a call): its batch
lingers (storewriter.LINGER) so that many calls' rows are one transaction, lands on its
own, goes along with any write that is waited for, and is in the audit list the moment
it is asked for (issue 77). The real store and SQLite, in-process."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from corral.daemon import storewriter
from corral.daemon.store import StateStore
from corral.daemon.storewriter import StoreWriter

from .test_gateway_stdio import wait_until_async

CALL = {"client": "anonymous", "tool": "min__echo"}


@asynccontextmanager
async def store_of(db: Path) -> AsyncIterator[tuple[StateStore, StoreWriter]]:
    store = StateStore(db)
    writer = store.open_writer()
    try:
        yield store, writer
    finally:
        await store.close_writer()
        store.close()


def methods(store: StateStore) -> list[int]:
    return [row[2] for row in store.audit_log(1000)]  # (each row's pid: its number here)


async def test_rows_of_many_turns_are_one_transaction_once_waited_for(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(storewriter, "LINGER", 30.0)  # nothing lands on its own here
    async with store_of(tmp_path / "corral.db") as (store, writer):
        before = writer.batches
        for i in range(20):
            store.audit(0, i, "gateway.call", CALL, "ok")
            await asyncio.sleep(0)  # the next turn of the loop: before, a batch each
        assert methods(store) == []
        await writer.committed()
        assert methods(store) == list(range(20))
        assert writer.batches == before + 1


async def test_rows_land_on_their_own_after_the_linger(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(storewriter, "LINGER", 0.05)
    async with store_of(tmp_path / "corral.db") as (store, _):
        for i in range(3):
            store.audit(0, i, "gateway.call", CALL, "ok")
        await wait_until_async(lambda: methods(store) == [0, 1, 2])


async def test_a_write_that_is_waited_for_takes_the_rows_along(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(storewriter, "LINGER", 30.0)
    async with store_of(tmp_path / "corral.db") as (store, writer):
        store.audit(0, 1, "gateway.call", CALL, "ok")
        await asyncio.sleep(0)
        writer.submit(lambda db: None, "checkpoint")  # at this turn's end, as ever
        await wait_until_async(lambda: methods(store) == [1])


async def test_the_audit_list_has_a_row_queued_this_turn(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(storewriter, "LINGER", 30.0)
    async with store_of(tmp_path / "corral.db") as (store, _):
        store.audit(0, 7, "gateway.call", CALL, "error: no tool")
        rows = await store.audit_log_now()
        assert [(r[2], r[3], r[5]) for r in rows] == [(7, "gateway.call", "error: no tool")]
