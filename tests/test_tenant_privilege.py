"""A tenant is never more than its tenant (issue 34, findings 1 and 2; decision 154).

1. A tenant's caller never names who runs what, where: each key of an agent's table that
   reaches the spawn as a privilege (user, group, sandbox, network, sandbox_paths, cwd
   outside the tenant's dir, warm, preload, placement, release, tenant) is refused, one
   by one, through HTTP (a tenant's token), through the control socket (a peer in the
   tenant's Unix group) and through a rollback to a revision the operator wrote, with
   nothing added or changed; the operator keeps every key.
2. A health check's command and a recovery's `exec` run as the agent: its user, its
   caps, its sandbox (a tenant's check wrote `id -u` = 0 and another tenant's secret).

Against the real daemon in this process, as root, with the users `nobody` (tenant acme,
its socket group `nogroup`) and `daemon` (tenant b), and bubblewrap usable by nobody:
skipped otherwise, saying which is missing."""

from __future__ import annotations

import asyncio
import contextlib
import grp
import json
import os
import pwd
import re
import shutil
import subprocess
import textwrap
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest

from corral import jsonrpc
from corral import methods as m
from corral.daemon.privilege import refusal
from corral.daemon.tokens import tokens_of
from corral.supervisor.config import AgentSpec, ConfigError, TenantSpec
from corral.supervisor.configload import load_config
from corral.supervisor.release import READY

from .conftest import NOBODY_PY, nobody_reason
from .daemon_harness import free_port, in_process, shared_tmpdir
from .sandboxprobe import sandbox_refusal
from .test_gateway_stdio import wait_until_async
from .test_tenants_kernel import users_reason

SUFFIX = "; who runs what, where is the operator's (docs/tenants.md)"
# a control socket client in the standard library alone, for a Python user nobody may
# run: each [method, params] of argv[2] in turn on one connection, each answer a line
CLIENT = """
import json, socket, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(30)
s.connect(sys.argv[1])
answers = s.makefile("rb")
for i, (method, params) in enumerate(json.loads(sys.argv[2])):
    s.sendall(json.dumps({"jsonrpc": "2.0", "id": i, "method": method,
                          "params": params}).encode() + b"\\n")
    print(answers.readline().decode().strip())
"""


def reason() -> str | None:
    why = users_reason() or nobody_reason()
    if why:
        return why
    try:
        grp.getgrnam("nogroup")
    except KeyError:
        return "needs the group nogroup (nobody's) on this host (the test creates none)"
    box = sandbox_refusal("nobody")
    return f"no sandbox for nobody here: {box}" if box else None


needs_users = pytest.mark.skipif(reason() is not None, reason=reason() or "")


@pytest.fixture
def tmp() -> Iterator[Path]:
    """A directory other users may enter (the socket is in it), with each tenant's dir
    (0700, its user's), a link in acme's to b's, b's secret, and a world-readable file
    outside every sandbox."""
    d = shared_tmpdir()
    nobody, daemon = pwd.getpwnam("nobody"), pwd.getpwnam("daemon")
    for name, user in (("acme", nobody), ("b", daemon)):
        (d / name).mkdir(mode=0o700)
        os.chown(d / name, user.pw_uid, user.pw_gid)
    # b's passable (not listable): the operator may run acme's agents there (their user
    # must reach their cwd: runas.reach_refusal), its secret still b's alone
    (d / "b").chmod(0o711)
    (d / "acme" / "to-b").symlink_to(d / "b")  # a link in acme's dir to b's
    (d / "b" / "secret").write_text("b's secret\n")
    os.chown(d / "b" / "secret", daemon.pw_uid, daemon.pw_gid)
    (d / "b" / "secret").chmod(0o600)
    (d / "outside.txt").write_text("the host's\n")
    (d / "outside.txt").chmod(0o644)
    (d / "packages").mkdir()
    try:
        yield d
    finally:
        import shutil

        shutil.rmtree(d, ignore_errors=True)


