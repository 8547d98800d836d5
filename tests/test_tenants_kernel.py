"""Tenants that the kernel keeps apart (issue 23): a Unix user per tenant, its log
directory, RLIMIT_NPROC per tenant (and an agent's own), and a cgroup per tenant where the
cgroup v2 subtree is delegated.

The user tests need root and users that exist (`nobody`, `daemon`, and `games` for the
fork bombs): none is created.
The cgroup tests use test_cgroups' `delegated` fixture (a fresh cgroup marked as systemd
marks a delegated one); a knob whose controller the hierarchy here lacks is skipped with
the reason."""

from __future__ import annotations

import json
import os
import pwd
import stat
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from corral.jsonrpc import RpcError
from corral.supervisor import State, Supervisor
from corral.supervisor.config import AgentSpec, ConfigError, Limits, TenantSpec
from corral.supervisor.configload import load_config, parse_tenants
from corral.supervisor.containment import cgroup_pids
from corral.supervisor.lifecycle import Cause
from corral.supervisor.runas import run_as
from corral.supervisor.sandbox import host_refusal

from .chaos.procs import wait_until
from .conftest import NOBODY_PY, agent, nobody_reason
from .daemon_harness import Daemon, shared_tmpdir
from .test_cgroups import delegated  # noqa: F401  (the fixture)
from .test_tenants import tenant_agent

USERS = ("nobody", "daemon")
# the fork bombs' user, which no other test runs as: RLIMIT_NPROC counts every process of
# a user on the host, and each test counts its user's processes left after it, so under
# nobody (which many tests run as) each had the machine to itself (`alone`) at the run's end
FORKER = "games"


def forker_reason() -> str | None:
    try:
        pwd.getpwnam(FORKER)
    except KeyError:
        return f"needs the user {FORKER} on this host (the test creates none)"
    return None


def forker_uid() -> int:
    return pwd.getpwnam(FORKER).pw_uid


PROBE = """
import ctypes, errno, os, resource
from corral.worker import run

libc = ctypes.CDLL(None, use_errno=True)
PTRACE_ATTACH, PTRACE_DETACH = 16, 17


def attempt(f):
    try:
        f()
        return "ok"
    except OSError as e:
        return errno.errorcode[e.errno]


def ptrace(pid):
    if libc.ptrace(PTRACE_ATTACH, pid, None, None) == 0:
        libc.ptrace(PTRACE_DETACH, pid, None, None)
        return "ok"
    return errno.errorcode[ctypes.get_errno()]


def handle(task, ctx):
    op = task["op"]
    if op == "whoami":
        return {"uid": os.getuid(), "pid": os.getpid(),
                "nproc": list(resource.getrlimit(resource.RLIMIT_NPROC))}
    if op == "list":
        return attempt(lambda: os.listdir(task["path"]))
    if op == "read":
        return attempt(lambda: open(task["path"], "rb").close())
    if op == "kill":
        return attempt(lambda: os.kill(task["pid"], 0))
    return ptrace(task["pid"])


if __name__ == "__main__":
    run(handle)
"""


def users_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root to run agents as other users (the suite is not running as root)"
    for user in USERS:
        try:
            pwd.getpwnam(user)
        except KeyError:
            return f"needs the user {user} on this host (the test creates none)"
    return None


@pytest.fixture
def tmp() -> Iterator[Path]:
    d = shared_tmpdir()
    yield d
    import shutil

    shutil.rmtree(d, ignore_errors=True)


def run(d: Daemon, agent: str, **task: Any) -> Any:
    r = d.cli("run", agent, "--input", json.dumps(task))
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


