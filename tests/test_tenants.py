"""Tenants (issue 23): `[tenants.NAME]` and the runtime's, their quotas at admission, and
callers of one tenant, who see and touch nothing of another's. Against the real daemon
(in this process, or as a process for the socket's groups); the CLI as a subprocess."""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import textwrap
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest

from corral import jsonrpc
from corral import methods as m
from corral.daemon.api import Caller
from corral.daemon.daemon import Daemon
from corral.daemon.tokens import tokens_of
from corral.jsonrpc import RpcError
from corral.methods import REGISTRY
from corral.supervisor import State
from corral.supervisor.config import ConfigError, load_config

from .conftest import EXAMPLES, ROOT
from .daemon_harness import PY, free_port, hello, in_process, shared_tmpdir
from .daemon_harness import Daemon as DaemonProcess
from .test_tokens import cli

OPERATOR = Caller(via="socket")


def sleeper(name: str, tenant: str, extra: str = "") -> str:
    return textwrap.dedent(f"""
        [agents.{name}]
        command = ["{PY}", "{EXAMPLES}/misbehave.py"]
        env = {{ PYTHONPATH = "{ROOT}" }}
        tenant = "{tenant}"
        max_concurrent_tasks = 4
        stop_timeout = 10.0
    """) + textwrap.dedent(extra)


async def refused(d: Daemon, caller: Caller, method: str, params: Any = None
                  ) -> tuple[int, str]:
    with pytest.raises(RpcError) as e:
        await d.dispatcher.call(caller, method, params)
    return e.value.code, e.value.message


async def call(d: Daemon, method: str, params: Any = None,
               caller: Caller = OPERATOR) -> Any:
    return await d.dispatcher.call(caller, method, params)


def replicas(d: Daemon, name: str) -> int:
    return len(d.services.sup.agents[name].replicas)


# -- the config -----------------------------------------------------------------------------
def test_a_config_names_its_tenants_and_an_unknown_one_is_refused_exactly(
        tmp_path: Path) -> None:
    path = tmp_path / "corral.toml"
    path.write_text(textwrap.dedent("""
        [tenants.acme]
        max_replicas = 4
        max_memory_mb = 512
        memory_high_mb = 256
        [agents.a]
        command = "true"
        tenant = "acme"
        [agents.b]
        command = "true"
    """))
    cfg = load_config(path)
    assert cfg.tenants["acme"].max_replicas == 4
    assert (cfg.agents["a"].tenant, cfg.agents["b"].tenant) == ("acme", "default")

    path.write_text('[agents.a]\ncommand = "true"\ntenant = "nope"\n')
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert str(e.value) == (f"{path}: agents.a.tenant: no tenant nope (declared: default)")

    path.write_text("[tenants.acme]\nmax_memory_mb = 256\nmemory_high_mb = 512\n")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert str(e.value) == (f"{path}: tenants.acme: memory_high_mb 512 is above "
                            "max_memory_mb 256")

    path.write_text("[tenants.acme]\nmax_replica = 4\n")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert str(e.value) == (f"{path}: tenants.acme: Object contains unknown field "
                            "`max_replica` (did you mean `max_replicas`?)")


# -- quotas ---------------------------------------------------------------------------------
QUOTAS = """
[tenants.acme]
max_agents = 2
max_replicas = 3
"""