def tenants(tmp: Path, port: int) -> str:
    # the SDK a sandbox binds is under [packages] dir: outside the 0700 state directory,
    # where a sandbox started as the tenant's user can reach it
    return textwrap.dedent(f"""
        [packages]
        dir = "{tmp}/packages"
        [http]
        listen = "127.0.0.1:{port}"
        [tenants.acme]
        user = "nobody"
        group = "nogroup"
        sandbox = "bwrap"
        network = "none"
        max_processes = 50
        dir = "{tmp}/acme"
        [tenants.b]
        user = "daemon"
        dir = "{tmp}/b"
    """)


class Http:
    def __init__(self, port: int, secret: str) -> None:
        self.base = f"http://127.0.0.1:{port}/api/v1"
        self.headers = {"Authorization": f"Bearer {secret}"}

    async def __call__(self, verb: str, path: str, body: Any = None) -> tuple[int, Any]:
        async with aiohttp.ClientSession(headers=self.headers) as http, http.request(
                verb, self.base + path, json=body) as r:
            return r.status, await r.json()


@contextlib.asynccontextmanager
async def acme(tmp: Path, agents: str = "") -> AsyncIterator[tuple[Any, Http, Http]]:
    """The daemon with tenants acme and b; the HTTP API as acme's token (agents:read,
    agents:write) and as an unlimited one."""
    port = free_port()
    async with in_process(tmp, agents, tenants(tmp, port)) as d:
        made = tokens_of(d.services.store)
        tenant, _ = await made.create("ta", ["agents:read", "agents:write"], None, None,
                                      "acme")
        ops, _ = await made.create("ops", sorted(m.SCOPES), None, None)
        yield d, Http(port, tenant), Http(port, ops)


async def as_nobody(d: Any, calls: list[tuple[str, Any]]) -> list[dict[str, Any]]:
    """The answers to `calls` from the control socket, asked by a peer in nogroup (acme's
    group). Waited for on a thread: the daemon answers in this loop."""
    r = await asyncio.to_thread(
        subprocess.run, [NOBODY_PY, "-c", CLIENT,
                         str(d.services.config_path.parent / "corral.sock"),
                         json.dumps(calls)],
        capture_output=True, text=True, timeout=60, user="nobody", group="nogroup",
        extra_groups=[], cwd="/")
    assert r.returncode == 0, r.stderr
    return [json.loads(line) for line in r.stdout.splitlines()]


def cases(tmp: Path) -> list[tuple[str, dict[str, Any], str]]:
    """(the key, a table naming it otherwise than acme, what the refusal says after
    `agents.NAME.`): each privilege one by one, and the issue's variants."""
    acme_dir, b = str(tmp / "acme"), str(tmp / "b")
    outside = f'is outside tenant acme\'s dir ("{acme_dir}")'
    return [
        ("user", {"user": "root"}, 'user: "root" differs from tenant acme\'s ("nobody")'),
        ("user", {"user": "0"}, 'user: "0" differs from tenant acme\'s ("nobody")'),
        ("user", {"user": "root", "sandbox": "none", "network": "host"},
         'user: "root" differs from tenant acme\'s ("nobody")'),
        ("group", {"group": "root"},
         'group: "root" differs from tenant acme\'s (none: its user\'s group)'),
        ("sandbox", {"sandbox": "none", "network": "host"},
         'sandbox: "none" differs from tenant acme\'s ("bwrap")'),
        ("network", {"network": "host"},
         'network: "host" differs from tenant acme\'s ("none")'),
        ("sandbox_paths", {"sandbox_paths": [b]},
         f'sandbox_paths: ["{b}"] differs from tenant acme\'s (none)'),
        ("cwd", {"cwd": b}, f'cwd: "{b}" {outside}'),
        ("cwd", {"cwd": f"{acme_dir}/../b"}, f'cwd: "{acme_dir}/../b" {outside}'),
        ("cwd", {"cwd": f"{acme_dir}/to-b"}, f'cwd: "{acme_dir}/to-b" {outside}'),
        ("warm", {"warm": True}, "warm: true differs from tenant acme's (false)"),
        ("preload", {"preload": ["json"]},
         'preload: ["json"] differs from tenant acme\'s (none)'),
        ("release", {"release": str(tmp / "rel")},
         f'release: "{tmp / "rel"}": releases are deployed by the operator (a rollback '
         "may restore one this agent ran)"),
    ]


