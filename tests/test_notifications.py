"""Every notification in corral is a typed event on the one Stream: each is seen by its
subscribers, and a subscriber that raises is logged and counted and stops neither the
others nor the emitter. (Membership's Joined and Fenced: tests/cluster/test_membership.py.)
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any, TypeVar

import pytest

from corral.daemon import storeschema
from corral.daemon.gatewayaccess import GatewayChanged, GatewayService
from corral.daemon.store import StateStore
from corral.daemon.storewriter import CaughtUp
from corral.daemon.tokens import TokenRevoked, Tokens
from corral.supervisor import State, Supervisor
from corral.supervisor.config import TenantSpec
from corral.supervisor.quotas import QuotasChanged
from corral.supervisor.stream import Stream
from corral.supervisor.tasks import AttemptEnded, TaskFinished, TaskProgress, TaskStatus

from .conftest import agent
from .test_store_faults import lockable_store

E = TypeVar("E")

ROOT = Path(__file__).resolve().parent.parent


class Broken:
    """A subscriber that raises at every event (subscribed first: the others come after)."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, event: object) -> None:
        self.calls += 1
        raise RuntimeError("a subscriber that breaks")


def heard(stream: Stream, t: type[E]) -> tuple[list[E], Broken]:
    """What a subscriber to `t` hears, after one that raises at each event."""
    broken = Broken()
    seen: list[E] = []
    stream.subscribe(broken, t)
    stream.subscribe(seen.append, t)
    return seen, broken


def contained(stream: Stream, broken: Broken, failures_before: int) -> None:
    """Each delivery to `broken` was counted, and it is named among the failing."""
    assert broken.calls >= 1
    assert stream.failures - failures_before == broken.calls
    assert repr(broken) in stream.stats()["failing"]


def mb(name: str, **kw: Any) -> Any:
    return agent(name, "misbehave.py", **kw)


async def test_a_tasks_attempt_and_end_are_on_the_stream(sup: Supervisor) -> None:
    failures = sup.stream.failures
    finished, broken_f = heard(sup.stream, TaskFinished)
    ended, broken_e = heard(sup.stream, AttemptEnded)
    progress, broken_p = heard(sup.stream, TaskProgress)
    sup.add(mb("note"))
    await sup.wait_state("note", State.READY)
    res = await sup.tasks.run("note", {"do": "progress", "steps": 2})
    assert res.status == TaskStatus.SUCCEEDED  # the emitter went on
    task = sup.tasks.get(res.task_id)
    assert [e.task for e in finished] == [task]
    assert [e.task for e in ended] == [task]
    assert [(e.task, e.progress["progress"]) for e in progress] == [(task, 1), (task, 2)]
    # a task that never reached a worker finishes without an attempt's end
    holder = sup.tasks.submit("note", {"do": "sleep", "seconds": 30})
    queued = sup.tasks.submit("note", {"do": "echo"})
    assert (holder.status, queued.status) == (TaskStatus.RUNNING, TaskStatus.QUEUED)
    sup.tasks.cancel(queued.id)
    await queued.done
    assert [e.task for e in finished] == [task, queued]
    assert [e.task for e in ended] == [task]
    # a running task cancelled is finished at once; its attempt ends when its worker
    # answers the cancel
    holder_ended = asyncio.Event()
    sup.stream.subscribe(lambda e: e.task is holder and holder_ended.set(), AttemptEnded)
    sup.tasks.cancel(holder.id)
    await holder.done
    assert [e.task for e in finished] == [task, queued, holder]
    await asyncio.wait_for(holder_ended.wait(), 10)
    assert [e.task for e in ended] == [task, holder]
    assert broken_f.calls == len(finished) and broken_e.calls == len(ended)
    assert broken_p.calls == 2
    assert sup.stream.failures - failures == broken_f.calls + broken_e.calls + broken_p.calls
    assert {repr(broken_f), repr(broken_e), repr(broken_p)} <= set(
        sup.stream.stats()["failing"])