@pytest.mark.deadline(120)
async def test_agent_and_replica_quotas_refuse_with_the_use_and_never_kill(
        tmp_path: Path) -> None:
    async with in_process(tmp_path, hello("a1", extra='tenant = "acme"\n'), QUOTAS) as d:
        sup = d.services.sup
        await call(d, "agents.add", {"agents": {"a2": {
            "command": [PY, str(EXAMPLES / "hello.py")], "env": {"PYTHONPATH": str(ROOT)},
            "tenant": "acme", "replicas": 2}}})
        assert replicas(d, "a2") == 2
        code, text = await refused(d, OPERATOR, "agents.scale", {"name": "a2", "replicas": 3})
        assert (code, text) == (jsonrpc.REFUSED, "tenant acme: max_replicas 3 reached "
                                "(3 in use); scaling a2 to 3 needs 1 more")
        assert replicas(d, "a2") == 2
        code, text = await refused(d, OPERATOR, "agents.add", {"agents": {"a3": {
            "command": "true", "tenant": "acme"}}, "check": False})
        assert (code, text) == (jsonrpc.REFUSED, "tenant acme: max_agents 2 reached "
                                "(2 in use); adding a3 needs 1 more")
        assert "a3" not in sup.agents
        code, text = await refused(d, OPERATOR, "agents.add", {"agents": {"a3": {
            "command": "true", "tenant": "nope"}}, "check": False})
        assert (code, text) == (jsonrpc.INVALID_PARAMS, "agent a3: no tenant nope (declared: "
                                "acme, default; add it with [tenants.NAME] or `corral "
                                "tenants add`)")
        # the default tenant has no quotas: as before tenants
        await call(d, "agents.add", {"agents": {"free": {"command": "true",
                                                         "replicas": 5, "autostart": False}},
                                     "check": False})

        # a restart counts what it counted
        await call(d, "agents.restart", {"names": ["a2"]})
        code, _ = await refused(d, OPERATOR, "agents.scale", {"name": "a2", "replicas": 3})
        assert code == jsonrpc.REFUSED
        # a removal frees its share at once
        await call(d, "agents.remove", {"names": ["a1"]})
        await call(d, "agents.scale", {"name": "a2", "replicas": 3})
        assert replicas(d, "a2") == 3

        # a quota lowered below the use kills nothing, and refuses the next
        for i in range(3):
            await sup.wait_state("a2", {State.READY, State.IDLE}, replica=i, timeout=30)
        pids = [r.pid for r in sup.agents["a2"].replicas]
        entry = await call(d, "tenants.set", {"name": "acme", "set": {"max_replicas": 1}})
        assert entry.quotas == {"max_agents": 2, "max_replicas": 1}
        assert (entry.use.agents, entry.use.replicas) == (1, 3)
        assert [r.pid for r in sup.agents["a2"].replicas] == pids
        assert all(r.state in (State.READY, State.IDLE, State.BUSY)
                   for r in sup.agents["a2"].replicas)
        code, text = await refused(d, OPERATOR, "agents.scale", {"name": "a2", "replicas": 4})
        assert text == ("tenant acme: max_replicas 1 reached (3 in use); scaling a2 to 4 "
                        "needs 1 more")
        await call(d, "agents.scale", {"name": "a2", "replicas": 2})  # down: always
        assert replicas(d, "a2") == 2

        rc, out, err = await cli(d, "tenants", "--json")
        assert rc == 0, err
        listed = {t["name"]: t for t in msgspec.json.decode(out)["tenants"]}
        assert set(listed) == {"acme", "default"}
        assert listed["acme"]["use"] == {"agents": 1, "replicas": 2, "queued": 0,
                                         "running": 0, "tokens_last_minute": 0.0}
        assert listed["acme"]["revision"] == 1
        assert listed["default"]["use"]["agents"] == 1
        rc, out, err = await cli(d, "tenants")
        assert rc == 0, err
        assert out.splitlines()[1].split() == ["acme", "1/2", "2/1", "0", "0", "0", "-"]


async def _run(d: Daemon, agent: str, task: dict[str, Any], **kw: Any) -> Any:
    """tasks.run's answer, as the wire has it (a dict)."""
    got = await call(d, "tasks.run", msgspec.json.encode({"agent": agent, "input": task,
                                                          **kw}))
    return msgspec.convert(got, m.TaskAccepted) if isinstance(got, dict) else got


@pytest.mark.deadline(120)
async def test_task_quotas_queue_rate_timeout_and_concurrency(tmp_path: Path) -> None:
    toml = """
[tenants.acme]
max_concurrent_tasks = 2
max_queue = 2
max_task_seconds = 0.5
[tenants.slow]
rate_per_minute = 2
"""
    agents = sleeper("s1", "acme") + sleeper("s2", "acme") + sleeper("r1", "slow")
    async with in_process(tmp_path, agents, toml) as d:
        sup = d.services.sup
        marker = tmp_path / "go"
        wait = {"do": "await", "path": str(marker)}
        # two run at once over the tenant's two agents; the others wait in their queues
        ids = [(await _run(d, a, wait, detach=True)).task_id for a in ("s1", "s2", "s1", "s2")]
        await asyncio.wait_for(_until(lambda: sup.tasks.running("s1")
                                      + sup.tasks.running("s2") == 2), 10)
        assert sup.tasks.queue.depth("s1") + sup.tasks.queue.depth("s2") == 2
        code, text = await refused(d, OPERATOR, "tasks.run", msgspec.json.encode(
            {"agent": "s2", "input": wait, "detach": True}))
        assert (code, text) == (jsonrpc.REFUSED, "tenant acme: max_queue 2 reached (2 "
                                "waiting); a task for s2 needs 1 more")
        entry = {t.name: t for t in (await call(d, "tenants.list")).tenants}["acme"]
        assert (entry.use.running, entry.use.queued) == (2, 2)
        # a task's timeout is capped at max_task_seconds: the waiting ones time out
        done = [await call(d, "tasks.get", {"task_id": i, "wait": True}) for i in ids]
        assert [t.status for t in done] == ["timed_out"] * 4
        assert done[0].error.message == "task timed out after 0.5 s"

        # the rate is the tenant's, over its agents
        marker.touch()
        assert (await _run(d, "r1", {"do": "echo"})).status == "succeeded"
        assert (await _run(d, "r1", {"do": "echo"})).status == "succeeded"
        code, text = await refused(d, OPERATOR, "tasks.run", msgspec.json.encode(
            {"agent": "r1", "input": {"do": "echo"}}))
        assert (code, text) == (jsonrpc.REFUSED, "tenant slow: rate_per_minute 2 reached; "
                                "a task for r1 waits for the next minute's room")