def table(extra: dict[str, Any]) -> dict[str, Any]:
    return {"command": [NOBODY_PY, "-c", "pass"], "replicas": 0, **extra}


def refused(who: str, name: str, said: str) -> str:
    return f"forbidden: {who} is a caller of tenant acme: agents.{name}.{said}{SUFFIX}"


def nothing_of(d: Any, name: str) -> None:
    assert name not in d.sup.agents
    assert name not in d.services.store.runtime_agents()


# -- 1. what a tenant's caller may name ----------------------------------------------------
@needs_users
@pytest.mark.deadline(120)
async def test_a_tenants_caller_names_no_privilege_over_http_or_the_socket(
        tmp: Path) -> None:
    async with acme(tmp) as (d, tenant, ops):
        every = cases(tmp)
        # the table of a cluster agent, another tenant's: refused by the access rule
        others = [("placement", {"placement": "cluster"},
                   'may not add cluster agents (agents.o.placement: "cluster")'),
                  ("tenant", {"tenant": "b"}, "may not add o to tenant b")]
        for i, (key, extra, said) in enumerate(every):
            name = f"k{i}"
            status, body = await tenant("POST", "/agents", {"agents": {name: table(extra)}})
            assert (status, body["detail"]) == (403, refused("token ta", name, said)), key
            nothing_of(d, name)
        for key, extra, said in others:
            status, body = await tenant("POST", "/agents", {"agents": {"o": table(extra)}})
            assert (status, body["detail"]) == (
                403, f"forbidden: token ta is a caller of tenant acme: {said}"), key
            nothing_of(d, "o")

        # the same refusals on the control socket, for a peer in acme's group; and a
        # package deploy, which is the operator's
        calls: list[tuple[str, Any]] = [("agents.add", {"agents": {f"k{i}": table(extra)}})
                                        for i, (_, extra, _) in enumerate(every)]
        calls.append(("packages.deploy", {"path": str(tmp / "acme")}))
        answers = await as_nobody(d, calls)
        for i, ((key, _, said), answer) in enumerate(zip(every, answers[:-1], strict=True)):
            error = answer["error"]
            who = re.match(r"forbidden: (uid 65534 pid \d+) is", error["message"])
            assert who is not None, error
            assert (error["code"], error["message"]) == (
                jsonrpc.FORBIDDEN, refused(who[1], f"k{i}", said)), key
            nothing_of(d, f"k{i}")
        deploy = answers[-1]["error"]
        assert deploy["code"] == jsonrpc.FORBIDDEN
        assert deploy["message"].endswith(" is a caller of tenant acme: packages.deploy is "
                                          "for callers that see every agent"), deploy

        # the tenant's own values, named, pass: its user (by name), sandbox, network, a
        # cwd inside its dir
        own = table({"user": "nobody", "sandbox": "bwrap", "network": "none",
                     "cwd": str(tmp / "acme" / "work"), "tenant": "acme"})
        status, body = await tenant("POST", "/agents", {"agents": {"mine": own}})
        assert (status, body) == (200, {"added": ["mine"]})
        # one naming none runs in the tenant's dir
        status, body = await tenant("POST", "/agents", {"agents": {"plain": table({})}})
        assert status == 200, body
        assert d.sup.agents["plain"].spec.cwd == str(tmp / "acme")
        # a change in place (agents.update) is held to the same rule, key by key
        before = d.sup.agents["mine"].spec
        answers = await as_nobody(d, [("agents.update", {"name": "mine", "set": extra})
                                      for _, extra, _ in every])
        for (key, _, said), answer in zip(every, answers, strict=True):
            error = answer["error"]
            who = re.match(r"forbidden: (uid 65534 pid \d+) is", error["message"])
            assert who is not None, (key, error)
            assert (error["code"], error["message"]) == (
                jsonrpc.FORBIDDEN, refused(who[1], "mine", said)), key
        assert d.sup.agents["mine"].spec == before
        assert d.services.fleet.revision_of("mine") == 1

        # the operator keeps every key, for the tenant's agents too
        for i, (key, extra, _) in enumerate(every):
            if key == "release":
                continue  # (a release is a deploy's; the operator may name one: below)
            status, body = await ops("POST", "/agents", {"agents": {
                f"op{i}": table({**extra, "tenant": "acme"})}})
            assert (status, body) == (200, {"added": [f"op{i}"]}), (key, body)