async def test_quotas_changed_is_on_the_stream(sup: Supervisor) -> None:
    failures = sup.stream.failures
    seen, broken = heard(sup.stream, QuotasChanged)
    sup.tenancy.put("acme", TenantSpec(max_concurrent_tasks=2))
    sup.tenancy.replace({"acme": TenantSpec(max_concurrent_tasks=3)})
    assert seen == [QuotasChanged(), QuotasChanged()]
    contained(sup.stream, broken, failures)
    # the task manager, subscribed before the failing one, gated its dispatch all the same
    assert sup.tasks.dispatch.gated
    sup.tenancy.replace({})
    assert not sup.tasks.dispatch.gated


async def test_a_revoked_token_is_on_the_stream(tmp_path: Path) -> None:
    stream = Stream()
    store = StateStore(tmp_path / "corral.db", stream=stream)
    store.open_writer()
    try:
        tokens = Tokens(store)
        secret, token = await tokens.create("ci", ["tasks:read"], None, None)
        seen, broken = heard(stream, TokenRevoked)
        assert await tokens.revoke("ci") == token
        assert seen == [TokenRevoked(token)]
        contained(stream, broken, 0)
        assert tokens.authenticate(secret) is None  # revoked however its subscribers fared
        assert Tokens(store).authenticate(secret) is None
    finally:
        await store.close_writer()
        store.close()


async def test_the_writer_catching_up_is_on_the_stream(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(storeschema, "BUSY_TIMEOUT_MS", 100)  # a lock fails an attempt fast
    errors: list[str] = []
    notices: list[str] = []
    async with lockable_store(tmp_path / "corral.db", errors, notices) as (
            store, writer, holder):
        seen, broken = heard(store.stream, CaughtUp)
        writer.max_held = 1
        holder.execute("BEGIN EXCLUSIVE")  # every write of the writer's fails now
        for i in range(3):
            store.audit(0, i, "agents.stop", {"names": ["a"]}, "ok")
        await writer.committed()
        holder.execute("ROLLBACK")
        await writer.committed()
        (e,) = seen
        assert (e.dropped, e.reason) == ({"audit row": 2}, "database is locked")
        contained(store.stream, broken, 0)
        # the store's own subscriber (subscribed first) still marked the gap in the audit
        await writer.committed()
        assert [r[3] for r in store.audit_log()] == ["agents.stop", "audit.dropped"]


async def test_the_gateways_lists_changing_is_on_the_stream(sup: Supervisor) -> None:
    failures = sup.stream.failures
    gateway = GatewayService(sup.parts.agents, sup.parts.tools, sup.stream, lambda *row: None,
                             sup.tasks)
    seen, broken = heard(sup.stream, GatewayChanged)
    told: list[list[str]] = []
    watching = gateway.watch(lambda e: told.append(e.kinds))
    gateway.changed(["tools"])
    gateway.changed(["prompts", "tools"])  # the same loop turn: told once
    await asyncio.sleep(0)
    assert seen == [GatewayChanged(["prompts", "tools"])]
    assert told == [["prompts", "tools"]]
    contained(sup.stream, broken, failures)
    gateway.unwatch(watching)
    gateway.changed(["resources"])
    await asyncio.sleep(0)
    assert told == [["prompts", "tools"]]
    assert [e.kinds for e in seen] == [["prompts", "tools"], ["resources"]]


def test_no_list_of_callbacks_beside_the_stream() -> None:
    """Done when `: list[Callable` finds nothing in corral/ (a notification is an event on
    the stream; a chain of handlers is named for what it is)."""
    found = [f"{p.relative_to(ROOT)}:{n}" for p in (ROOT / "corral").rglob("*.py")
             for n, line in enumerate(p.read_text().splitlines(), 1)
             if re.search(r":\s*(list|set)\[Callable", line)]
    assert found == []
