"""Tenants (issue 23): `[tenants.NAME]` and the runtime's, their quotas at admission, and
callers of one tenant, who see and touch nothing of another's. Against the real daemon
(in this process, or as a process for the socket's groups); the CLI as a subprocess."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shlex
import shutil
import textwrap
from pathlib import Path
from typing import Any

import msgspec
import pytest

from corral import jsonrpc
from corral import methods as m
from corral.askviews import AskKind, AskRequest
from corral.daemon.caller import Caller
from corral.daemon.daemon import Daemon
from corral.daemon.gatewayaccess import Identity
from corral.daemon.tenantregistry import groups_of
from corral.daemon.tokens import tokens_of
from corral.jsonrpc import RpcError
from corral.methods import REGISTRY
from corral.supervisor import State
from corral.supervisor.config import TenantSpec
from corral.supervisor.configload import load_config

from .conftest import EXAMPLES, NOBODY_PY, ROOT, nobody_reason
from .daemon_harness import PY, free_port, hello, in_process, shared_tmpdir
from .daemon_harness import Daemon as DaemonProcess
from .test_gateway_stdio import SCRIPTED, wait_until_async
from .test_sandbox import config_error
from .test_tokens import cli

OPERATOR = Caller(via="socket")


def tenant_agent(name: str, tenant: str, program: Path | str, extra: str = "", *,
                 python: str = PY, sdk: Path = ROOT) -> str:
    """An agent of the tenant running the Python script `program` (with corral's SDK
    `sdk` on its path)."""
    return textwrap.dedent(f"""
        [agents.{name}]
        command = ["{python}", "{program}"]
        env = {{ PYTHONPATH = "{sdk}" }}
        tenant = "{tenant}"
    """) + textwrap.dedent(extra)


def sleeper(name: str, tenant: str, extra: str = "") -> str:
    """An agent of examples/misbehave.py: it does what each task's input says."""
    return tenant_agent(name, tenant, f"{EXAMPLES}/misbehave.py",
                        "max_concurrent_tasks = 4\nstop_timeout = 10.0\n" + extra)


async def refused(d: Daemon, caller: Caller, method: str, params: Any = None
                  ) -> tuple[int, str]:
    with pytest.raises(RpcError) as e:
        await d.dispatcher.call(caller, method, params)
    return e.value.code, e.value.message


async def call(d: Daemon, method: str, params: Any = None,
               caller: Caller = OPERATOR) -> Any:
    return await d.dispatcher.call(caller, method, params)


def replicas(d: Daemon, name: str) -> int:
    return len(d.sup.agents[name].replicas)


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
    assert config_error(path) == (f"{path}: agents.a.tenant: no tenant nope "
                                  "(declared: default)")

    path.write_text("[tenants.acme]\nmax_memory_mb = 256\nmemory_high_mb = 512\n")
    assert config_error(path) == (f"{path}: tenants.acme: memory_high_mb 512 is above "
                                  "max_memory_mb 256")

    path.write_text("[tenants.acme]\nmax_replica = 4\n")
    assert config_error(path) == (f"{path}: tenants.acme: Object contains unknown field "
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
        sup = d.sup
        await call(d, "agents.add", {"agents": {"a2": {
            "command": [PY, str(EXAMPLES / "hello.py")], "env": {"PYTHONPATH": str(ROOT)},
            "tenant": "acme", "replicas": 2}}})
        assert replicas(d, "a2") == 2
        code, text = await refused(d, OPERATOR, "agents.scale", {"name": "a2", "replicas": 3})
        assert (code, text) == (jsonrpc.QUOTA_EXCEEDED, "tenant acme: max_replicas 3 reached "
                                "(3 in use); scaling a2 to 3 needs 1 more")
        assert replicas(d, "a2") == 2
        code, text = await refused(d, OPERATOR, "agents.add", {"agents": {"a3": {
            "command": "true", "tenant": "acme"}}, "check": False})
        assert (code, text) == (jsonrpc.QUOTA_EXCEEDED, "tenant acme: max_agents 2 reached "
                                "(2 in use); adding a3 needs 1 more")
        assert "a3" not in sup.agents
        # a batch is judged whole, before any of it is added
        code, text = await refused(d, OPERATOR, "agents.add", {"agents": {
            n: {"command": "true", "tenant": "acme"} for n in ("b1", "b2")}, "check": False})
        assert (code, text) == (jsonrpc.QUOTA_EXCEEDED, "tenant acme: max_agents 2 reached "
                                "(2 in use); adding b1, b2 needs 2 more")
        assert "b1" not in sup.agents and "b2" not in sup.agents
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
        assert code == jsonrpc.QUOTA_EXCEEDED
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
                                         "running": 0, "tokens_last_minute": 0.0,
                                         "oom_kills": 0, "step_journal_bytes": 0}
        assert listed["acme"]["revision"] == 1
        assert listed["default"]["use"]["agents"] == 1
        rc, out, err = await cli(d, "tenants")
        assert rc == 0, err
        assert out.splitlines()[1].split() == ["acme", "1/2", "2/1", "0", "0", "0", "-"]


@pytest.mark.deadline(120)
async def test_corral_add_with_flags_puts_the_agent_in_a_tenant(tmp_path: Path) -> None:
    async with in_process(tmp_path, hello("a1", extra='tenant = "acme"\n'), QUOTAS) as d:
        command = shlex.join([PY, f"{EXAMPLES}/hello.py"])
        rc, out, err = await cli(d, "add", "--name", "a2", "--command", command,
                                 "--tenant", "acme", "--env", f"PYTHONPATH={ROOT}")
        assert (rc, out, err) == (0, "added: a2\n", "")
        assert d.sup.agents["a2"].spec.tenant == "acme"
        entry = {t.name: t for t in (await call(d, "tenants.list")).tenants}["acme"]
        assert entry.use.agents == 2
        # its quota holds as for a file's agent, and nothing is added
        rc, out, err = await cli(d, "add", "--name", "a3", "--command", command,
                                 "--tenant", "acme")
        assert (rc, out) == (1, "")
        assert err == ("corral: tenant acme: max_agents 2 reached (2 in use); "
                       "adding a3 needs 1 more\n")
        rc, out, err = await cli(d, "add", "--name", "a3", "--command", command,
                                 "--tenant", "nope")
        assert (rc, err) == (1, "corral: agent a3: no tenant nope (declared: "
                                "acme, default; add it with [tenants.NAME] or `corral "
                                "tenants add`)\n")
        # a file says its own tenants
        file = tmp_path / "more.toml"
        file.write_text(f'[agents.a4]\ncommand = "{command}"\n')
        rc, out, err = await cli(d, "add", str(file), "--tenant", "acme")
        assert rc == 2 and "--tenant goes with --name/--command; in a FILE, write " \
            'tenant = "NAME" in each [agents.NAME] table' in err
        assert set(d.sup.agents) == {"a1", "a2"}


async def _run(d: Daemon, agent: str, task: dict[str, Any], *, detach: bool = False,
               **kw: Any) -> Any:
    """tasks.run's answer (tasks.submit's, detached)."""
    return await call(d, "tasks.submit" if detach else "tasks.run", msgspec.json.encode(
        {"agent": agent, "input": task, **kw}))


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
        sup = d.sup
        marker = tmp_path / "go"
        wait = {"do": "await", "path": str(marker)}
        # two run at once over the tenant's two agents; the others wait in their queues
        ids = [(await _run(d, a, wait, detach=True)).task_id for a in ("s1", "s2", "s1", "s2")]
        await wait_until_async(lambda: sup.tasks.running("s1") + sup.tasks.running("s2")
                               == 2, timeout=10)
        assert sup.tasks.queue.depth("s1") + sup.tasks.queue.depth("s2") == 2
        code, text = await refused(d, OPERATOR, "tasks.submit", msgspec.json.encode(
            {"agent": "s2", "input": wait}))
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