@needs_users
@pytest.mark.deadline(180)
async def test_a_tenants_rollback_restores_no_privilege_the_operator_once_gave(
        tmp: Path) -> None:
    """Revision 1 is the operator's, naming a privilege; revision 2 the same agent
    without it. acme's rollback to revision 1 is refused with the key, the agent as it
    was; a release the agent ran may be given back. Another tenant's agent of the name
    had revisions of its own: acme's agent starts at 1, and there is no other to roll
    back to (decision 436)."""
    async with acme(tmp) as (d, tenant, ops):
        rolled = [(k, e, s) for k, e, s in cases(tmp) if k != "release"]
        rolled.append(("tenant", {"tenant": "b"}, ""))
        for i, (key, extra, said) in enumerate(rolled):
            name = f"r{i}"
            status, body = await ops("POST", "/agents", {"agents": {name: table(
                {"tenant": "acme", **extra})}})
            assert status == 200, (key, body)
            assert (await ops("DELETE", f"/agents/{name}"))[0] == 200
            clean = table({"tenant": "acme"})
            status, body = await ops("POST", "/agents", {"agents": {name: clean}})
            assert status == 200, (key, body)
            before = d.sup.agents[name].spec
            # b's agent of the name was not acme's: acme's is at its own revision 1
            current = 1 if key == "tenant" else 2
            assert d.services.fleet.revision_of(name) == current
            target = 2 if key == "tenant" else 1
            status, body = await tenant("POST", f"/agents/{name}/rollback",
                                        {"revision": target})
            assert (status, body["detail"]) == ((403, refused("token ta", name, said)) if said
                                                else (404, f"no revision 2 of {name} (its "
                                                           f"revisions kept: 1..1; see `corral "
                                                           f"history {name}`)")), key
            assert d.services.fleet.revision_of(name) == current
            assert d.sup.agents[name].spec == before
            assert d.services.store.runtime_agents()[name] == clean

        # a release this agent ran (the operator deployed it) comes back with a rollback
        release = tmp / "rel"
        release.mkdir()
        (release / READY).touch()
        status, body = await ops("POST", "/agents", {"agents": {"pkg": table(
            {"tenant": "acme", "release": str(release)})}})
        assert status == 200, body
        assert (await ops("DELETE", "/agents/pkg"))[0] == 200
        status, body = await ops("POST", "/agents", {"agents": {"pkg": table(
            {"tenant": "acme"})}})
        assert status == 200, body
        status, body = await tenant("POST", "/agents/pkg/rollback", {"revision": 1})
        assert (status, body["restored"]) == (200, 1), body
        assert d.sup.agents["pkg"].spec.release == str(release)


def test_a_tenant_without_a_user_or_dir_lets_its_callers_name_neither() -> None:
    """The rule alone (privilege.refusal): a tenant without `user` runs its agents as the
    daemon's user, and one naming a user, even one with fewer rights, names who runs it;
    without `dir` its agents run where the config file is, and a cwd elsewhere is
    refused while the same directory, named or not, passes."""
    tenant = TenantSpec()
    here = "/etc/corral"

    def said(**keys: Any) -> tuple[str, str] | None:
        spec = AgentSpec(command="true", name="x", tenant="t", **keys)
        return refusal(spec, "t", tenant, here)

    assert said(user="nobody") == ("user", "\"nobody\" differs from tenant t's (none: "
                                           "the daemon's user)")
    assert said(cwd="/srv") == ("cwd", "\"/srv\" differs from tenant t's (it has no dir: "
                                       "its agents run in /etc/corral)")
    assert said(cwd="/etc/corral/") is None and said(cwd=None) is None
    assert said(sandbox="none", network="host") is None  # (what it has without them)
    assert said(sandbox="bwrap") == ("sandbox", "\"bwrap\" differs from tenant t's "
                                                "(\"none\")")