# -- who a process runs as -----------------------------------------------------------------
def test_a_process_runs_as_its_tenants_user_unless_it_names_its_own() -> None:
    tenant = TenantSpec(user="nobody", max_processes=40)
    mine = run_as(AgentSpec(command="true", tenant="a"), tenant)
    assert (mine.user, mine.limits.processes, mine.tenant_user) == ("nobody", 40, True)
    # its own, smaller limit stays; a larger one is the tenant's
    small = run_as(AgentSpec(command="true", limits=Limits(processes=10)), tenant)
    assert small.limits.processes == 10
    large = run_as(AgentSpec(command="true", limits=Limits(processes=99)), tenant)
    assert large.limits.processes == 40
    # one naming its tenant's user (by name or uid) is its tenant's: the cap holds
    for same in ("nobody", str(pwd.getpwnam("nobody").pw_uid)):
        named = run_as(AgentSpec(command="true", user=same, limits=Limits(processes=99)),
                       tenant)
        assert (named.user, named.limits.processes, named.tenant_user) == ("nobody", 40, True)
    # an agent that names another user is the operator's: its own limits, no tenant dir
    own = run_as(AgentSpec(command="true", user="daemon"), tenant)
    assert (own.user, own.limits.processes, own.tenant_user) == ("daemon", 0, False)
    # a tenant without a user changes nothing
    plain = run_as(AgentSpec(command="true"), TenantSpec(max_processes=40))
    assert (plain.user, plain.limits.processes, plain.tenant_user) == (None, 0, False)


def test_a_tenants_user_must_exist(tmp_path: Path) -> None:
    path = tmp_path / "corral.toml"
    path.write_text('[tenants.acme]\nuser = "corral-no-such-user"\n')
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert str(e.value) == (f"{path}: tenants.acme: user: no such user: corral-no-such-user "
                            "(a tenant's user must exist on this host)")
    with pytest.raises(ConfigError) as e:
        parse_tenants({"tenants": {"x": {"user": "corral-no-such-user"}}}, "tenants.add")
    assert str(e.value).startswith("tenants.add: tenants.x: user: no such user: ")
    # names the account database cannot even be asked about are no user either (the
    # REST API answered one with a NUL 500, "embedded null byte")
    for odd in ("a\x00b", "\u00b2", "9" * 30):
        with pytest.raises(ConfigError) as e:
            parse_tenants({"tenants": {"x": {"user": odd}}}, "tenants.add")
        assert str(e.value) == (f"tenants.add: tenants.x: user: no such user: {odd} (a "
                                "tenant's user must exist on this host)")