@pytest.mark.deadline(120)
async def test_a_full_queue_refusal_names_no_wait_and_a_rate_refusal_its_own(
        tmp_path: Path) -> None:
    """A tenant with both a queue and a rate quota: a task refused for the queue says
    nothing of when to come back (the queue drains at no known time), even while the rate
    has no token left; one refused for the rate says when its next token comes."""
    toml = """
[tenants.both]
max_concurrent_tasks = 1
max_queue = 1
rate_per_minute = 2
"""
    async with in_process(tmp_path, sleeper("b1", "both"), toml) as d:
        sup = d.sup
        marker = tmp_path / "go"
        wait = {"do": "await", "path": str(marker)}
        first = await _run(d, "b1", wait, detach=True)  # runs: the rate's first token
        second = await _run(d, "b1", wait, detach=True)  # waits: its second
        await wait_until_async(lambda: sup.tasks.running("b1") == 1)
        assert sup.tasks.queue.depth("b1") == 1
        params = msgspec.json.encode({"agent": "b1", "input": {"do": "echo"}})
        with pytest.raises(RpcError) as e:
            await d.dispatcher.call(OPERATOR, "tasks.run", params)
        assert (e.value.code, e.value.message, e.value.data) == (
            jsonrpc.REFUSED, "tenant both: max_queue 1 reached (1 waiting); a task for b1 "
                             "needs 1 more", None)
        marker.touch()
        for t in (first, second):
            got = await call(d, "tasks.get", {"task_id": t.task_id, "wait": True})
            assert got.status == "succeeded"
        with pytest.raises(RpcError) as e:
            await d.dispatcher.call(OPERATOR, "tasks.run", params)
        assert (e.value.code, e.value.message) == (
            jsonrpc.REFUSED, "tenant both: rate_per_minute 2 reached; a task for b1 waits "
                             "for the next minute's room")
        assert 25 <= e.value.data["retry_after"] <= 30  # 2 a minute: a token each 30 s


def _hooks(d: Daemon) -> tuple[bool, bool]:
    """Whether dispatch consults the tenants' gate (at each task's start and end) and the
    budgets their shared windows (each only while some tenant sets the quota it serves)."""
    tasks = d.sup.tasks
    return tasks.dispatch.gated, tasks.budgets.sharing


async def one_runs_one_held(d: Daemon, marker: Path) -> tuple[str, str]:
    """s1's task runs (until `marker` is there); s2's, sent next, is held queued by its
    tenant's max_concurrent_tasks. Their ids."""
    sup = d.sup
    wait = {"do": "await", "path": str(marker)}
    first = (await _run(d, "s1", wait, detach=True)).task_id
    await wait_until_async(lambda: sup.tasks.running("s1") == 1)
    held = (await _run(d, "s2", wait, detach=True)).task_id
    info = await call(d, "tasks.get", {"task_id": held})
    assert (info.status, sup.tasks.queue.depth("s2"), sup.tasks.running("s2")) == (
        "queued", 1, 0)
    return first, held


async def both_succeed(d: Daemon, marker: Path, ids: tuple[str, str]) -> None:
    marker.touch()
    done = [await call(d, "tasks.get", {"task_id": i, "wait": True}) for i in ids]
    assert [t.status for t in done] == ["succeeded", "succeeded"]


@pytest.mark.deadline(120)
async def test_the_tenant_gate_comes_and_goes_with_its_quota_at_runtime(
        tmp_path: Path) -> None:
    async with in_process(tmp_path, sleeper("s1", "acme") + sleeper("s2", "acme"),
                          "[tenants.acme]\nmax_queue = 10\n") as d:
        sup = d.sup
        assert _hooks(d) == (False, False)
        await call(d, "tenants.set", {"name": "acme", "set": {"max_concurrent_tasks": 1}})
        assert _hooks(d) == (True, False)
        marker = tmp_path / "go"
        # the quota set at runtime holds the next task, of the tenant's other agent
        ids = await one_runs_one_held(d, marker)
        # cleared: no gate, and the task it held starts at once (no task's end needed)
        await call(d, "tenants.set", {"name": "acme", "set": {"max_concurrent_tasks": 0}})
        assert _hooks(d) == (False, False)
        await wait_until_async(lambda: sup.tasks.running("s2") == 1)
        await call(d, "tenants.set", {"name": "acme", "set": {"tokens_per_minute": 50}})
        assert _hooks(d) == (False, True)
        await call(d, "tenants.set", {"name": "acme", "set": {"tokens_per_minute": None}})
        assert _hooks(d) == (False, False)
        # a tenant removed takes the hooks its quotas needed with it
        await call(d, "tenants.add", {"tenants": {"beta": {"max_concurrent_tasks": 2,
                                                           "tokens_per_minute": 50}}})
        assert _hooks(d) == (True, True)
        await call(d, "tenants.remove", {"names": ["beta"]})
        assert _hooks(d) == (False, False)
        await both_succeed(d, marker, ids)


@pytest.mark.deadline(120)
async def test_the_tenant_gate_comes_and_goes_with_its_quota_on_reload(
        tmp_path: Path) -> None:
    agents = sleeper("s1", "acme") + sleeper("s2", "acme")
    async with in_process(tmp_path, agents, "[tenants.acme]\n") as d:
        sup = d.sup
        config = d.services.config_path
        text = config.read_text()
        assert _hooks(d) == (False, False)
        config.write_text(text.replace("[tenants.acme]\n", "[tenants.acme]\n"
                                       "max_concurrent_tasks = 1\ntokens_per_minute = 500\n"))
        await call(d, "config.reload")
        assert _hooks(d) == (True, True)
        marker = tmp_path / "go"
        ids = await one_runs_one_held(d, marker)
        config.write_text(text)
        await call(d, "config.reload")
        assert _hooks(d) == (False, False)
        await wait_until_async(lambda: sup.tasks.running("s2") == 1)
        await both_succeed(d, marker, ids)


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
            "1st of 1 waiting for u2: budget: tenant acme tokens_per_minute 100 used 110, "
            "next at ")
        entry = {t.name: t for t in (await call(d, "tenants.list")).tenants}["acme"]
        assert entry.use.tokens_last_minute == 110
        # the quota cleared at runtime: the task it held starts at once, not at the
        # minute's end (its hold's timer)
        await call(d, "tenants.set", {"name": "acme", "set": {"tokens_per_minute": None}})
        done = await asyncio.wait_for(call(d, "tasks.get", {
            "task_id": accepted.task_id, "wait": True}), 15)
        assert (done.status, done.waiting) == ("succeeded", None)
        # and its window with it: no figure left to fade beside no quota
        entry = {t.name: t for t in (await call(d, "tenants.list")).tenants}["acme"]
        assert entry.use.tokens_last_minute == 0
        # set again, the budget counts afresh and holds again
        await call(d, "tenants.set", {"name": "acme", "set": {"tokens_per_minute": 100}})
        assert (await _run(d, "u1", spend)).status == "succeeded"
        held = await _run(d, "u2", {"do": "echo"}, detach=True)
        info = await call(d, "tasks.get", {"task_id": held.task_id})
        assert info.waiting is not None and info.waiting.startswith(
            "1st of 1 waiting for u2: budget: tenant acme tokens_per_minute 100 used 110, "
            "next at ")


# -- persisted ------------------------------------------------------------------------------
@pytest.mark.deadline(120)
async def test_runtime_tenants_and_changes_outlive_the_daemon(tmp_path: Path) -> None:
    toml = "[tenants.acme]\nmax_replicas = 4\n"
    async with in_process(tmp_path, hello("a1"), toml) as d:
        assert await call(d, "tenants.add", {"tenants": {"beta": {"max_agents": 1}}}) \
            == m.AddResult(added=["beta"])
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
        specs = d.sup.tenancy.specs
        assert specs["beta"].max_agents == 1
        assert specs["acme"].max_replicas == 2  # the runtime's change holds
        assert d.sup.agents["b1"].spec.tenant == "beta"
        revs = d.services.store.db.execute(
            "SELECT agent, revision, change FROM revisions WHERE agent LIKE 'tenant:%' "
            "ORDER BY agent, revision").fetchall()
        assert revs == [("tenant:acme", 1, "max_replicas 4 -> 2"),
                        ("tenant:beta", 1, "created")]
    # the file changed the tenant: the file wins
    async with in_process(tmp_path, hello("a1"), "[tenants.acme]\nmax_replicas = 8\n") as d:
        assert d.sup.tenancy.specs["acme"].max_replicas == 8