def test_a_tenants_check_and_recovery_commands_are_judged_as_its_command(
        tmp_path: Path) -> None:
    """The rule alone (session 18's hole 6): a health check's command and an exec
    recovery run in a sandbox made as the agent's, which binds their programs'
    installations, so each is refused where the agent's command would be, its key
    named; the system's programs and the agent's own cwd's pass."""
    acme, host = tmp_path / "acme", tmp_path / "host"
    for place in (acme, host):
        place.mkdir()
    tool = str(host / "tool")
    tenant = TenantSpec(dir=str(acme), sandbox="bwrap")
    why = (f"\"{tool}\" is {tool}, outside its cwd ({acme}), the system's directories and "
           "corral's own installation: its installation would be bound into the sandbox")

    def said(health: dict[str, Any]) -> tuple[str, str] | None:
        spec = msgspec.convert({"command": ["/bin/sleep", "1000"], "name": "x",
                                "tenant": "acme", "cwd": str(acme), "health": health},
                               AgentSpec)
        return refusal(spec, "acme", tenant, str(acme))

    assert said({"liveness": {"command": [tool]}}) == ("health.liveness.command", why)
    assert said({"readiness": {"command": ["/bin/true"]},
                 "liveness": {"check": "alive", "recovery": "exec", "exec": [tool, "-x"]}}
                ) == ("health.liveness.exec", why)
    assert said({"readiness": {"check": "up", "recovery": "exec", "exec": [tool]}}) == (
        "health.readiness.exec", why)
    assert said({"readiness": {"command": ["./probe"], "recovery": "exec",
                               "exec": ["/bin/sh", "-c", "true"]}}) is None


def test_a_tenants_dir_is_absolute_and_where_its_agents_run(tmp_path: Path) -> None:
    path = tmp_path / "corral.toml"
    path.write_text('[tenants.t]\ndir = "t"\n')
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert str(e.value) == f"{path}: tenants.t: dir: t is not an absolute path"
    path.write_text(textwrap.dedent(f"""
        [tenants.t]
        dir = "{tmp_path}/t"
        [agents.a]
        command = "true"
        tenant = "t"
        [agents.b]
        command = "true"
        tenant = "t"
        cwd = "own"
        [agents.c]
        command = "true"
    """))
    agents = load_config(path).agents
    assert (agents["a"].cwd, agents["b"].cwd, agents["c"].cwd) == (
        f"{tmp_path}/t", f"{tmp_path.resolve()}/own", str(tmp_path.resolve()))


# -- 2. what corral runs for an agent runs as the agent ------------------------------------
PROBE = ("{ id -u; awk '/^Max processes/ {print $3}' /proc/self/limits; "
         'cat %s 2>/dev/null || echo denied; '
         'cat %s 2>/dev/null || echo absent; } > %s.part && mv %s.part %s')


