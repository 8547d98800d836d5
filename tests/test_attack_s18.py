"""An attacker's pass over session 17's surfaces and what no pass had read (docs/security.md
keeps them): the sandbox's binds as a tenant's table names them, beside decision 2115's
relative PYTHONPATH, and what else the session landed. Real daemons, real bubblewrap, a
real redis-server. A hole not yet closed is a strict xfail that names it; one closed, a
test of its refusal."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import redis as redis_py

from corral.cluster.keys import Keys
from corral.daemon.tokens import tokens_of
from corral.supervisor import State
from corral.supervisor.dynamicusers import homes_of

from .cluster.test_cluster_running_calls import two_with_once
from .conftest import ROOT
from .daemon_harness import (
    PY,
    free_port,
    in_process,
    running_daemon,
    shared_tmpdir,
)
from .redis_harness import REDIS_SERVER, RedisServer, redis_server
from .sandboxprobe import sandbox_refusal
from .test_daemon_cli import wait_until
from .test_http_api import SOCKET

HERE = Path(__file__).resolve().parent
K = Keys("test")  # the cluster harness's name
NO_FILE = "FileNotFoundError: [Errno 2] No such file or directory"
NO_SANDBOX = pytest.mark.skipif(sandbox_refusal(None) is not None,
                                reason=f"no sandbox here: {sandbox_refusal(None)}")


async def _run(d: Any, name: str, given: dict[str, Any]) -> Any:
    done = await asyncio.wait_for(d.dispatcher.call(SOCKET, "tasks.run", msgspec.json.encode(
        {"agent": name, "input": given})), 60)
    return msgspec.json.decode(msgspec.json.encode(done))


async def _tenant(d: Any, port: int) -> Any:
    """An HTTP session as acme's admin (agents written, tasks run)."""
    import aiohttp

    secret, _ = await tokens_of(d.services.store).create(
        "acme-admin", ["admin", "agents:write", "agents:read", "tasks:run"], None, None,
        "acme")
    return aiohttp.ClientSession(base_url=f"http://127.0.0.1:{port}",
                                 headers={"Authorization": f"Bearer {secret}"})


def _sandboxed(extra: dict[str, Any]) -> dict[str, Any]:
    return {"command": [PY, f"{HERE}/attack_s18_agent.py"], "env": {"PYTHONPATH": str(ROOT)},
            "start_timeout": 60.0, "stop_timeout": 5.0, "backoff_initial": 0.05, **extra}


# -- a relative PYTHONPATH: checked from the agent's cwd, bound from the daemon's ---------