async def test_tenants_add_reads_a_json_file_as_json_and_refuses_one_that_is_not(
        tmp_path: Path) -> None:
    """`corral tenants add FILE.json` reads JSON, as `workflows add` and `teams add` do
    (any other file is TOML); a .json that is not JSON is refused naming the file, and
    nothing is added."""
    (tmp_path / "beta.json").write_text('{"tenants": {"beta": {"max_agents": 1}}}')
    (tmp_path / "bad.json").write_text("[tenants.gamma]\nmax_agents = 1\n")
    async with in_process(tmp_path, hello("a1")) as d:
        rc, out, err = await cli(d, "tenants", "add", str(tmp_path / "beta.json"))
        assert (rc, out, err) == (0, "added: beta\n", "")
        rc, out, err = await cli(d, "tenants", "add", str(tmp_path / "bad.json"))
        assert (rc, out, err) == (1, "", f"corral: {tmp_path / 'bad.json'}: syntax error: "
                                         "Expecting value: line 1 column 2 (char 1)\n")
        assert set(d.sup.tenancy.specs) == {"beta"}
        assert d.sup.tenancy.specs["beta"].max_agents == 1


async def test_tenant_changes_at_once_each_hold_as_answered(tmp_path: Path) -> None:
    """Changes made at the same time (two scripts, two operators) are made one after the
    other: each builds on the one before, and of two adds of one name the second is
    refused, as it would be a moment later."""
    async with in_process(tmp_path, hello("a1"), "[tenants.acme]\nmax_replicas = 4\n") as d:
        both = await asyncio.gather(
            call(d, "tenants.set", {"name": "acme", "set": {"max_agents": 2}}),
            call(d, "tenants.set", {"name": "acme", "set": {"max_queue": 3}}))
        assert [e.quotas for e in both] == [{"max_agents": 2, "max_replicas": 4},
                                            {"max_agents": 2, "max_queue": 3,
                                             "max_replicas": 4}]
        assert d.services.tenants.tables["acme"] == {"max_agents": 2, "max_queue": 3,
                                                     "max_replicas": 4}
        spec = d.sup.tenancy.specs["acme"]
        assert (spec.max_agents, spec.max_queue, spec.max_replicas) == (2, 3, 4)
        adds = await asyncio.gather(
            call(d, "tenants.add", {"tenants": {"beta": {"max_agents": 1}}}),
            call(d, "tenants.add", {"tenants": {"beta": {"max_agents": 5}}}),
            return_exceptions=True)
        assert adds[0] == m.AddResult(added=["beta"])
        assert isinstance(adds[1], RpcError)
        assert (adds[1].code, adds[1].message) == (jsonrpc.CONFLICT,
                                                   "tenant beta already exists")
        revs = d.services.store.db.execute(
            "SELECT agent, revision, change FROM revisions WHERE agent LIKE 'tenant:%' "
            "ORDER BY agent, revision").fetchall()
        assert revs == [("tenant:acme", 1, "max_agents 0 -> 2"),
                        ("tenant:acme", 2, "max_queue 0 -> 3"),
                        ("tenant:beta", 1, "created")]
    async with in_process(tmp_path, hello("a1"), "[tenants.acme]\nmax_replicas = 4\n") as d:
        assert d.services.tenants.tables == {
            "acme": {"max_agents": 2, "max_queue": 3, "max_replicas": 4},
            "beta": {"max_agents": 1}}


@pytest.mark.deadline(120)
async def test_a_stored_tenant_that_no_longer_parses_is_skipped_and_said(
        tmp_path: Path) -> None:
    async with in_process(tmp_path, hello("a1")) as d:
        await call(d, "tenants.add", {"tenants": {"gamma": {"max_agents": 1},
                                                  "delta": {"max_agents": 2}}})
    import sqlite3

    with contextlib.closing(sqlite3.connect(tmp_path / "state" / "corral.db")) as db, db:
        db.execute("UPDATE runtime_tenants SET spec = ? WHERE name = 'gamma'",
                   ('{"max_agent": 1}',))
    async with in_process(tmp_path, hello("a1")) as d:
        # the others still apply
        assert sorted(d.sup.tenancy.specs) == ["delta"]
        said = [ln.text for ln in d.services.hub.tail(["corral"], 1000, None)]
        assert ("skipped tenant gamma: state database: tenants.gamma: Object contains "
                "unknown field `max_agent` (did you mean `max_agents`?)") in said, said


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run an agent as a tenant's user")
@pytest.mark.deadline(120)
async def test_a_tenant_log_directory_that_cannot_be_made_leaves_the_log_in_log_dir(
        tmp_path: Path) -> None:
    logs = tmp_path / "state" / "logs"
    logs.mkdir(parents=True, mode=0o700)
    (logs / "tenants").write_text("a file where the tenants' directories go\n")
    toml = '[tenants.t]\nuser = "root"\n'
    async with in_process(tmp_path, hello("a1", extra='tenant = "t"\n'), toml) as d:
        said = [ln.text for ln in d.services.hub.tail(["corral"], 1000, None)]
        assert (f"tenant t: cannot make its log directory {logs}/tenants/t (File exists); "
                f"its processes log to {logs}") in said, said
        assert d.services.hub.path_of("a1") == str(logs / "a1.log")


def test_a_config_without_tenants_has_only_the_default_one(tmp_path: Path) -> None:
    path = tmp_path / "corral.toml"
    path.write_text('[agents.a]\ncommand = "true"\n')
    cfg = load_config(path)
    assert cfg.tenants == {}
    # the spec says nothing of a tenant: revisions and `describe` are as they were
    assert "tenant" not in msgspec.to_builtins(cfg.agents["a"])


# -- scoped access ----------------------------------------------------------------------------
def notes(name: str, tenant: str, shared: bool = False) -> str:
    """An MCP server of the tenant's, its tool `echo`: the scripted one, which starts as a
    plain interpreter does (the SDK's notes server's import was ~1.4 s of CPU, three or
    four of them a test here); the tenant a server is of is the daemon's to hold,
    whatever serves it."""
    return textwrap.dedent(f"""
        [mcp_servers.{name}]
        command = ["{PY}", "{SCRIPTED}", "v2025-11"]
        tenant = "{tenant}"
        shared = {"true" if shared else "false"}
        start_timeout = 30.0
    """)


TWO = "[tenants.a]\n[tenants.b]\n"
FLEET = (sleeper("a1", "a", 'tools = ["*"]\n') + sleeper("zeta", "b", 'tools = ["*"]\n')
         + notes("aserv", "a") + notes("zserv", "b") + notes("common", "b", shared=True))
B, GHOST = "zeta", "omega"  # another tenant's agent, and none: no name near a1's
BS, GHOST_S = "zserv", "oserv"


@pytest.mark.deadline(120)
async def test_the_operators_view_of_a_tenant_is_the_tenants_own(tmp_path: Path) -> None:
    """`corral status --tenant a` lists the MCP servers tenant a's callers see and its
    agents may use (its own and shared ones), as a's own `status` and `tools` do."""
    async with in_process(tmp_path, FLEET + notes("dflt", "default"), TWO) as d:
        _, token = await tokens_of(d.services.store).create(
            "ta", ["agents:read", "mcp:call"], None, None, "a")
        a = Caller(via="http", token=token.name, scopes=token.scopes, tenant=token.tenant)
        as_operator = await call(d, "agents.status", {"tenant": "a"})
        as_a = await call(d, "agents.status", {}, a)
        assert sorted(s["name"] for s in as_operator.mcp_servers) == sorted(
            s["name"] for s in as_a.mcp_servers) == ["aserv", "common"]
        tools = await call(d, "tools.list", {}, a)
        assert {t["server"] for t in tools.tools} == {"aserv", "common"}
        # the whole fleet's status still lists every server
        whole = await call(d, "agents.status", {})
        assert sorted(s["name"] for s in whole.mcp_servers) == [
            "aserv", "common", "dflt", "zserv"]
        # FOR says which agent an instance serves: a pool's serves any agent
        rc, out, err = await cli(d, "status", "--tenant", "a")
        assert rc == 0, err
        rows = [line.split() for line in out.splitlines()]
        servers = {r[0]: r for r in rows if r and r[0].endswith("#0")
                   and r[0].split("#")[0] in ("aserv", "common", "dflt", "zserv")}
        assert set(servers) == {"aserv#0", "common#0"}
        assert rows[[r[:1] for r in rows].index(["SERVER"])][-1] == "FOR"
        assert servers["common#0"][-2:] == ["any", "agent"]