@needs_users
@pytest.mark.deadline(120)
async def test_a_check_and_its_recovery_run_as_the_agent_in_its_sandbox(
        tmp: Path, world_readable_tree: Path) -> None:
    """acme's agent (nobody, bubblewrap, max_processes 50), added by acme's token: its
    liveness command and the recovery it sets off run as nobody with the tenant's
    RLIMIT_NPROC, and read neither b's 0700 secret nor a world-readable file outside the
    sandbox. An operator's agent of user daemon, not sandboxed: its check as daemon."""
    secret, outside = tmp / "b" / "secret", tmp / "outside.txt"

    def probe(out: str) -> list[str]:
        return ["/bin/sh", "-c", PROBE % (secret, outside, out, out, out) + "; exit 1"]

    plain = tmp / "plain"
    plain.mkdir()
    daemon = pwd.getpwnam("daemon")
    os.chown(plain, daemon.pw_uid, daemon.pw_gid)
    operators = textwrap.dedent(f"""
        [agents.ops]
        command = ["{NOBODY_PY}", "{world_readable_tree}/examples/hello.py"]
        env = {{ PYTHONPATH = "{world_readable_tree}" }}
        user = "daemon"
        cwd = "{plain}"
        [agents.ops.health.liveness]
        command = ["/bin/sh", "-c", "id -u > uid.part && mv uid.part uid; exit 1"]
        interval = 0.2
        failures = 1
        recovery = "event"
    """)
    # a tenant's agent imports from its own cwd (and corral's SDK) alone (issue 88)
    sdk = shutil.copytree(world_readable_tree, tmp / "acme" / "sdk")
    async with acme(tmp, operators) as (d, tenant, _):
        status, body = await tenant("POST", "/agents", {"agents": {"box": {
            "command": [NOBODY_PY, f"{sdk}/examples/hello.py"],
            "env": {"PYTHONPATH": str(sdk)}, "cwd": str(tmp / "acme"),
            # no restart is asked below: on a loaded host a beat late by the harness's 2 s
            # would be one
            "heartbeat_timeout": 30.0,
            "health": {"liveness": {"command": probe("check"), "interval": 0.2,
                                    "timeout": 10.0, "failures": 1, "recovery": "exec",
                                    "exec": probe("exec")}}}}})
        assert (status, body) == (200, {"added": ["box"]})
        home = tmp / "acme"
        await wait_until_async(lambda: (home / "exec").exists() and (plain / "uid").exists(),
                               60)
        nobody = str(pwd.getpwnam("nobody").pw_uid)
        for out in ("check", "exec"):
            assert (home / out).read_text().split("\n") == [nobody, "50", "denied", "absent",
                                                            ""], out
        assert (plain / "uid").read_text() == f"{daemon.pw_uid}\n"
        r = d.sup.agents["box"].replicas[0]
        assert r.restarts == 0 and d.sup.health_board.exec_runs == 1


@needs_users
@pytest.mark.deadline(120)
async def test_an_agent_another_tenant_had_of_the_same_name_is_not_its_past(
        tmp: Path) -> None:
    """Revisions outlive a removed agent (its tenant's, kept); a tenant that adds an
    agent of the same name later starts its own at revision 1, is never shown the other's
    and cannot roll back to one: "no revision N", as if there never was one (decision
    436). The operator's history of the name is the agent's that holds it."""
    async with acme(tmp) as (d, tenant, ops):
        port = int(tenant.base.split(":")[2].split("/")[0])
        b_secret, _ = await tokens_of(d.services.store).create(
            "tb", ["agents:read", "agents:write"], None, None, "b")
        b = Http(port, b_secret)
        status, body = await b("POST", "/agents", {"agents": {"reuse": table({
            "config": {"model": "b-private"}})}})
        assert status == 200, body
        assert (await b("DELETE", "/agents/reuse"))[0] == 200
        status, body = await tenant("POST", "/agents", {"agents": {"reuse": table({})}})
        assert status == 200, body
        status, body = await tenant("GET", "/agents/reuse/history")
        assert status == 200 and [(r["revision"], r["change"]) for r in body["revisions"]
                                  ] == [(1, "created")], body
        assert "b-private" not in str(body)
        status, body = await tenant("POST", "/agents/reuse/rollback", {"revision": 0})
        assert (status, body["detail"]) == (
            404, "no revision 0 of reuse (its revisions kept: 1..1; see `corral history "
                 "reuse`)"), body
        assert "b-private" not in str(body)
        status, body = await ops("GET", "/agents/reuse/history")
        assert [r["revision"] for r in body["revisions"]] == [1]
        assert "b-private" not in str(body)