def test_tenants_users_cannot_read_signal_or_ptrace_each_other(
        tmp: Path, world_readable_tree: Path) -> None:
    reason = users_reason() or nobody_reason()
    if reason:
        pytest.skip(reason)
    # a Python and an SDK every user may run and read

    def probe_agent(name: str, tenant: str, probe: Path, extra: str = "") -> str:
        return tenant_agent(name, tenant, probe, extra, python=NOBODY_PY,
                            sdk=world_readable_tree)

    (tmp / "probe.py").write_text(PROBE)
    logs = tmp / "logs"  # as an operator's /var/log/corral: others may enter it
    logs.mkdir(mode=0o755)
    # the SDK a sandbox binds is under [packages] dir: outside the 0700 state directory,
    # where a sandbox started as another user can reach it
    agents = textwrap.dedent(f"""
        [packages]
        dir = "{tmp}/packages"
        [tenants.a]
        user = "nobody"
        max_processes = 50
        [tenants.b]
        user = "daemon"
    """)
    probe = tmp / "probe.py"
    agents += (probe_agent("pa", "a", probe) + probe_agent("pw", "a", probe, "warm = true\n")
               + probe_agent("pb", "b", probe)
               + probe_agent("own", "a", probe, 'user = "daemon"\n'))
    # a sandboxed agent of the tenant: bubblewrap started as the tenant's user
    sandboxed = host_refusal("bwrap", "nobody") is None
    if sandboxed:
        box = tmp / "box"
        box.mkdir(mode=0o755)
        (box / "probe.py").write_text(PROBE)
        agents += probe_agent("ps", "a", box / "probe.py",
                              f'sandbox = "bwrap"\ncwd = "{box}"\n')
    d = Daemon(tmp, agents)
    d.config.write_text(d.config.read_text().replace(f'log_dir = "{d.state}/logs"',
                                                     f'log_dir = "{logs}"'))
    try:
        d.start()
        nobody, daemon = (pwd.getpwnam(u).pw_uid for u in USERS)
        a, b = run(d, "pa", op="whoami"), run(d, "pb", op="whoami")
        assert (a["uid"], b["uid"]) == (nobody, daemon)
        # RLIMIT_NPROC is the tenant's, under its user (one count per uid)
        assert a["nproc"] == [50, 50]
        # a warm start forks from a zygote of the tenant's uid
        warm = run(d, "pw", op="whoami")
        assert (warm["uid"], warm["nproc"]) == (nobody, [50, 50])
        assert "warm start unavailable" not in d.cli("logs", "pw", "-n", "50").stdout
        if sandboxed:
            inside = run(d, "ps", op="whoami")
            assert (inside["uid"], inside["nproc"]) == (nobody, [50, 50])
        entry = {t["name"]: t for t in d.json("tenants")["tenants"]}["a"]
        assert {"user", "max_processes"} <= set(entry["enforced"])
        # an agent naming its own user runs as it, with its own (no) limit
        own = run(d, "own", op="whoami")
        assert own["uid"] == daemon and own["nproc"] != [50, 50]

        # each tenant's logs in a directory of its user's, 0700
        for tenant, uid, agent in (("a", nobody, "pa"), ("b", daemon, "pb")):
            st = (logs / "tenants" / tenant).stat()
            assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (uid, 0o700)
            assert (logs / "tenants" / tenant / f"{agent}.log").exists()
        assert not (logs / "pa.log").exists() and (logs / "own.log").exists()

        # A lists its own directory, and cannot enter B's, read B's log or the state
        assert run(d, "pa", op="list", path=str(logs / "tenants" / "a")) == "ok"
        assert run(d, "pa", op="list", path=str(logs / "tenants" / "b")) == "EACCES"
        assert run(d, "pa", op="read", path=str(logs / "tenants" / "b" / "pb.log")) == \
            "EACCES"
        assert run(d, "pa", op="read", path=str(d.state / "corral.db")) == "EACCES"
        # ... nor signal nor ptrace B's process
        assert run(d, "pa", op="kill", pid=b["pid"]) == "EPERM"
        assert run(d, "pa", op="ptrace", pid=b["pid"]) == "EPERM"
        assert run(d, "pb", op="kill", pid=a["pid"]) == "EPERM"
        # both still run tasks, their processes the same
        assert run(d, "pa", op="whoami")["pid"] == a["pid"]
        assert run(d, "pb", op="whoami")["pid"] == b["pid"]
        assert d.stop() == 0
    finally:
        d.close()


async def test_a_fork_bomb_under_its_tenants_user_is_named_by_the_tenants_cap(
        sup: Supervisor, world_readable_tree: Path) -> None:
    """The exit names the RLIMIT_NPROC the process ran under (its tenant's max_processes,
    the agent giving none), and the restart counts it as a cap, not a crash."""
    reason = users_reason() or nobody_reason() or forker_reason()
    if reason:
        pytest.skip(reason)
    tree = world_readable_tree
    sup.tenancy.put("a", TenantSpec(user=FORKER, max_processes=12))
    sup.add(agent("forker", command=[NOBODY_PY, str(tree / "examples" / "misbehave.py")],
                  env={"PYTHONPATH": str(tree)}, cwd=str(tree), tenant="a"))
    r = await sup.wait_state("forker", State.READY)
    assert r.pid is not None and psutil.Process(r.pid).uids().real == forker_uid()
    task = await sup.tasks.run("forker", {"do": "fork"})
    assert task.status == "lost" and task.error is not None
    assert task.error.message == "worker exited: process limit (RLIMIT_NPROC 12)"
    await sup.wait_for(lambda: r.restarts == 1, 10.0)
    assert r.last_exit == "process limit (RLIMIT_NPROC 12)"
    assert sup.stats.restarts_by_cause == {Cause.CAP: 1}
    await sup.remove("forker")
    # its forked children were SIGKILLed with the group; death is asynchronous, so wait
    left = [p for p in psutil.process_iter(["uids"]) if p.info["uids"].real == forker_uid()]
    _, alive = psutil.wait_procs(left, timeout=5)
    assert not [p for p in alive if p.status() != psutil.STATUS_ZOMBIE]


@pytest.mark.skipif((nobody_reason() or forker_reason()) is not None,
                    reason=nobody_reason() or forker_reason() or "")