def probes(task_b: str, ghost_task: str, run_b: str = "", ghost_run: str = "",
           call_b: str = "", ghost_call: str = "", ask_b: str = "", ghost_ask: str = ""
           ) -> dict[str, tuple[str, Any, Any]]:
    """Every method, tried by tenant a's caller on tenant b's objects: (how it must
    answer, params naming b's object, the same naming one that does not exist).
    `missing`: as the nonexistent one, word for word; `forbidden`: not a tenant's
    to call; `listing`: b's objects left out; `own`: names no object (checked apart)."""
    def run(agent: str) -> bytes:
        return msgspec.json.encode({"agent": agent, "input": {"do": "echo"}})

    def names(n: str) -> dict[str, Any]:
        return {"names": [n]}

    return {
        "daemon.info": ("own", None, None),
        "daemon.shutdown": ("forbidden", {}, None),
        "daemon.clock": ("forbidden", {"advance": 60}, None),  # an admin's: the daemon's
        "config.reload": ("forbidden", {}, None),
        "agents.status": ("missing", names(B), names(GHOST)),
        "agents.start": ("missing", names(B), names(GHOST)),
        "agents.stop": ("missing", names(B), names(GHOST)),
        "agents.restart": ("missing", names(B), names(GHOST)),
        "agents.signal": ("missing", {**names(B), "signal": "CONT"},
                          {**names(GHOST), "signal": "CONT"}),
        "agents.pause": ("missing", {"name": B}, {"name": GHOST}),
        "agents.resume": ("missing", {"name": B}, {"name": GHOST}),
        "agents.describe": ("missing", {"name": B}, {"name": GHOST}),
        "agents.history": ("missing", {"name": B}, {"name": GHOST}),
        "agents.rollback": ("missing", {"name": B}, {"name": GHOST}),
        "agents.update": ("missing", {"name": B, "set": {"env": {"X": "1"}}},
                          {"name": GHOST, "set": {"env": {"X": "1"}}}),
        "audit.list": ("forbidden", {}, None),
        "agents.add": ("forbidden", {"agents": {"new": {"command": "true", "tenant": "b"}}},
                       None),
        "agents.remove": ("missing", names(B), names(GHOST)),
        "agents.scale": ("missing", {"name": B, "replicas": 2},
                         {"name": GHOST, "replicas": 2}),
        "logs.tail": ("missing", names(B), names(GHOST)),
        "logs.follow": ("missing", names(B), names(GHOST)),
        "logs.rotate": ("forbidden", {}, None),  # every agent's files: the operator's
        "stats.get": ("listing", {}, None),
        "tasks.run": ("missing", run(B), run(GHOST)),
        "tasks.submit": ("missing", run(B), run(GHOST)),
        "tasks.get": ("missing", {"task_id": task_b}, {"task_id": ghost_task}),
        "tasks.list": ("missing", {"agent": B}, {"agent": GHOST}),
        "tasks.cancel": ("missing", {"task_id": task_b}, {"task_id": ghost_task}),
        "traces.get": ("missing", {"task_id": task_b}, {"task_id": ghost_task}),
        "tasks.stream": ("missing", {"task_id": task_b}, {"task_id": ghost_task}),
        # the bus is split by tenant: tests/test_tenants_fair.py tries another's
        "events.publish": ("own", None, None),
        "events.follow": ("own", None, None),
        "tools.list": ("missing", {"server": BS}, {"server": GHOST_S}),
        "tools.call": ("missing", {"name": f"{BS}__echo"}, {"name": f"{GHOST_S}__echo"}),
        "tools.pins": ("listing", {}, None),
        "mcp.status": ("listing", {}, None),
        "mcp.start": ("missing", {"name": BS}, {"name": GHOST_S}),
        "mcp.stop": ("missing", {"name": BS}, {"name": GHOST_S}),
        "mcp.restart": ("missing", {"name": BS}, {"name": GHOST_S}),
        # the servers file is the operator's (admin): a tenant's server is declared in
        # the config, under its tenant
        "mcp.add": ("forbidden", {"name": "x", "command": ["true"]}, None),
        "mcp.remove": ("forbidden", {"name": BS}, None),
        "resources.list": ("missing", {"server": BS}, {"server": GHOST_S}),
        "resources.read": ("missing", {"uri": "note://x", "server": BS},
                           {"uri": "note://x", "server": GHOST_S}),
        "prompts.list": ("missing", {"server": BS}, {"server": GHOST_S}),
        "prompts.get": ("missing", {"name": f"{BS}__p"}, {"name": f"{GHOST_S}__p"}),
        "gateway.status": ("own", None, None),
        "tokens.create": ("forbidden", {"name": "x", "scopes": ["admin"]}, None),
        "tokens.list": ("forbidden", {}, None),
        "tokens.revoke": ("forbidden", {"name": "ta"}, None),
        "stats.history": ("missing", {"agent": B}, {"agent": GHOST}),
        "agents.watch": ("missing", names(B), names(GHOST)),
        "stats.watch": ("own", None, None),
        # a dashboard of its own tenant (tests/test_ui.py opens one in a browser)
        "ui.login": ("own", None, None),
        "packages.deploy": ("forbidden", {"path": "/nonexistent"}, None),
        "packages.releases": ("missing", {"name": B}, {"name": GHOST}),
        "nodes.list": ("forbidden", {}, None),  # the cluster's nodes: the operator's
        "nodes.drain": ("forbidden", {"node": "n"}, None),
        "daemon.upgrade": ("forbidden", {"report": True}, None),  # the daemon: the operator's
        "tenants.list": ("listing", {}, None),
        "sessions.list": ("listing", {}, None),
        "sessions.get": ("missing", {"agent": B, "session": "s"},
                         {"agent": GHOST, "session": "s"}),
        "sessions.end": ("missing", {"agent": B, "session": "s"},
                         {"agent": GHOST, "session": "s"}),
        "tenants.add": ("forbidden", {"tenants": {"c": {}}}, None),
        "tenants.set": ("forbidden", {"name": "a", "set": {"max_agents": 100}}, None),
        "tenants.remove": ("forbidden", {"names": ["b"]}, None),
        # a workflow (and its runs) is a's when every agent of it is a's
        "workflows.list": ("listing", {}, None),
        "workflows.plan": ("missing", {"name": B}, {"name": GHOST}),
        "workflows.run": ("missing", {"name": B}, {"name": GHOST}),
        "runs.get": ("missing", {"run_id": run_b}, {"run_id": ghost_run}),
        "runs.list": ("listing", {}, None),
        "runs.cancel": ("missing", {"run_id": run_b}, {"run_id": ghost_run}),
        "runs.signal": ("missing", {"run_id": run_b, "name": "go"},
                        {"run_id": ghost_run, "name": "go"}),
        # a's own workflows only: another's agent in a table reads as no such agent
        # (tests/test_workflow_defs.py)
        "workflows.add": ("own", None, None),
        "workflows.describe": ("missing", {"name": B}, {"name": GHOST}),
        "workflows.update": ("missing", {"name": B, "set": {"timeout": 1}},
                             {"name": GHOST, "set": {"timeout": 1}}),
        "workflows.remove": ("missing", names(B), names(GHOST)),
        "workflows.history": ("missing", {"name": B}, {"name": GHOST}),
        "workflows.rollback": ("missing", {"name": B}, {"name": GHOST}),
        # a schedule is a's when its agents are a's
        "schedules.list": ("listing", {}, None),
        "schedules.pause": ("missing", {"name": B}, {"name": GHOST}),
        "schedules.resume": ("missing", {"name": B}, {"name": GHOST}),
        # teams as workflows (tests/test_team_defs.py): b's team is B + "t"
        "teams.list": ("listing", {}, None),
        "teams.add": ("own", None, None),
        "teams.describe": ("missing", {"name": B + "t"}, {"name": GHOST + "t"}),
        "teams.update": ("missing", {"name": B + "t", "set": {"description": "x"}},
                         {"name": GHOST + "t", "set": {"description": "x"}}),
        "teams.remove": ("missing", names(B + "t"), names(GHOST + "t")),
        "teams.history": ("missing", {"name": B + "t"}, {"name": GHOST + "t"}),
        "teams.rollback": ("missing", {"name": B + "t"}, {"name": GHOST + "t"}),
        # a team's calls: b's call as one that never was, its team as no team
        "teams.call": ("missing", {"name": B + "t"}, {"name": GHOST + "t"}),
        "calls.list": ("missing", {"name": B + "t"}, {"name": GHOST + "t"}),
        "calls.get": ("missing", {"call_id": call_b}, {"call_id": ghost_call}),
        "calls.cancel": ("missing", {"call_id": call_b}, {"call_id": ghost_call}),
        # an ask is its task's tenant's (docs/approvals.md): b's reads as none, and
        # cannot be decided
        "approvals.list": ("listing", {}, None),
        # its stream sends the asks of the caller's tasks alone (the rule's channel)
        "approvals.watch": ("own", None, None),
        "approvals.get": ("missing", {"id": ask_b}, {"id": ghost_ask}),
        "approvals.resolve": ("missing", {"id": ask_b, "decision": "approved"},
                              {"id": ghost_ask, "decision": "approved"}),
    }