@NO_SANDBOX
@pytest.mark.deadline(120)
async def test_a_tenants_relative_pythonpath_binds_nothing_of_the_daemons_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The attack: a tenant's admin posts a sandboxed agent whose PYTHONPATH names `.` (or
    `home`, `srv/b`: any path below where the daemon started). tenantbinds.py reads each
    entry from the agent's cwd, inside it, and lets it pass (as a cold start reads it,
    decision 2115); the sandbox's binds read the same entry from the daemon's own cwd
    (`os.path.abspath`), and bound that directory read-only into the sandbox. The shipped
    systemd unit names no WorkingDirectory, so the daemon runs at / and `.` bound the
    host's whole tree. Here the daemon's directory is `host`, holding a secret: the
    agent may read its cwd and what corral binds, never `host`."""
    host, acme = tmp_path / "host", tmp_path / "acme"
    host.mkdir()
    acme.mkdir()
    (host / "secret.txt").write_text("the host's secret")
    monkeypatch.chdir(host)  # where the daemon started (a systemd unit's /)
    port = free_port()
    tenants = (f'[tenants.acme]\ndir = "{acme}"\nsandbox = "bwrap"\n\n'
               f'[http]\nlisten = "127.0.0.1:{port}"\n')
    async with in_process(tmp_path, "", tenants) as d:
        async with await _tenant(d, port) as http, http.post("/api/v1/agents", json={
                "agents": {"box": _sandboxed({"env": {"PYTHONPATH": f"{ROOT}{os.pathsep}."}})}
        }) as r:
            assert r.status == 200, await r.text()
        assert d.sup.agents["box"].spec.tenant == "acme"
        await d.sup.wait_state("box", {State.READY, State.IDLE}, timeout=60)
        done = await _run(d, "box", {"do": "read", "path": str(host / "secret.txt")})
        assert done["output"] == {"error": f"{NO_FILE}: '{host / 'secret.txt'}'"}, done


# -- a link another agent of its tenant leaves where an agent's cwd was ------------------

@NO_SANDBOX
@pytest.mark.deadline(180)
async def test_a_link_put_where_an_agents_cwd_was_binds_no_host_directory(
        tmp_path: Path) -> None:
    """The attack: tenant acme's caller adds two sandboxed agents, `keeper` in acme's dir
    (an agent that names no cwd runs there) and `box` in acme/box, a directory of it.
    privilege.py resolves box's cwd once, at the add: inside acme's dir. keeper writes
    acme's dir: it moves `box` away and puts a link there to a host directory. box's next
    start (its own restart, a crash's) binds its cwd as named, which bubblewrap follows on
    the host: the host directory is bound writable as box's cwd, and box reads (and
    writes) it. No directory is a tenant's agent's but inside its tenant's dir."""
    hostdir, acme = tmp_path / "hostdir", tmp_path / "acme"
    hostdir.mkdir()
    (acme / "box").mkdir(parents=True)
    (hostdir / "secret.txt").write_text("the host's secret")
    port = free_port()
    tenants = (f'[tenants.acme]\ndir = "{acme}"\nsandbox = "bwrap"\n\n'
               f'[http]\nlisten = "127.0.0.1:{port}"\n')
    async with in_process(tmp_path, "", tenants) as d:
        async with await _tenant(d, port) as http:
            async with http.post("/api/v1/agents", json={"agents": {
                    "keeper": _sandboxed({}),
                    "box": _sandboxed({"cwd": str(acme / "box")})}}) as r:
                assert r.status == 200, await r.text()
            for name in ("keeper", "box"):
                await d.sup.wait_state(name, {State.READY, State.IDLE}, timeout=60)
            done = await _run(d, "keeper", {"do": "swap", "path": str(acme / "box"),
                                            "target": str(hostdir)})
            assert done["output"] == {"ok": str(acme / "box")}, done
            assert (acme / "box").resolve() == hostdir
            before = d.sup.agents["box"].replicas[0].pid
            async with http.post("/api/v1/agents/box/restart", json={}) as r:
                assert r.status == 200, await r.text()
            replica = await d.sup.wait_state("box", {State.READY, State.IDLE, State.FAILED},
                                             timeout=60)
            assert replica.pid != before
        # its start refused: no process of it ran with the host directory bound
        assert replica.state is State.FAILED, replica.state
        assert replica.last_exit == (
            f"spawn failed: its cwd {acme / 'box'} is {hostdir} now, outside its tenant's "
            f"dir ({acme}) through a link there: a cwd is bound inside its tenant's dir alone")


# -- a freed name's uid and state directory --------------------------------------------

DYNAMIC = "dynamic_uids = [61184, 65519]"  # DESIGN's default, which the harness turns off


def _plain(script: str) -> dict[str, Any]:
    """A tenant's program of no protocol, run by the system's shell (a dynamic uid's)."""
    return {"protocol": "none", "command": ["/bin/sh", "-c", script], "restart": "never"}


@pytest.mark.deadline(120)
@pytest.mark.skipif(os.geteuid() != 0, reason="dynamic users: the daemon runs agents as "
                    "other uids only as root")
def test_a_freed_names_uid_and_state_directory_are_not_another_tenants() -> None:
    """The attack: tenant b's caller watches for a name another tenant frees (acme's
    `worker`, removed) and adds an agent of that name. A dynamic uid is picked by the
    name's hash and kept by the name for the daemon's life (dynamicusers.py `uid_of`),
    and its state directory (its HOME, $STATE_DIRECTORY) is `STATE-agents/NAME`: b's
    worker ran as acme's worker's uid with acme's directory as its own, and read what
    acme's agent kept there (its credentials, its caches). Decision 1986's kin (revisions,
    checkpoints, scales and schedules of a freed name are not the next tenant's): the
    newcomer of another tenant finds neither the uid's files nor the directory's."""
    import httpx

    tmp = shared_tmpdir()
    for tenant in ("acme", "b"):
        (tmp / tenant).mkdir(mode=0o755)
    port = free_port()
    extra = (f"{DYNAMIC}\n\n[tenants.acme]\ndir = \"{tmp / 'acme'}\"\n\n"
             f"[tenants.b]\ndir = \"{tmp / 'b'}\"\n\n[http]\nlisten = \"127.0.0.1:{port}\"\n")
    homes = homes_of(tmp / "state")
    with running_daemon(tmp, "", extra=extra) as d:
        def admin(tenant: str) -> httpx.Client:
            made = d.json("token", "create", f"{tenant}-admin", "--tenant", tenant,
                          "--scope", "agents:write", "--scope", "agents:read")
            return httpx.Client(base_url=f"http://127.0.0.1:{port}/api/v1", timeout=30,
                                headers={"Authorization": f"Bearer {made['token']}"})

        with admin("acme") as acme, admin("b") as b:
            keep = ('umask 077; echo "acme\'s key" > "$HOME/key.tmp"; '
                    'mv "$HOME/key.tmp" "$HOME/key"; exec sleep 1000')
            r = acme.post("/agents", json={"agents": {"worker": _plain(keep)}})
            assert r.status_code == 200, r.text
            wait_until((homes / "worker.acme" / "key").exists, timeout=30, what="acme's key")
            acme_uid = (homes / "worker.acme").stat().st_uid
            r = acme.delete("/agents/worker")
            assert r.status_code == 200, r.text
            look = ('{ id -u; echo "$HOME"; cat "$HOME/key" 2>&1; } > "$HOME/said.tmp"; '
                    'mv "$HOME/said.tmp" "$HOME/said"; exec sleep 1000')
            r = b.post("/agents", json={"agents": {"worker": _plain(look)}})
            assert r.status_code == 200, r.text
        # (wherever its HOME is)
        wait_until(lambda: any(homes.glob("**/said")), timeout=30, what="b's look")
        said = next(iter(homes.glob("**/said"))).read_text().splitlines()
        assert said[0] != str(acme_uid), said
        assert "acme's key" not in said, said