async def _until(cond: Any) -> None:
    while not cond():
        await asyncio.sleep(0.02)


@pytest.mark.deadline(120)
async def test_tokens_per_minute_is_one_budget_over_the_tenants_agents(
        tmp_path: Path) -> None:
    toml = "[tenants.acme]\ntokens_per_minute = 100\n"
    async with in_process(tmp_path, sleeper("u1", "acme") + sleeper("u2", "acme"),
                          toml) as d:
        spend = {"do": "usage", "reports": [{"input_tokens": 80, "output_tokens": 30}]}
        assert (await _run(d, "u1", spend)).status == "succeeded"
        # u2 has spent nothing, but its tenant has: its task waits for the minute
        accepted = await _run(d, "u2", {"do": "echo"}, detach=True)
        info = await call(d, "tasks.get", {"task_id": accepted.task_id})
        assert info.status == "queued"
        assert info.waiting is not None and info.waiting.startswith(
            "budget: tenant acme tokens_per_minute 100 used 110, next at ")
        entry = {t.name: t for t in (await call(d, "tenants.list")).tenants}["acme"]
        assert entry.use.tokens_last_minute == 110
        await call(d, "tasks.cancel", {"task_id": accepted.task_id})


# -- persisted ------------------------------------------------------------------------------
@pytest.mark.deadline(120)
async def test_runtime_tenants_and_changes_outlive_the_daemon(tmp_path: Path) -> None:
    toml = "[tenants.acme]\nmax_replicas = 4\n"
    async with in_process(tmp_path, hello("a1"), toml) as d:
        assert await call(d, "tenants.add", {"tenants": {"beta": {"max_agents": 1}}}) \
            == m.Added(added=["beta"])
        code, text = await refused(d, OPERATOR, "tenants.add",
                                   {"tenants": {"beta": {"max_agents": 1}}})
        assert (code, text) == (jsonrpc.CONFLICT, "tenant beta already exists")
        await call(d, "tenants.set", {"name": "acme", "set": {"max_replicas": 2}})
        await call(d, "agents.add", {"agents": {"b1": {
            "command": [PY, str(EXAMPLES / "hello.py")], "env": {"PYTHONPATH": str(ROOT)},
            "tenant": "beta"}}})
        code, text = await refused(d, OPERATOR, "tenants.remove", {"names": ["beta"]})
        assert (code, text) == (jsonrpc.CONFLICT, "tenant beta is in use by b1")
        code, text = await refused(d, OPERATOR, "tenants.remove", {"names": ["acme"]})
        assert code == jsonrpc.CONFLICT and text.startswith("tenant acme is declared in ")
        audit = (await call(d, "audit.list")).entries
        assert [(e.method, e.outcome) for e in audit if e.method.startswith("tenants.")
                ][:2] == [("tenants.add", "ok"), ("tenants.add", "error: tenant beta "
                                                                   "already exists")]
    async with in_process(tmp_path, hello("a1"), toml) as d:
        specs = d.services.sup.tenancy.specs
        assert specs["beta"].max_agents == 1
        assert specs["acme"].max_replicas == 2  # the runtime's change holds
        assert d.services.sup.agents["b1"].spec.tenant == "beta"
        revs = d.services.store.db.execute(
            "SELECT agent, revision, change FROM revisions WHERE agent LIKE 'tenant:%' "
            "ORDER BY agent, revision").fetchall()
        assert revs == [("tenant:acme", 1, "max_replicas 4 -> 2"),
                        ("tenant:beta", 1, "created")]
    # the file changed the tenant: the file wins
    async with in_process(tmp_path, hello("a1"), "[tenants.acme]\nmax_replicas = 8\n") as d:
        assert d.services.sup.tenancy.specs["acme"].max_replicas == 8


def test_a_config_without_tenants_has_only_the_default_one(tmp_path: Path) -> None:
    path = tmp_path / "corral.toml"
    path.write_text('[agents.a]\ncommand = "true"\n')
    cfg = load_config(path)
    assert cfg.tenants == {}
    # the spec says nothing of a tenant: revisions and `describe` are as they were
    assert "tenant" not in msgspec.to_builtins(cfg.agents["a"])