@pytest.mark.deadline(180)
async def test_a_tenants_caller_finds_nothing_of_another_tenant(tmp_path: Path) -> None:
    workflows = "".join(f"[workflows.{n}]\n[[workflows.{n}.steps]]\nname = \"s\"\n"
                        f"agent = \"{n}\"\ninput = {{ do = \"echo\" }}\n" for n in ("a1", B))
    workflows += "".join(f"[schedules.{n}]\nagent = \"{n}\"\ncron = \"0 6 * * *\"\n"
                         for n in ("a1", B))
    teams = f'[teams.{B}t]\nmode = "broadcast"\nmembers = ["{B}"]\n'
    async with in_process(tmp_path, FLEET + workflows + teams, TWO) as d:
        b_task = (await _run(d, B, {"do": "echo"})).task_id
        a_task = (await _run(d, "a1", {"do": "echo"})).task_id
        ghost_task = b_task[:-4] + ("0000" if not b_task.endswith("0000") else "1111")
        b_run = (await call(d, "workflows.run", {"name": B, "wait": 30})).run_id
        ghost_run = b_run[:-4] + ("0000" if not b_run.endswith("0000") else "1111")
        b_call = (await call(d, "teams.call", {"name": B + "t", "wait": 30})).task_id
        ghost_call = b_call[:-4] + ("0000" if not b_call.endswith("0000") else "1111")
        # b's task asks a person (as its held tool call would: docs/approvals.md)
        b_ask = (await d.services.task_engine.inbox.ask(AskRequest(
            AskKind.APPROVAL, "b", b_task, 1, B, "tool:x",
            {"tool": f"{BS}__echo", "arguments": {}}))).id
        ghost_ask = b_ask[:-4] + ("0000" if not b_ask.endswith("0000") else "1111")
        # a token of tenant a, with every scope (admin too): the tenant bounds it still
        _, token = await tokens_of(d.services.store).create(
            "ta", sorted(m.SCOPES), None, None, "a")
        a = Caller(via="http", token=token.name, scopes=token.scopes, tenant=token.tenant)

        table = probes(b_task, ghost_task, b_run, ghost_run, b_call, ghost_call, b_ask,
                       ghost_ask)
        assert set(table) == set(REGISTRY), "a new method: say how a tenant sees it"
        tried = []
        for method, (kind, on_b, on_ghost) in table.items():
            if kind == "missing":
                code, text = await refused(d, a, method, on_b)
                g_code, g_text = await refused(d, a, method, on_ghost)
                assert code == g_code == jsonrpc.NOT_FOUND, (method, text)
                named = {GHOST: B, GHOST_S: BS, ghost_task: b_task, ghost_run: b_run,
                         ghost_call: b_call, ghost_ask: b_ask}
                for ghost, real in named.items():
                    g_text = g_text.replace(ghost, real)
                assert text == g_text, method
                tried.append(method)
            elif kind == "forbidden":
                code, text = await refused(d, a, method, on_b)
                assert code == jsonrpc.FORBIDDEN, (method, text)
                assert text.startswith("forbidden: token ta is a caller of tenant a: "), text
                tried.append(method)
            elif kind == "listing":
                await call(d, method, on_b, a)  # checked below
        # every refusal of a tenant's caller is audited, with its tenant
        await d.services.store.writer.written()
        rows = d.services.store.db.execute(
            "SELECT method, outcome, tenant, who FROM audit WHERE tenant IS NOT NULL"
        ).fetchall()
        audited = {r[0] for r in rows}
        assert set(tried) <= audited, set(tried) - audited
        assert all(t == "a" and who == "token ta" and o.startswith("error: ")
                   for _, o, t, who in rows)

        # the daemon's status line counts a's agents (every tenant's for the operator)
        assert (await call(d, "daemon.info", {}, a)).status == (
            "1 agent, 1/1 replica serving, 0 failed")
        assert (await call(d, "daemon.info", {})).status.startswith(
            "2 agents, 2/2 replicas serving, 3 MCP servers")
        # listings leave b's objects out; a's are there
        st = await call(d, "agents.status", {}, a)
        assert {r.name for r in st.agents} == {"a1"} and set(st.tasks) == {"a1"}
        assert {s["name"] for s in st.mcp_servers} <= {"aserv", "common"}
        # the pins of every server's tools (the operator's listing pins them all): a's
        await call(d, "tools.list", {})
        pinned = {p["server"] for p in (await call(d, "tools.pins", {})).pins}
        assert BS in pinned, pinned
        assert {p["server"] for p in (await call(d, "tools.pins", {}, a)).pins} == (
            pinned - {BS})
        stats = await call(d, "stats.get", {}, a)
        assert set(stats.agents) == {"a1"} and set(stats.tasks["agents"]) <= {"a1"}
        # the task totals are a's (one task), not the two tenants' (two)
        # (b's: its task, its workflow run's step and its team call's member)
        assert (await call(d, "stats.get", {})).tasks["total"]["succeeded"] == 4
        assert stats.tasks["total"]["succeeded"] == stats.tasks["total"]["accepted"] == 1
        assert stats.tasks["total"]["success_rate"] == 1.0
        tasks = await call(d, "tasks.list", {}, a)
        assert [t.task_id for t in tasks.tasks] == [a_task]
        assert [w.name for w in (await call(d, "workflows.list", {}, a)).workflows] == ["a1"]
        assert (await call(d, "teams.list", {}, a)).teams == []
        assert (await call(d, "runs.list", {}, a)).runs == []
        assert [s.name for s in (await call(d, "schedules.list", {}, a)).schedules] == ["a1"]
        assert [r.run_id for r in (await call(d, "runs.list", {})).runs] == [b_run]
        assert [t.name for t in (await call(d, "tenants.list", {}, a)).tenants] == ["a"]
        assert (await call(d, "approvals.list", {}, a)).asks == []
        assert [k.id for k in (await call(d, "approvals.list", {})).asks] == [b_ask]
        assert {s["name"] for s in (await call(d, "mcp.status", {}, a)).mcp_servers} <= {
            "aserv", "common"}
        tools = await call(d, "tools.list", {}, a)
        assert {t["server"] for t in tools.tools} == {"aserv", "common"}
        lines = await call(d, "logs.tail", {"lines": 1000}, a)
        assert {ln.source for ln in lines.lines} == {"a1"}
        # the operator sees both
        assert {r.name for r in (await call(d, "agents.status", {})).agents} == {"a1", B}
        # the gateway's figures name clients and tools: another tenant's are left out
        gateway = d.services.gateway
        for agent, tool in ((B, f"{BS}__echo"), ("a1", "aserv__echo")):
            await gateway.forward(gateway.identify(agent=agent), "tools/call", {
                "name": tool, "arguments": {"text": "x"}}, None)
        every = await call(d, "gateway.status", {})
        assert {"agent:a1", f"agent:{B}"} <= set(every["clients"])
        for seen in ((await call(d, "gateway.status", {}, a)),
                     (await call(d, "stats.get", {}, a)).gateway,
                     (await call(d, "mcp.status", {}, a)).gateway):
            assert set(seen["clients"]) == {"agent:a1"}, seen
            assert set(seen["tools"]) == {"aserv__echo"}, seen
        # a token limited to an agent glob is told of its agents' clients alone too (a
        # glob of no tenant names the default tenant's agents alone: issue 74)
        glob = Caller(via="http", token="g", agents="a*", tenant="a")
        assert set((await call(d, "stats.get", {}, glob)).gateway["clients"]) == {"agent:a1"}
        # the bus's followers: b's say what b follows
        bus = d.sup.events
        followers = [bus.follow("b.secret.*", "b"), bus.follow("a.*", "a")]
        try:
            assert [f["pattern"] for f in (await call(d, "stats.get", {}, a)).events[
                "followers"]] == ["a.*"]
            assert {f["pattern"] for f in (await call(d, "stats.get", {})).events[
                "followers"]} == {"b.secret.*", "a.*"}
        finally:
            for f in followers:
                bus.unfollow(f)

        # a tenant's agent reaches its tenant's servers and shared ones, not another's,
        # and its tenant's agents (decision 1790: their bound is where they are called)
        sup = d.sup
        assert sup.mcp.allowlist(sup.agents["a1"].spec) == [
            "corral__*", "aserv__*", "common__*"]
        called = await _run(d, "a1", {"do": "tools", "tool": f"{BS}__echo", "times": 1})
        assert f"tool {BS}__echo is not allowed for agent a1" in bytes(called.output).decode()
        listed = await gateway.list_items(gateway.identify(agent="a1"), "tools")
        assert {t["name"].split("__")[0] for t in listed} == {"aserv", "common"}