async def test_a_fork_bomb_under_its_agents_user_is_named_by_the_agents_cap(
        sup: Supervisor, world_readable_tree: Path) -> None:
    """An agent's own process cap (no tenant): with restart = never, the replica ends
    TERMINATED with the cap named, and no process of the user is left."""
    tree = world_readable_tree
    sup.add(agent(
        "forker", command=[NOBODY_PY, str(tree / "examples" / "misbehave.py")],
        env={"PYTHONPATH": str(tree)}, cwd=str(tree), user=FORKER,
        limits=Limits(processes=12), restart="never",
    ))
    r = await sup.wait_state("forker", State.READY)
    assert r.pid is not None
    assert psutil.Process(r.pid).uids().real == forker_uid()
    assert r.peer is not None
    with pytest.raises(RpcError):
        await r.peer.request("task/run", {"task_id": "t", "input": {"do": "fork"}})
    await sup.wait_state("forker", State.TERMINATED)
    assert r.last_exit == "process limit (RLIMIT_NPROC 12)"
    # its forked children were SIGKILLed with the group; death is asynchronous, so wait
    left = [p for p in psutil.process_iter(["uids"]) if p.info["uids"].real == forker_uid()]
    _, alive = psutil.wait_procs(left, timeout=5)
    assert not [p for p in alive if p.status() != psutil.STATUS_ZOMBIE]


# -- a cgroup per tenant ------------------------------------------------------------------
def hello_in(name: str, tenant: str, replicas: int = 1) -> str:
    from .conftest import EXAMPLES

    return tenant_agent(name, tenant, EXAMPLES / "hello.py", f"replicas = {replicas}\n")


TENANTS = textwrap.dedent("""
    [tenants.a]
    max_memory_mb = 512
    memory_high_mb = 256
    max_cpu_percent = 150
    cpu_weight = 300
    max_processes = 64
    [tenants.b]
""")


def procs(cg: Path) -> set[int]:
    return set(cgroup_pids(str(cg)))


def test_each_tenant_has_a_cgroup_holding_its_replicas_and_it_goes_with_its_last_agent(
        delegated: Path, tmp: Path) -> None:  # noqa: F811
    agents = TENANTS + hello_in("ha", "a", 2) + hello_in("hb", "b") + hello_in("hd", "default")
    d = Daemon(tmp, agents, cgroup=delegated)
    try:
        d.start()
        status = d.status()
        node_a, node_b = delegated / "tenant-a", delegated / "tenant-b"
        assert procs(node_a / "agent-ha-0") == {status["ha#0"]["pid"]}
        assert procs(node_a / "agent-ha-1") == {status["ha#1"]["pid"]}
        assert procs(node_b / "agent-hb-0") == {status["hb#0"]["pid"]}
        # the default tenant's replicas stay where they were; a node holds no process
        assert procs(delegated / "agent-hd-0") == {status["hd#0"]["pid"]}
        assert procs(node_a) == set() and procs(node_b) == set()
        assert d.cli("run", "ha", "--input", '{"name": "x"}').returncode == 0

        log = (d.state / "logs" / "corral.log").read_text()
        available = set((delegated / "cgroup.controllers").read_text().split())
        if "memory" not in available:
            assert ("tenants a: max_memory_mb is sampled (an orderly restart of the "
                    "largest replica), not a cgroup's (no memory controller)") in log
        if "pids" not in available:
            assert ("tenants a: max_processes is RLIMIT_NPROC under the tenant's user, else "
                    "not enforced, not a cgroup's (no pids controller)") in log

        # the tenant's last agent removed: its node goes; the other tenant's stays
        r = d.cli("remove", "ha")
        assert r.returncode == 0, r.stderr
        wait_until(lambda: not node_a.exists(), 10, "tenant a's cgroup removed")
        assert procs(node_b / "agent-hb-0") == {status["hb#0"]["pid"]}
        assert d.stop() == 0
        assert sorted(p.name for p in delegated.iterdir() if p.is_dir()) == ["supervisor"]
    finally:
        d.close()