# -- a node's drain order that is no number ----------------------------------------------

@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    assert REDIS_SERVER is not None, "redis-server is not installed: . scripts/redis.sh"
    with redis_server(tmp_path / "redis") as server:
        yield server


@pytest.mark.deadline(150)
def test_a_drain_order_that_is_no_number_keeps_no_running_calls_from_the_views(
        tmp_path: Path, redis: RedisServer) -> None:
    """The attack: a writer of the cluster's Redis sets node a's drain order (`draining`,
    read by a's every beat as the incarnation asked to drain) to a text of no number.
    `int()` raised ValueError out of the beat, which the loop's keeper said and started
    again a beat later, every beat: the steps after the drain's (runningcalls.py's write
    of the node's running attempts' tool calls, decision 2095, and Redis's check) never
    ran, so every other node's view of a task running at a said none of its calls, and
    a's log had a failure a beat. An order that is no number is no order, as a beat that
    does not parse is no node's (decision 2097)."""
    marker = tmp_path / "marker"
    with two_with_once(tmp_path, redis) as (a, b):
        direct = redis_py.Redis.from_url(redis.url)
        try:
            direct.hset(K.draining, "a", b"drain me")
        finally:
            direct.close()
        task_id = b.call("tasks.submit", {"agent": "once", "input": {
            "calls": 3, "stop_after": 2, "how": "hang", "marker": str(marker)}})["task_id"]
        wait_until(marker.exists, 60, "the worker past call 2")
        log = a.state / "logs" / "corral.log"

        def failed() -> bool:
            return "the beat loop failed" in log.read_text(errors="replace")

        # whichever comes first: b's view of the two calls, or a's beat failing
        wait_until(lambda: failed() or b.call("tasks.get", {"task_id": task_id}
                                              )["tool_calls"] == 2, 60, "b's view or a's failure")
        assert not failed(), [line for line in log.read_text().splitlines()
                              if "loop failed" in line][:1]
        assert b.call("tasks.get", {"task_id": task_id})["tool_calls"] == 2
        assert a.call("tasks.cancel", {"task_id": task_id})["status"] == "cancelled"


# -- a command spelt through a `..`: checked normalized, its installation bound as spelt --

async def _written(path: Path) -> str:
    """What a program writes whole at `path` (a name it moves there), once it is there."""
    async def there() -> None:
        while not path.exists():
            await asyncio.sleep(0.05)
    await asyncio.wait_for(there(), 60)
    return path.read_text()


SPELT = "/tmp/../bin/sh"  # the system's shell, spelt through a directory that is no system's


@NO_SANDBOX
@pytest.mark.deadline(120)
@pytest.mark.parametrize("where", ("command", "health check"))
async def test_a_tenants_program_spelt_through_a_dot_dot_binds_no_host_root(
        tmp_path: Path, where: str) -> None:
    """The attack: a tenant's admin posts a sandboxed program whose command (or whose
    health check's command) is the system's shell spelt `/tmp/../bin/sh`. tenantbinds.py
    judges an agent's command normalized, /bin/sh, a system program any tenant may run (a
    check's command it does not judge); the sandbox binds the program's installation, the
    parent of its bin directory as spelt, `/tmp/..`, which `_prefix` does not take for
    the root (its first part is `tmp`, no system directory) and `sandboxed` binds
    normalized: `/`, the host's whole tree read-only (corral's own files masked). The
    shell cats a host file into the agent's cwd."""
    host, acme = tmp_path / "host", tmp_path / "acme"
    host.mkdir()
    acme.mkdir()
    (host / "secret.txt").write_text("the host's secret")
    port = free_port()
    tenants = (f'[tenants.acme]\ndir = "{acme}"\nsandbox = "bwrap"\n\n'
               f'[http]\nlisten = "127.0.0.1:{port}"\n')
    look = f"cat {host / 'secret.txt'} > said.tmp 2>&1; mv said.tmp said"
    table: dict[str, Any] = {"protocol": "none", "restart": "never"}
    if where == "command":
        table["command"] = [SPELT, "-c", f"{look}; exec sleep 1000"]
    else:
        table["command"] = ["/bin/sleep", "1000"]
        table["health"] = {"liveness": {"command": [SPELT, "-c", look], "interval": 0.2}}
    async with in_process(tmp_path, "", tenants) as d:
        async with await _tenant(d, port) as http, http.post(
                "/api/v1/agents", json={"agents": {"box": table}}) as r:
            assert r.status == 200, await r.text()
        said = await _written(acme / "said")
        assert said == f"cat: {host / 'secret.txt'}: No such file or directory\n", said