@pytest.mark.deadline(120)
async def test_a_tenant_token_over_http_and_the_cli(tmp_path: Path) -> None:
    import aiohttp

    port = free_port()
    async with in_process(tmp_path, sleeper("a1", "a") + sleeper(B, "b"),
                          TWO + f'[http]\nlisten = "127.0.0.1:{port}"\n') as d:
        rc, out, err = await cli(d, "token", "create", "ta", "--scope", "agents:read",
                                 "--scope", "agents:write", "--tenant", "a", "--json")
        assert rc == 0, err
        made = msgspec.json.decode(out)
        assert made["tenant"] == "a"
        rc, out, err = await cli(d, "token", "create", "tx", "--scope", "agents:read",
                                 "--tenant", "nope")
        assert rc == 1 and "token tx: no tenant nope (declared: a, b, default;" in err
        base = f"http://127.0.0.1:{port}/api/v1"
        headers = {"Authorization": f"Bearer {made['token']}"}
        async with aiohttp.ClientSession(headers=headers) as http:
            async with http.get(f"{base}/agents") as r:
                assert r.status == 200
                assert {a["name"] for a in (await r.json())["agents"]} == {"a1"}
            for verb, path in (("GET", f"/agents/{B}"), ("POST", f"/agents/{B}/stop"),
                               ("DELETE", f"/agents/{B}"), ("GET", f"/agents/{GHOST}")):
                async with http.request(verb, base + path) as r:
                    body = await r.json()
                    assert r.status == 404, (path, body)
            async with http.get(f"{base}/agents/{B}") as r:
                on_b = (await r.json())["detail"]
            async with http.get(f"{base}/agents/{GHOST}") as r:
                on_ghost = (await r.json())["detail"]
            assert on_b == on_ghost.replace(GHOST, B)
            async with http.patch(f"{base}/tenants/a", json={"set": {"max_agents": 9}}) as r:
                assert r.status == 403
            async with http.get(f"http://127.0.0.1:{port}/metrics") as r:
                assert r.status == 403  # the fleet's series are every tenant's
        secret, _ = await tokens_of(d.services.store).create("ops", ["metrics:read"], None,
                                                             None)
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {secret}"}
                                         ) as http, http.get(
                f"http://127.0.0.1:{port}/metrics") as r:
            text = await r.text()
        assert f'corral_tasks_queued{{agent="{B}",tenant="b"}} 0.0' in text
        assert 'corral_tasks_queued{agent="a1",tenant="a"} 0.0' in text
        stats = await call(d, "stats.get", {})
        assert {n: s.tenant for n, s in stats.agents.items()} == {"a1": "a", B: "b"}
        assert d.sup.agents[B].replicas[0].state in (State.READY, State.IDLE)
        rc, out, err = await cli(d, "status", "--tenant", "b", "--json")
        assert rc == 0, err
        assert {a["name"] for a in msgspec.json.decode(out)["agents"]} == {B}
        rc, out, err = await cli(d, "status", "--tenant", "nope")
        assert rc == 1 and "no such tenant: nope" in err


@pytest.mark.deadline(120)
async def test_a_token_limited_to_an_agent_glob_reads_no_tenant_or_fleet_aggregate(
        tmp_path: Path) -> None:
    """A token of `--agents GLOB` (with a tenant or not) sees some of a tenant's agents
    only: tenants.list (each tenant's use sums all its agents), /metrics and the
    fleet's stats.history are refused to it, saying so; a tenant's own token lists its
    tenant (decision 143)."""
    import aiohttp

    port = free_port()
    async with in_process(tmp_path, sleeper("a1", "a") + sleeper("a2", "a") + sleeper(
            B, "b"), TWO + f'[http]\nlisten = "127.0.0.1:{port}"\n') as d:
        secrets = {}
        for name, limit in (("g", ["--agents", "a1"]), ("ga", ["--tenant", "a", "--agents",
                                                                "a1"]),
                            ("ta", ["--tenant", "a"])):
            rc, out, err = await cli(d, "token", "create", name, "--scope", "agents:read",
                                     "--scope", "metrics:read", *limit)
            assert rc == 0, err
            secrets[name] = out.strip()
        base = f"http://127.0.0.1:{port}"

        async def get(name: str, path: str) -> tuple[int, Any]:
            async with aiohttp.ClientSession(headers={
                    "Authorization": f"Bearer {secrets[name]}"}) as http, http.get(
                    base + path) as r:
                return r.status, (await r.json() if r.content_type.endswith("json")
                                  else await r.text())

        # g, of no tenant, names the default tenant's agents alone: tenant a's a1 is
        # none of its (issue 74), and it is refused the aggregates all the same
        [token] = [t for t in tokens_of(d.services.store).list() if t.name == "g"]
        g = Caller(via="http", token="g", scopes=token.scopes, agents=token.agents)
        assert await refused(d, g, "stats.history", {"agent": "a1"}) == (
            jsonrpc.NOT_FOUND, "no such agent: a1 (there are no agents)")
        for name in ("g", "ga"):
            status, body = await get(name, "/api/v1/tenants")
            assert (status, body["detail"]) == (403, (
                f"forbidden: token {name} is limited to agents matching a1: tenants.list "
                "is for callers that see whole tenants (a tenant's use counts agents "
                "outside a1)")), body
            # the metrics history (the socket's and the dashboard's, no REST route)
            [token] = [t for t in tokens_of(d.services.store).list() if t.name == name]
            caller = Caller(via="http", token=name, scopes=token.scopes,
                            agents=token.agents, tenant=token.tenant)
            assert await refused(d, caller, "stats.history", {}) == (
                jsonrpc.FORBIDDEN, f"forbidden: token {name} is limited to agents "
                                   "matching a1: name an agent")
            if name == "g":
                continue
            await call(d, "stats.history", {"agent": "a1"}, caller)
            assert (await call(d, "daemon.info", {}, caller)).status == (
                "1 agent, 1/1 replica serving, 0 failed")
            status, body = await get(name, "/api/v1/stats")
            assert status == 200 and set(body["agents"]) == {"a1"}, body
        # one refusal for every limited caller; it says which limit
        for name, whose in (("g", "limited to agents matching a1"),
                            ("ga", "limited to agents matching a1"),
                            ("ta", "a caller of tenant a")):
            status, body = await get(name, "/metrics")
            assert (status, body["detail"]) == (403, (
                f"forbidden: /metrics is every agent's; token {name}, {whose}, reads "
                "theirs at /api/v1/stats")), body
        status, body = await get("ta", "/api/v1/tenants")
        assert status == 200 and [t["name"] for t in body["tenants"]] == ["a"]
        assert body["tenants"][0]["use"]["agents"] == 2
        # the operator lists both
        assert [t.name for t in (await call(d, "tenants.list")).tenants] == [
            "a", "b", "default"]


@pytest.mark.deadline(60)
async def test_a_limited_callers_status_names_no_other_elastic_agent(
        tmp_path: Path) -> None:
    """agents.status's `elastic` (by agent) holds the caller's elastic agents only."""
    async with in_process(tmp_path, sleeper("a1", "a", "hibernate_after = 600\n")
                          + sleeper(B, "b", "hibernate_after = 600\n"), TWO) as d:
        assert set((await call(d, "agents.status", {})).elastic) == {"a1", B}
        for caller in (Caller(via="http", token="ta", tenant="a"),
                       Caller(via="http", token="g", agents="a*", tenant="a")):
            st = await call(d, "agents.status", {}, caller)
            assert set(st.elastic) == {"a1"} and {r.name for r in st.agents} == {"a1"}


