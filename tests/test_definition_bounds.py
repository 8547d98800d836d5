"""What a caller may make the daemon hold of workflows and teams added at runtime is
bounded, each bound refused with its name (issue 52, item 2; decision 445): a
definition's size, how many one tenant adds, how many all tenants add together (the
operator's share past it never filled by them), how many the daemon holds; and the
revisions kept of each name (the newest 10, a fixed bound)."""

from __future__ import annotations

import sqlite3
import textwrap
from pathlib import Path
from typing import Any

import pytest

from corral import jsonrpc
from corral.daemon.caller import Caller
from corral.daemon.defcatalog import (
    KEEP_REVISIONS,
    MAX_DEFINITION_BYTES,
    MAX_PER_TENANT,
    MAX_TENANTS,
)
from corral.jsonrpc import RpcError

from .daemon_harness import in_process
from .test_http_api import SOCKET

TENANTS = [f"t{i}" for i in range(MAX_TENANTS // MAX_PER_TENANT + 1)]


def fleet() -> str:
    """An agent of each tenant (no replica: nothing runs here), and the tenants."""
    return "".join(textwrap.dedent(f"""
        [tenants.{t}]
        [agents.{t}-a]
        command = ["true"]
        replicas = 0
        tenant = "{t}"
        """) for t in TENANTS)


def caller(tenant: str) -> Caller:
    return Caller(via="http", token=f"tok-{tenant}", tenant=tenant)


def workflow(agent: str, **more: Any) -> dict[str, Any]:
    return {"steps": [{"name": "s", "agent": agent}], **more}


def team(agent: str, **more: Any) -> dict[str, Any]:
    return {"mode": "broadcast", "members": [agent], **more}


async def refused(d: Any, who: Caller, method: str, params: Any) -> tuple[int, str]:
    with pytest.raises(RpcError) as said:
        await d.dispatcher.call(who, method, params)
    return said.value.code, said.value.message


@pytest.mark.deadline(180)
@pytest.mark.parametrize(("kind", "make"), [("workflows", workflow), ("teams", team)])
async def test_a_definitions_size_and_how_many_a_tenant_adds_are_bounded(
        tmp_path: Path, kind: str, make: Any) -> None:
    async with in_process(tmp_path, fleet()) as d:
        t0, t1 = caller("t0"), caller("t1")
        # a definition past its size, added or grown by an update: refused, nothing kept
        big = make("t0-a", description="x" * MAX_DEFINITION_BYTES)
        size = len(__import__("msgspec").json.encode(big))
        assert await refused(d, t0, f"{kind}.add", {kind: {"big": big}}) == (
            jsonrpc.INVALID_PARAMS,
            f"{kind}.add: {kind}.big: {size} bytes as JSON, past max_definition_bytes "
            f"({MAX_DEFINITION_BYTES}): a definition is held whole and kept in every "
            "revision; send data in a run's input instead")
        await d.dispatcher.call(t0, f"{kind}.add", {kind: {"small": make("t0-a")}})
        code, said = await refused(d, t0, f"{kind}.update", {
            "name": "small", "set": {"description": "x" * MAX_DEFINITION_BYTES}})
        assert (code, said.split(":")[0:2]) == (jsonrpc.INVALID_PARAMS,
                                                [f"{kind}.update", f" {kind}.small"])
        history = await d.dispatcher.call(SOCKET, f"{kind}.history", {"name": "small"})
        assert [r.revision for r in history.revisions] == [1]

        # one tenant's count: tenant t0 fills it, the next is refused with the bound
        await d.dispatcher.call(t0, f"{kind}.add", {kind: {
            f"w{i}": make("t0-a") for i in range(MAX_PER_TENANT - 1)}})
        assert await refused(d, t0, f"{kind}.add", {kind: {"more": make("t0-a")}}) == (
            jsonrpc.QUOTA_EXCEEDED,
            f"{kind}.add: at most {MAX_PER_TENANT} {kind} of a tenant (max_per_tenant; "
            f"tenant t0 has {MAX_PER_TENANT}) are added at runtime: remove some first")
        # another tenant, and the operator, are not refused for t0's use (what the
        # operator adds of t0's agents is t0's: it counts, and t0 may remove it)
        await d.dispatcher.call(t1, f"{kind}.add", {kind: {"t1s": make("t1-a")}})
        await d.dispatcher.call(SOCKET, f"{kind}.add", {kind: {"ops": make("t0-a")}})
        # a rollback that brings back a removed one counts as an add
        await d.dispatcher.call(t0, f"{kind}.remove", {"names": ["small", "ops"]})
        await d.dispatcher.call(t0, f"{kind}.add", {kind: {"again": make("t0-a")}})
        assert (await refused(d, t0, f"{kind}.rollback", {"name": "small"}))[0] == (
            jsonrpc.QUOTA_EXCEEDED)


@pytest.mark.deadline(240)
async def test_the_tenants_together_never_fill_the_operators_share(tmp_path: Path) -> None:
    async with in_process(tmp_path, fleet()) as d:
        for t in TENANTS[:-1]:
            await d.dispatcher.call(caller(t), "workflows.add", {"workflows": {
                f"{t}-{i}": workflow(f"{t}-a") for i in range(MAX_PER_TENANT)}})
        last = TENANTS[-1]
        assert await refused(d, caller(last), "workflows.add", {"workflows": {
            "one": workflow(f"{last}-a")}}) == (
            jsonrpc.QUOTA_EXCEEDED,
            f"workflows.add: at most {MAX_TENANTS} workflows of tenants together "
            f"(max_tenants; there are {MAX_TENANTS}) are added at runtime: remove some "
            "first")
        added = await d.dispatcher.call(SOCKET, "workflows.add", {"workflows": {
            "the-operators": workflow(f"{last}-a")}})
        assert added.added == ["the-operators"]


@pytest.mark.deadline(120)
@pytest.mark.parametrize(("kind", "make"), [("workflows", workflow), ("teams", team)])
async def test_the_newest_revisions_of_a_name_are_kept(tmp_path: Path, kind: str,
                                                        make: Any) -> None:
    async with in_process(tmp_path, fleet()) as d:
        await d.dispatcher.call(SOCKET, f"{kind}.add", {kind: {"w": make("t0-a")}})
        for i in range(12):
            await d.dispatcher.call(SOCKET, f"{kind}.update", {
                "name": "w", "set": {"description": f"change {i}"}})
        history = await d.dispatcher.call(SOCKET, f"{kind}.history", {"name": "w",
                                                                       "limit": 1000})
        kept = list(range(13 - KEEP_REVISIONS + 1, 14))
        assert [r.revision for r in history.revisions] == kept
        assert history.revisions[0].definition["description"] == f"change {kept[0] - 2}"
        assert await refused(d, SOCKET, f"{kind}.rollback", {"name": "w", "revision": 1}
                             ) == (jsonrpc.NOT_FOUND,
                                   f"no revision 1 of {kind[:-1]} w (its revisions kept: "
                                   f"{kept[0]}..13; see `corral {kind} history w`)")
        done = await d.dispatcher.call(SOCKET, f"{kind}.rollback", {"name": "w",
                                                                    "revision": kept[0]})
        assert (done.restored, done.revision) == (kept[0], 14)
        # on disk too: the state database holds the newest alone
        db = sqlite3.connect(f"file:{tmp_path / 'state' / 'corral.db'}?mode=ro", uri=True)
        try:
            rows = db.execute("SELECT COUNT(*) FROM definitions WHERE name = 'w'"
                              ).fetchone()[0]
        finally:
            db.close()
        assert rows == KEEP_REVISIONS