@NO_SANDBOX
@pytest.mark.deadline(120)
async def test_a_tenants_check_command_outside_its_cwd_is_refused_as_its_command_is(
        tmp_path: Path) -> None:
    """The attack: tenant acme's caller, refused a command in a host directory (its
    installation would be bound: tests/test_boundary_binds.py), names it as its agent's
    liveness check's command instead. A check runs beside the agent, in a sandbox made as
    the agent's (`_wrap(beside=True)`), which binds the check program's installation as it
    binds the agent's: the host directory, read-only. The program here reads what its
    directory holds into the agent's cwd. A check's command, and a recovery's, are refused
    where the agent's command is, the key named."""
    host, acme = tmp_path / "host", tmp_path / "acme"
    host.mkdir()
    acme.mkdir()
    (host / "secret.txt").write_text("the host's secret")
    tool = host / "tool"
    tool.write_text(f"#!/bin/sh\ncat {host / 'secret.txt'} > said.tmp 2>&1; mv said.tmp said\n")
    tool.chmod(0o755)
    port = free_port()
    tenants = (f'[tenants.acme]\ndir = "{acme}"\nsandbox = "bwrap"\n\n'
               f'[http]\nlisten = "127.0.0.1:{port}"\n')
    async with in_process(tmp_path, "", tenants) as d:
        async with await _tenant(d, port) as http:
            for refused in ({"command": [str(tool)]},
                            {"health": {"liveness": {"command": [str(tool)], "interval": 0.2}},
                             "command": ["/bin/sleep", "1000"]}):
                async with http.post("/api/v1/agents", json={"agents": {"box": {
                        "protocol": "none", "restart": "never", **refused}}}) as r:
                    body = await r.json()
                    assert r.status == 403, (refused, body)
                    assert f'is {tool}, outside its cwd ({acme})' in body["detail"], body
        assert "box" not in d.sup.agents
        assert not (acme / "said").exists()


# -- a tenant's development watch: root's inotify, a host's whole ------------------------

def _inotify_fds() -> int:
    """This process's inotify instances (the in-process daemon's among them)."""
    fds = Path("/proc/self/fd")
    return sum(1 for fd in fds.iterdir()
               if os.path.exists(fd) and os.readlink(fd) == "anon_inode:inotify")


@pytest.mark.deadline(120)
async def test_a_tenants_caller_names_no_watch(tmp_path: Path) -> None:
    """The attack (measured on three agents: three inotify instances more in the daemon;
    not run to its end on a shared host): a tenant's caller adds agents with `watch =
    ["*"]`, development mode. Each is a file watch of the daemon's (filewatch.py, one
    `awatch` an agent), an inotify instance of root's with a watch on every directory
    under its cwd, which the tenant's agent fills: root's inotify instances (128 by
    default, every root service's on the host: systemd's, udev's) and watches
    (`max_user_watches`) are the tenant's to spend. `watch` is the operator's, as `warm`
    and `preload` are: refused (403, the key named), nothing added, no watch made."""
    acme = tmp_path / "acme"
    acme.mkdir()
    port = free_port()
    tenants = f'[tenants.acme]\ndir = "{acme}"\n\n[http]\nlisten = "127.0.0.1:{port}"\n'
    async with in_process(tmp_path, "", tenants) as d:
        before = _inotify_fds()
        async with await _tenant(d, port) as http, http.post("/api/v1/agents", json={
                "agents": {f"w{i}": {"protocol": "none", "command": ["/bin/sleep", "1000"],
                                     "watch": ["*"]} for i in range(3)}}
        ) as r:
            body = await r.json()
            assert r.status == 403, body
            assert "agents.w0.watch: " in body["detail"], body
        assert not [n for n in d.sup.agents if n.startswith("w")]
        assert _inotify_fds() == before