@pytest.mark.deadline(60)
async def test_a_limited_caller_adds_no_cluster_agent_by_flag_or_by_table(
        tmp_path: Path) -> None:
    """The cluster's agents run on every node, past one node's tenant quotas: a caller
    limited to a tenant or a glob may not add one, by --cluster or by a table's
    `placement` (refused before the daemon is asked whether it is a node at all)."""
    async with in_process(tmp_path, sleeper("a1", "a"), TWO) as d:
        for caller, limit in ((Caller(via="http", token="ta", tenant="a"),
                               "is a caller of tenant a"),
                              (Caller(via="http", token="g", agents="a*"),
                               "is limited to agents matching a*")):
            for params, key in (
                    ({"agents": {"a2": {"command": "true"}}, "cluster": True}, ""),
                    ({"agents": {"a2": {"command": "true", "placement": "cluster"}}},
                     ' (agents.a2.placement: "cluster")')):
                assert await refused(d, caller, "agents.add", params) == (
                    jsonrpc.FORBIDDEN, f"forbidden: token {caller.token} {limit}: may not "
                                       f"add cluster agents{key}"), params
        assert set(d.sup.agents) == {"a1"}


@pytest.mark.deadline(120)
async def test_the_event_stream_over_http_is_split_by_tenant(tmp_path: Path) -> None:
    """`/events/stream` is read from one ring of every tenant's events: a tenant's token
    is sent its tenant's and those sent to all, an operator's `?tenant=b` b's and those
    sent to all, as followers on the socket are; an unknown tenant is not found."""
    import aiohttp

    from corral.daemon.http.rest import API_KEY

    from .test_http_api import sse_events

    port = free_port()
    async with in_process(tmp_path, sleeper("a1", "a") + sleeper(B, "b"),
                          TWO + f'[http]\nlisten = "127.0.0.1:{port}"\n') as d:
        secrets = {}
        for name, limit in (("ta", ["--tenant", "a"]), ("ops", [])):
            rc, out, err = await cli(d, "token", "create", name, "--scope", "events", *limit)
            assert rc == 0, err
            secrets[name] = out.strip()
        base = f"http://127.0.0.1:{port}/api/v1/events/stream"
        ring = d.http_server.app[API_KEY].ring

        async def topics(name: str, query: str) -> list[str]:
            async with aiohttp.ClientSession(headers={
                    "Authorization": f"Bearer {secrets[name]}"}) as http, http.get(
                    base + query) as stream:
                assert stream.status == 200, await stream.text()
                await wait_until_async(lambda: len(ring.readers) == 1)
                for tenant in ("b", "a", None):
                    await call(d, "events.publish", {"topic": f"x.{tenant or 'all'}",
                                                     "data": 1, "tenant": tenant})
                got = await sse_events(stream, 2)
            await wait_until_async(lambda: not ring.readers)
            return [e["data"]["topic"] for e in got]

        assert await topics("ta", "?pattern=x.*") == ["x.a", "x.all"]
        assert await topics("ops", "?tenant=b") == ["x.b", "x.all"]
        assert await topics("ops", "") == ["x.b", "x.a"]  # every tenant's (two read)
        # another tenant, for a tenant's token, is as one there is not
        for name, query in (("ops", "?tenant=nope"), ("ta", "?tenant=b")):
            async with aiohttp.ClientSession(headers={
                    "Authorization": f"Bearer {secrets[name]}"}) as http, http.get(
                    base + query) as r:
                assert (r.status, (await r.json())["detail"]) == (
                    404, f"no such tenant: {query.partition('=')[2]}"), name


# a client of the control socket in the standard library alone, for a Python user nobody
# may run: one request, its answer on stdout
RAW_MCP = """
import http.client, json, socket, sys
class Conn(http.client.HTTPConnection):
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(30)
        self.sock.connect(sys.argv[1])
meta = {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {}}
c = Conn("localhost")
c.request("POST", "/mcp" + (f"?agent={sys.argv[2]}" if sys.argv[2] else ""),
          json.dumps({"jsonrpc": "2.0", "id": 1, "method": "server/discover",
                      "params": {"_meta": meta}}),
          {"Content-Type": "application/json", "Accept": "application/json",
           "Mcp-Method": "server/discover"})
r = c.getresponse()
print(r.status, r.read().decode())
"""
RAW_CLIENT = """
import json, socket, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(30)
s.connect(sys.argv[1])
s.sendall(json.dumps({"jsonrpc": "2.0", "id": 1, "method": sys.argv[2],
                      "params": json.loads(sys.argv[3])}).encode() + b"\\n")
print(s.makefile("rb").readline().decode())
"""


def test_a_tenants_group_that_does_not_exist_is_reported_and_maps_no_peer() -> None:
    said: list[tuple[str, int]] = []

    def report(line: str, priority: int = 6) -> None:
        said.append((line, priority))

    specs = {"a": TenantSpec(group="corral-no-such-group"), "b": TenantSpec(group="root"),
             "c": TenantSpec()}
    assert groups_of(specs, report) == {0: "b"}
    assert said == [("tenant a: group corral-no-such-group does not exist; no socket peer "
                     "is of this tenant by its group", 4)]


@pytest.mark.skipif(nobody_reason() is not None, reason=nobody_reason() or "")
@pytest.mark.deadline(120)
def test_a_unix_group_of_a_tenant_on_the_socket() -> None:
    """A peer in a tenant's group (`nobody` in `nogroup`, the test run as root) calls as
    that tenant: it sees its own agents only, another's are not found; root, the
    operator, sees all."""
    import subprocess

    tmp = shared_tmpdir()
    d = DaemonProcess(tmp, hello("a1", extra='tenant = "a"\n') + hello(
        B, extra='tenant = "b"\n'))
    d.config.write_text(d.config.read_text() + '[tenants.a]\ngroup = "nogroup"\n'
                        "[tenants.b]\n")

    def as_nobody_mcp(agent: str | None) -> tuple[int, str]:
        """A 2026-07-28 server/discover POSTed to the local socket as nobody: its status,
        and its refusal's words ('' none)."""
        r = subprocess.run([NOBODY_PY, "-c", RAW_MCP, f"{d.sock}.mcp", agent or ""],
                           capture_output=True, text=True, timeout=60, user="nobody",
                           group="nogroup", extra_groups=[], cwd="/")
        assert r.returncode == 0, r.stderr
        status, _, body = r.stdout.partition(" ")
        return int(status), "" if status == "200" else json.loads(body)["error"]["message"]

    def as_nobody(method: str, params: dict[str, Any]) -> dict[str, Any]:
        r = subprocess.run([NOBODY_PY, "-c", RAW_CLIENT, str(d.sock), method,
                            json.dumps(params)], capture_output=True, text=True,
                           timeout=60, user="nobody", group="nogroup",
                           extra_groups=[], cwd="/")
        assert r.returncode == 0, (r.stderr, (d.state / "logs" / "corral.log").read_text())
        answer: dict[str, Any] = json.loads(r.stdout)
        return answer

    try:
        d.start()
        assert os.stat(d.sock).st_mode & 0o777 == 0o666
        got = as_nobody("agents.status", {})
        assert "result" in got, got
        assert {a["name"] for a in got["result"]["agents"]} == {"a1"}
        on_b = as_nobody("agents.stop", {"names": [B]})["error"]
        on_ghost = as_nobody("agents.stop", {"names": [GHOST]})["error"]
        assert on_b["code"] == jsonrpc.NOT_FOUND
        assert on_b["message"] == on_ghost["message"].replace(GHOST, B)
        refused = as_nobody("tenants.set", {"name": "a", "set": {"max_agents": 9}})["error"]
        assert refused["code"] == jsonrpc.FORBIDDEN
        assert refused["message"].startswith("forbidden: uid 65534 pid ")
        assert refused["message"].endswith(" is a caller of tenant a: tenants.set is for "
                                           "callers that see every agent")
        assert {a["name"] for a in d.json("status")["agents"]} == {"a1", B}
        audit = d.json("audit")["entries"]
        assert [e["tenant"] for e in audit if e["method"] == "agents.stop"] == ["a", "a"]
        # the MCP gateway's local socket (`corral mcp serve`'s) judges its peer as the
        # control socket does: open as it is, and the tenant's peer is one of its agents
        assert os.stat(f"{d.sock}.mcp").st_mode & 0o777 == 0o666
        assert as_nobody_mcp("a1") == (200, "")
        status, said = as_nobody_mcp(None)
        assert status == 403 and said.startswith("forbidden: uid 65534 pid ")
        assert said.endswith(" is a caller of tenant a: a gateway client of its own is one "
                             "of its agents (agent, not token)")
        assert as_nobody_mcp(B) == (404, f"no such agent: {B}")
        assert as_nobody_mcp(GHOST) == (404, f"no such agent: {GHOST}")
        assert d.stop() == 0
    finally:
        d.close()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.mark.deadline(120)