def test_an_agents_health_check_runs_in_its_tenants_cgroup(
        delegated: Path, tmp: Path) -> None:  # noqa: F811
    """A check is the agent's (issue 34): under the tenant's node, as its replicas are,
    so the tenant's memory.max and pids.max hold it too."""
    out = tmp / "cgroup"
    agents = TENANTS + hello_in("ha", "a") + textwrap.dedent(f"""
        [agents.ha.health.liveness]
        command = ["/bin/sh", "-c", "cat /proc/self/cgroup > {out}.part && mv {out}.part {out}"]
        interval = 0.2
        recovery = "event"
    """)
    d = Daemon(tmp, agents, cgroup=delegated)
    try:
        d.start()
        wait_until(out.exists, 30, "the check to run")
        [line] = [ln for ln in out.read_text().splitlines() if ln.startswith("0::")]
        where = Path(line[len("0::"):])  # (relative to where cgroup2 is mounted)
        assert where.parent.parts[-2:] == (delegated.name, "tenant-a"), where
        assert where.name.startswith("health-ha-"), where
        assert d.stop() == 0
    finally:
        d.close()


KNOBS = {"memory": {"memory.max": str(512 * 1024 * 1024), "memory.high": str(256 * 1024 * 1024)},
         "cpu": {"cpu.max": "150000 100000", "cpu.weight": "300"},
         "pids": {"pids.max": "64"}}


@pytest.mark.parametrize("controller", sorted(KNOBS))
def test_a_tenants_quotas_are_written_to_its_cgroup(
        delegated: Path, tmp: Path, controller: str) -> None:  # noqa: F811
    available = set((delegated / "cgroup.controllers").read_text().split())
    if controller not in available:
        pytest.skip(f"the cgroup v2 hierarchy here has no {controller} controller "
                    f"({sorted(available) or 'no controllers'} in v2)")
    d = Daemon(tmp, TENANTS + hello_in("ha", "a"), cgroup=delegated)
    try:
        d.start()
        node = delegated / "tenant-a"
        assert controller in (node / "cgroup.subtree_control").read_text().split()
        for knob, value in KNOBS[controller].items():
            assert (node / knob).read_text().split()[:2] == value.split(), knob
        # a change of the tenant is written to its node at once
        r = d.cli("tenants", "set", "a", "max_processes=65", "cpu_weight=400",
                  "max_memory_mb=600")
        assert r.returncode == 0, r.stderr
        after = {"memory": ("memory.max", str(600 * 1024 * 1024)),
                 "cpu": ("cpu.weight", "400"), "pids": ("pids.max", "65")}[controller]
        assert (node / after[0]).read_text().strip() == after[1]
        assert d.stop() == 0
    finally:
        d.close()


def test_an_oom_kill_in_a_tenants_cgroup_is_the_tenants(
        delegated: Path, tmp: Path) -> None:  # noqa: F811
    available = set((delegated / "cgroup.controllers").read_text().split())
    if "memory" not in available:
        pytest.skip("the cgroup v2 hierarchy here has no memory controller "
                    f"({sorted(available) or 'no controllers'} in v2)")
    from .conftest import EXAMPLES

    agents = "[tenants.a]\nmax_memory_mb = 64\n" + tenant_agent(
        "hog", "a", EXAMPLES / "misbehave.py", 'restart = "never"\n')
    d = Daemon(tmp, agents, cgroup=delegated)
    try:
        d.start()
        node = delegated / "tenant-a"
        assert (node / "memory.max").read_text().strip() == str(64 * 1024 * 1024)
        d.cli("run", "hog", "--input", '{"do": "leak"}')
        wait_until(lambda: d.status()["hog#0"]["state"] == "terminated", 20, "the OOM kill")
        assert "killed by the OOM killer" in d.status()["hog#0"]["last_exit"]
        log = d.state / "logs" / "corral.log"
        wait_until(lambda: "tenant a: the kernel OOM-killed 1 process in its cgroup "
                   "(max_memory_mb; 1 since start)" in log.read_text(), 10, "the tenant's OOM")
        entry = {t["name"]: t for t in d.json("tenants")["tenants"]}["a"]
        assert entry["use"]["oom_kills"] == 1
        assert d.stop() == 0
    finally:
        d.close()