async def test_a_reload_brings_new_tenants_and_keeps_those_runtime_agents_are_in(
        tmp_path: Path) -> None:
    async with in_process(tmp_path, hello("a1"), "[tenants.old]\n") as d:
        config = d.services.config_path
        await call(d, "agents.add", {"agents": {"r1": {
            "command": [PY, str(EXAMPLES / "hello.py")], "env": {"PYTHONPATH": str(ROOT)},
            "tenant": "old"}}})
        text = config.read_text()
        config.write_text(text.replace("[tenants.old]\n", "[tenants.new]\nmax_agents = 1\n")
                          + hello("n1", extra='tenant = "new"\n'))
        code, msg = await refused(d, OPERATOR, "config.reload")
        assert (code, msg) == (jsonrpc.INVALID_PARAMS, f"reload rejected, nothing changed: "
                               f"{config}: tenants.old: agent r1 (added at runtime) is in "
                               "it: remove the agent first")
        assert d.sup.tenancy.names() == ["default", "old"]
        config.write_text(text + "[tenants.new]\nmax_agents = 1\n"
                          + hello("n1", extra='tenant = "new"\n'))
        result = await call(d, "config.reload")
        assert result.added == ["n1"]
        assert d.sup.tenancy.names() == ["default", "new", "old"]
        assert d.sup.agents["n1"].spec.tenant == "new"
        code, msg = await refused(d, OPERATOR, "agents.add", {"agents": {"n2": {
            "command": "true", "tenant": "new"}}, "check": False})
        assert msg == "tenant new: max_agents 1 reached (1 in use); adding n2 needs 1 more"


# -- the sandbox's values of a tenant ---------------------------------------------------------
def test_an_agent_takes_its_tenants_sandbox_and_network_unless_it_sets_its_own(
        tmp_path: Path) -> None:
    from corral.supervisor.config import TenantSpec
    from corral.supervisor.isolation import Isolation, isolation

    path = tmp_path / "corral.toml"
    path.write_text(textwrap.dedent("""
        [tenants.boxed]
        sandbox = "bwrap"
        network = "none"
        [agents.a]
        command = "true"
        tenant = "boxed"
        [agents.b]
        command = "true"
        tenant = "boxed"
        network = "host"
    """))
    cfg = load_config(path)
    boxed = cfg.tenants["boxed"]
    assert isolation(cfg.agents["a"], boxed) == Isolation("bwrap", "none")
    assert isolation(cfg.agents["b"], boxed) == Isolation("bwrap", "host")
    assert isolation(cfg.agents["a"], TenantSpec()) == Isolation("none", "host")
    # the tenant's network needs a sandbox, as an agent's own does
    path.write_text('[tenants.t]\nnetwork = "none"\n[agents.a]\ncommand = "true"\n'
                    'tenant = "t"\n')
    assert config_error(path) == (f'{path}: agents.a.network: network = "none" needs '
                                  'sandbox = "bwrap" (without a sandbox an agent shares the '
                                  "host's network)")


@pytest.mark.deadline(120)
async def test_a_tenants_sandbox_runs_its_agents_in_bubblewrap(tmp_path: Path) -> None:
    from corral.supervisor.sandbox import host_refusal

    why = host_refusal("bwrap", None)
    if why is not None:
        pytest.skip(f"no sandbox here: {why}")
    home = tmp_path / "home"
    home.mkdir()
    agents = textwrap.dedent(f"""
        [agents.box]
        command = ["{PY}", "{Path(__file__).with_name('sandbox_agent.py')}"]
        env = {{ PYTHONPATH = "{ROOT}" }}
        cwd = "{home}"
        tenant = "boxed"
        stop_timeout = 5.0
    """)
    async with in_process(tmp_path, agents, '[tenants.boxed]\nsandbox = "bwrap"\n') as d:
        r = d.sup.agents["box"].replicas[0]
        assert r.process is not None
        cmdline = Path(f"/proc/{r.process.pid}/cmdline").read_bytes().split(b"\0")
        assert Path(cmdline[0].decode()).name == "bwrap", cmdline[:3]
        outside = tmp_path / "outside.txt"
        done = await call(d, "tasks.run", msgspec.json.encode(
            {"agent": "box", "input": {"do": "write", "path": str(outside)}}))
        assert done.status == "succeeded" and not outside.exists()  # its private /tmp


# -- memory and CPU, by sampling --------------------------------------------------------------
def holder(name: str, tenant: str) -> str:
    return tenant_agent(name, tenant, Path(__file__).with_name("sandbox_agent.py"),
                        "stop_timeout = 5.0\nbackoff_initial = 0.05\n")


@pytest.mark.deadline(120)
async def test_a_tenant_over_its_memory_has_its_largest_replica_restarted_in_order(
        tmp_path: Path) -> None:
    toml = "[tenants.acme]\nmax_memory_mb = 150\n[tenants.other]\n"
    agents = holder("big", "acme") + holder("small", "acme") + holder("else", "other")
    async with in_process(tmp_path, agents, toml) as d:
        sup = d.sup
        big, small, other = (sup.agents[n].replicas[0] for n in ("big", "small", "else"))
        before = (small.pid, other.pid)
        await wait_until_async(lambda: small.sample.rss_bytes > 8 << 20)
        await asyncio.wait_for(call(d, "tasks.run", msgspec.json.encode(
            {"agent": "big", "input": {"do": "hold", "mb": 200}})), 60)
        await wait_until_async(lambda: big.last_exit is not None, timeout=30)
        said = big.last_exit
        assert said is not None and said.startswith(
            "tenant acme: max_memory_mb 150 exceeded (") and said.endswith(
            " MiB in use); its largest replica restarted"), said
        await sup.wait_state("big", {State.READY, State.IDLE}, timeout=30)
        # the others ran on: the tenant's smaller replica, and another tenant's
        assert (small.pid, other.pid) == before
        assert (small.restarts, other.restarts) == (0, 0)
        entry = {t.name: t for t in (await call(d, "tenants.list")).tenants}["acme"]
        assert "max_memory_mb" in entry.enforced


@pytest.mark.deadline(120)
async def test_a_gateway_client_of_a_tenant_calls_no_other_tenants_server_whatever_its_list(
        tmp_path: Path) -> None:
    """An allowlist made when a replica started may predate another tenant's server (a
    reload adds it): whose a server is is judged at each call, whatever the list says."""
    async with in_process(tmp_path, FLEET, TWO) as d:
        gw = d.services.gateway
        # as a's replica would be, with an allowlist of every tool (`tools = ["*"]` from
        # before b's server was there)
        ident = Identity(name="a1#0", allow=["*"], owner="a1#0", tenant="a",
                         max_concurrent=4, rate_per_minute=0, max_sessions=1)
        # (b's server answered as one that is not there: decision 1694)
        for server in ("zserv", "nosuch"):
            with pytest.raises(RpcError) as err:
                await gw.call(ident, f"{server}__echo", {"text": "x"})
            assert err.value.message == (f"no such tool: {server}__echo (no MCP server "
                                         f"{server})")
        # its own tenant's and the shared ones it calls
        assert await gw.call(ident, "aserv__echo", {"text": "x"}) is not None
        assert await gw.call(ident, "common__echo", {"text": "x"}) is not None
        # an operator's client (no tenant, and saying so) calls every server; one of no
        # tenant that is not the operator's is the default tenant's (issue 74)
        ops = Identity(name="ops", allow=None, owner="ops", max_concurrent=4,
                       rate_per_minute=0, max_sessions=1, operator=True)
        assert await gw.call(ops, "zserv__echo", {"text": "x"}) is not None
