"""sandbox = "bwrap": agents under real bubblewrap in the real daemon. What the sandbox
refuses comes back as the task's output (tests/sandbox_agent.py returns the error's own
text); what it allows is tried beside it, so each refusal is one the sandbox made."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import secrets
import socket
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from corral.supervisor import State
from corral.supervisor.config import ConfigError
from corral.supervisor.configload import check_commands, load_config
from corral.supervisor.containment import read_stat
from corral.supervisor.sandbox import (
    exit_status,
    host_refusal,
    program_paths,
    sandboxed,
    userns_forbidden,
)

from .conftest import EXAMPLES, ROOT
from .daemon_harness import PY, Daemon, config_text, in_process, shared_tmpdir
from .sandboxprobe import sandbox_refusal
from .test_cgroups import delegated, procs  # noqa: F401  (the fixture)
from .test_daemon_cli import wait_until
from .test_gateway_stdio import wait_until_async
from .test_http_api import SOCKET

HERE = Path(__file__).resolve().parent
pytestmark = pytest.mark.skipif(sandbox_refusal(None) is not None,
                                reason=f"no sandbox here: {sandbox_refusal(None)}")


def agent(name: str, home: Path, extra: str = "") -> str:
    home.mkdir(exist_ok=True)
    return textwrap.dedent(f"""
        [agents.{name}]
        command = ["{PY}", "{HERE}/sandbox_agent.py"]
        env = {{ PYTHONPATH = "{ROOT}" }}
        cwd = "{home}"
        sandbox = "bwrap"
        stop_timeout = 5.0
        backoff_initial = 0.05
    """) + textwrap.dedent(extra)


async def run(d: Any, name: str, task: dict[str, Any]) -> Any:
    done = await asyncio.wait_for(d.dispatcher.call(SOCKET, "tasks.run", msgspec.json.encode(
        {"agent": name, "input": task})), 60)
    done = msgspec.json.decode(msgspec.json.encode(done))
    assert done["status"] == "succeeded", done
    return done["output"]


@pytest.mark.deadline(120)
async def test_writes_outside_its_directory_are_refused(tmp_path: Path) -> None:
    home = tmp_path / "home"
    async with in_process(tmp_path, agent("box", home)) as d:
        # its own directory is writable, and what it writes is there on the host
        assert await run(d, "box", {"do": "write", "path": str(home / "mine.txt")}) == {
            "ok": str(home / "mine.txt")}
        assert (home / "mine.txt").read_text() == "written from the sandbox"
        # elsewhere: the sandbox's root is read-only, and the config's directory beside
        # its own is not there (under /tmp, so it lands in its private /tmp)
        outside = tmp_path / "outside.txt"
        assert await run(d, "box", {"do": "write", "path": str(outside)}) == {
            "ok": str(outside)}
        assert not outside.exists()
        # the system and what it reads to run (corral's SDK) are there, read-only, and
        # so are the directories that lead to them — but under /tmp, which is its own
        # (a checkout under /tmp: a write beside it lands there, never on the host's)
        # a name no one else uses: the host may hold anything beside the checkout
        beside = f"{ROOT.parent}/corral-sandbox-{uuid.uuid4().hex}"
        for path in ("/etc/corral-sandbox-test", str(ROOT / "corral" / "sandboxed.txt"),
                     f"{Path(PY).parent}/sandboxed", "/sandboxed", beside):
            private = path == beside and ROOT.parent.is_relative_to("/tmp")
            assert await run(d, "box", {"do": "write", "path": path}) == (
                {"ok": path} if private else
                {"error": f"OSError: [Errno 30] Read-only file system: '{path}'"})
            assert not os.path.exists(path)
        # nor is the daemon's control socket, or the state directory
        assert await run(d, "box", {"do": "connect_unix", "path": str(tmp_path / "corral.sock")}
                         ) == {"error": "FileNotFoundError: [Errno 2] No such file or "
                                        "directory"}


@contextlib.contextmanager
def host_tmp_file() -> Iterator[Path]:
    path = Path("/tmp") / f"corral-sandbox-{secrets.token_hex(4)}"
    path.write_text("the host's")
    try:
        yield path
    finally:
        path.unlink()


@pytest.mark.deadline(120)
async def test_its_tmp_and_proc_are_its_own(tmp_path: Path) -> None:
    async with in_process(tmp_path, agent("box", tmp_path / "home")) as d:
        with host_tmp_file() as host_file:
            assert await run(d, "box", {"do": "read", "path": str(host_file)}) == {
                "error": f"FileNotFoundError: [Errno 2] No such file or directory: "
                         f"'{host_file}'"}
        mine = f"/tmp/corral-sandbox-{secrets.token_hex(4)}"
        assert await run(d, "box", {"do": "write", "path": mine}) == {"ok": mine}
        assert await run(d, "box", {"do": "read", "path": mine}) == {
            "ok": "written from the sandbox"}
        assert not os.path.exists(mine)  # written to its /tmp, not the host's
        # /proc: its pid namespace's (bwrap's init and the agent), none of the host's
        seen = (await run(d, "box", {"do": "processes"}))["ok"]
        assert sorted(seen) == ["1", "2"], seen
        assert seen["1"].startswith("/usr/bin/bwrap ") or seen["1"].startswith("bwrap ")
        assert seen["2"] == "corral: agent box#0"  # its process title
        assert d.sup.agents["box"].replicas[0].pid != 2  # a pid of ours differs


@contextlib.contextmanager
def listener() -> Iterator[int]:
    """A TCP listener on loopback, the port it has."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        yield int(s.getsockname()[1])


@pytest.mark.deadline(120)
async def test_network_none_cannot_connect_out(tmp_path: Path) -> None:
    agents = agent("cut", tmp_path / "cut", 'network = "none"\n') + \
        agent("wired", tmp_path / "wired", 'network = "host"\n')
    async with in_process(tmp_path, agents) as d:
        with listener() as port:
            target = {"do": "connect", "host": "127.0.0.1", "port": port}
            assert await run(d, "wired", target) == {"ok": "connected"}
            assert await run(d, "cut", target) == {
                "error": "ConnectionRefusedError: [Errno 111] Connection refused"}


GW_TOKEN = "gateway-token-for-sandbox-tests"


@pytest.mark.deadline(180)
async def test_network_gateway_reaches_the_pool_and_nothing_else(tmp_path: Path) -> None:
    pytest.importorskip("mcp")
    digest = hashlib.sha256(GW_TOKEN.encode()).hexdigest()
    (tmp_path / "tokens.toml").write_text(f'[clients.full]\ntoken_sha256 = "{digest}"\n')
    gw_home = tmp_path / "gw"
    gw_home.mkdir()
    agents = textwrap.dedent(f"""
        [agents.gwagent]
        command = ["{PY}", "{EXAMPLES}/gateway_agent.py"]
        env = {{ PYTHONPATH = "{ROOT}" }}
        cwd = "{gw_home}"
        tools = ["notes__*"]
        sandbox = "bwrap"
        network = "gateway"
    """) + agent("probe", tmp_path / "probe", 'network = "gateway"\n') + textwrap.dedent(f"""
        [mcp_servers.notes]
        command = ["{PY}", "{EXAMPLES}/notes_server.py"]
        start_timeout = 30.0

        [gateway]
        tokens_file = "tokens.toml"
        listen = "unix:{tmp_path}/mcp.sock"
    """)
    async with in_process(tmp_path, agents) as d:
        # the official MCP SDK's client, inside the sandbox, over CORRAL_MCP_SOCKET
        out = await run(d, "gwagent", {"title": "otters", "text": "hold hands"})
        assert out["tools"] == ["notes__add", "notes__get", "notes__search"]
        assert out["stored"] == "stored otters"
        assert out["refused"] is not None and "sc__echo" in out["refused"]
        # the gateway's socket is there, the control socket and TCP are not
        assert await run(d, "probe", {"do": "connect_unix", "path": f"{tmp_path}/mcp.sock"}
                         ) == {"ok": "connected"}
        assert await run(d, "probe", {"do": "connect_unix", "path": f"{tmp_path}/corral.sock"}
                         ) == {"error": "FileNotFoundError: [Errno 2] No such file or "
                                        "directory"}
        with listener() as port:
            assert await run(d, "probe", {"do": "connect", "host": "127.0.0.1",
                                          "port": port}) == {
                "error": "ConnectionRefusedError: [Errno 111] Connection refused"}


def sleepers(seconds: int) -> list[int]:
    """The host's pids of `sleep SECONDS` processes (a number no one else sleeps)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                if Path(f"/proc/{entry}/cmdline").read_bytes() == \
                        f"sleep\0{seconds}\0".encode():
                    out.append(int(entry))
    return out


def in_sandbox_of(home: Path) -> list[int]:
    """The host's pids of bwrap processes sandboxing `home`."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
                if argv[0].endswith(b"bwrap") and str(home).encode() in argv:
                    out.append(int(entry))
    return out


def agents_in_sandbox_of(home: Path) -> list[int]:
    """The host's pids of the agents (sandbox_agent.py) a bwrap sandboxing `home` runs."""
    sandbox = set(in_sandbox_of(home))
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                st = read_stat(int(entry))
                if st is not None and st.ppid in sandbox and b"sandbox_agent.py" in \
                        Path(f"/proc/{entry}/cmdline").read_bytes():
                    out.append(int(entry))
    return out


@pytest.mark.deadline(120)
async def test_caps_and_containment_hold_inside(tmp_path: Path) -> None:
    home = tmp_path / "home"
    seconds = 7_000_000 + secrets.randbelow(1_000_000)
    extra = "[agents.box.limits]\nmemory_mb = 1024\n"
    async with in_process(tmp_path, agent("box", home, extra)) as d:
        sup = d.sup
        # no capability in any set (root's bounding set too), no_new_privs, and no user
        # namespace of its own making (where the kernel's attack surface widens)
        none = "0000000000000000"
        assert await run(d, "box", {"do": "privileges"}) == {"ok": {
            "CapInh": none, "CapPrm": none, "CapEff": none, "CapBnd": none, "CapAmb": none,
            "NoNewPrivs": "1", "userns": "unshare: unshare failed: No space left on device"}}
        # RLIMIT_AS is in force in the sandboxed process, and bites there
        assert await run(d, "box", {"do": "limits"}) == {
            "ok": f"Max address space         {1 << 30:<20} {1 << 30:<20} bytes     \n"}
        assert await run(d, "box", {"do": "allocate", "mb": 2048}) == {
            "error": "MemoryError: "}
        assert await run(d, "box", {"do": "allocate", "mb": 16}) == {"ok": 16 << 20}
        # descendants, one of which left the process group: a stop ends them all
        assert await run(d, "box", {"do": "leave", "seconds": seconds}) == {"ok": "left"}
        await wait_until_async(lambda: len(sleepers(seconds)) == 2)
        assert len(in_sandbox_of(home)) == 2  # bwrap, and its init in the pid namespace
        await asyncio.wait_for(sup.stop("box"), 30)
        await sup.wait_state("box", State.TERMINATED, timeout=30)
        await wait_until_async(lambda: not sleepers(seconds) and not in_sandbox_of(home))


@pytest.mark.deadline(120)
async def test_pause_stops_the_agent_inside(tmp_path: Path) -> None:
    async with in_process(tmp_path, agent("box", tmp_path / "home")) as d:
        sup = d.sup
        replica = sup.agents["box"].replicas[0]
        # the interpreter's RSS: bwrap's fork of it, before its exec, is a few pages
        await wait_until_async(lambda: replica.sample.rss_bytes > 8 << 20)
        [inner] = agents_in_sandbox_of(tmp_path / "home")  # the agent bwrap runs
        assert inner != replica.pid
        assert await sup.pause("box", 0) == [replica]
        if sup.containment.tree is None:  # SIGSTOP of the group: the agent inside too
            # (a stop takes effect when the process next runs: on a loaded machine, after
            # the pause's own look has given up)
            await wait_until_async(lambda: (st := read_stat(inner)) is not None
                                   and st.state == "T", timeout=30)
        sup.resume("box", 0)
        assert await run(d, "box", {"do": "allocate", "mb": 1}) == {"ok": 1 << 20}


@pytest.mark.deadline(120)
async def test_samples_and_soft_caps_are_the_agents_not_bwraps(tmp_path: Path) -> None:
    extra = "[agents.box.limits]\nrss_mb = 150\n"
    async with in_process(tmp_path, agent("box", tmp_path / "home", extra)) as d:
        replica = d.sup.agents["box"].replicas[0]
        # the interpreter's RSS, not bwrap's few pages
        await wait_until_async(lambda: replica.sample.rss_bytes > 8 << 20)
        # (the task may end before the sample that takes the replica down, or with it)
        await asyncio.wait_for(d.dispatcher.call(SOCKET, "tasks.run", msgspec.json.encode(
            {"agent": "box", "input": {"do": "hold", "mb": 200}})), 60)
        await wait_until_async(lambda: replica.last_exit is not None)
        said = replica.last_exit
        assert said is not None and said.startswith("RSS soft limit (") and said.endswith(
            " MiB > 150 MiB)"), said


def test_the_whole_sandbox_is_in_the_replicas_cgroup(delegated: Path) -> None:  # noqa: F811
    # placed by the spawn gate before bwrap runs: bwrap, its init and the agent are all in
    # the replica's cgroup, and a stop empties it
    tmp = shared_tmpdir()
    d = Daemon(tmp, agent("box", tmp / "home"), cgroup=delegated)
    try:
        d.start()
        cg = delegated / "agent-box-0"
        pid = d.status()["box#0"]["pid"]
        inside = procs(cg)
        assert pid in inside and len(inside) == 3, inside
        # the pid corral watches is the outer bwrap; its init and the agent beside it
        bwraps = set(in_sandbox_of(tmp / "home"))
        assert pid in bwraps and len(bwraps) == 2 and bwraps < inside
        assert d.cli("stop", "box").returncode == 0
        wait_until(lambda: not procs(cg), 10, "the replica's cgroup to empty")
    finally:
        d.stop()
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)


@pytest.mark.deadline(120)
async def test_a_death_inside_is_explained_as_outside(tmp_path: Path) -> None:
    # bwrap exits 128 + N for what it ran killed by signal N: the reason names the signal
    async with in_process(tmp_path, agent("box", tmp_path / "home")) as d:
        replica = d.sup.agents["box"].replicas[0]
        done = await asyncio.wait_for(d.dispatcher.call(SOCKET, "tasks.run", msgspec.json.encode(
            {"agent": "box", "input": {"do": "die", "signal": 11}})), 60)
        assert msgspec.json.decode(msgspec.json.encode(done))["error"]["message"] == (
            "worker exited: killed by SIGSEGV: dying of signal 11")
        await wait_until_async(lambda: replica.last_exit is not None)
        assert replica.last_exit == "killed by SIGSEGV: dying of signal 11"
    assert exit_status(3) == 3 and exit_status(128 + 9) == -9 and exit_status(200) == 200


def write_config(tmp_path: Path, agents: str, rest: str = "", supervisor: str = "") -> Path:
    config = tmp_path / "corral.toml"
    config.write_text(config_text(agents, tmp_path / "corral.sock", tmp_path / "state",
                                  supervisor) + rest)
    return config


def config_error(path: Path) -> str:
    with pytest.raises(ConfigError) as err:
        load_config(path)
    return str(err.value)


def commands_error(path: Path) -> str:
    """What the check of the agents' commands (done at start and at reload) refuses."""
    with pytest.raises(ConfigError) as err:
        check_commands(load_config(path), str(path))
    return str(err.value)


def refused_at_start(cfg: Path, why: str, capsys: pytest.CaptureFixture[str]) -> None:
    """The daemon refuses to start on that config, saying why, and binds nothing."""
    from corral.daemon.daemon import Daemon
    assert asyncio.run(Daemon(cfg).run()) == 1
    assert capsys.readouterr().err == f"corral: invalid config: {cfg}: {why}\n"
    assert not (cfg.parent / "corral.sock").exists()


def test_config_errors_are_exact(tmp_path: Path) -> None:
    base = f'[agents.a]\ncommand = ["{PY}"]\n'
    cfg = write_config(tmp_path, base + 'sandbox = "docker"\n')
    assert config_error(cfg) == (f"{cfg}: agents.a.sandbox: Invalid enum value 'docker' "
                                 f"(valid: 'bwrap', 'none')")
    cfg = write_config(tmp_path, base + 'sandbox = "bwrap"\nnetwork = "off"\n')
    assert config_error(cfg) == (f"{cfg}: agents.a.network: Invalid enum value 'off' "
                                 f"(valid: 'gateway', 'host', 'none')")
    cfg = write_config(tmp_path, base + 'network = "none"\n')
    assert config_error(cfg) == (f'{cfg}: agents.a.network: network = "none" needs '
                                 f'sandbox = "bwrap" (without a sandbox an agent shares '
                                 f"the host's network)")
    cfg = write_config(tmp_path, base + 'sandbox = "bwrap"\nnetwork = "gateway"\n',
                       '[gateway]\nlisten = "127.0.0.1:8765"\n')
    assert config_error(cfg) == (f'{cfg}: agents.a.network: network = "gateway" needs '
                                 f'[gateway] listen = "unix:PATH" (its socket is the only '
                                 f"one bound into the sandbox's empty network namespace)")
    cfg = write_config(tmp_path, base + 'sandbox = "bwrap"\nnetwork = "gateway"\n',
                       '[gateway]\nlisten = "unix:mcp.sock"\nagent_tokens = false\n')
    assert config_error(cfg) == (f'{cfg}: agents.a.network: network = "gateway" needs '
                                 f"[gateway] agent_tokens = true (the agent is given the "
                                 f"gateway's socket with its own token)")
    # in an included file: that file is named
    (tmp_path / "conf.d").mkdir()
    inc = tmp_path / "conf.d" / "b.toml"
    inc.write_text(f'[agents.b]\ncommand = ["{PY}"]\nnetwork = "gateway"\n')
    cfg = write_config(tmp_path, "", supervisor='include = ["conf.d/*.toml"]')
    assert config_error(cfg) == (f'{inc}: agents.b.network: network = "gateway" needs '
                                 f'sandbox = "bwrap" (without a sandbox an agent shares '
                                 f"the host's network)")
    # what is right loads, and sandbox_paths are taken from the config's directory
    cfg = write_config(tmp_path, base + 'sandbox = "bwrap"\nnetwork = "gateway"\n'
                       'sandbox_paths = ["data"]\n', '[gateway]\nlisten = "unix:mcp.sock"\n')
    assert load_config(cfg).agents["a"].sandbox_paths == [str(tmp_path / "data")]


def test_without_bubblewrap_the_config_is_refused(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]
                                                  ) -> None:
    base = f'[agents.a]\ncommand = ["{PY}"]\nsandbox = "bwrap"\n'
    cfg = write_config(tmp_path, base, supervisor=f'bwrap = "{tmp_path}/no/bwrap"')
    why = (f"agents.a.sandbox: bubblewrap is not installed ({tmp_path}/no/bwrap not "
           f"found; Debian's package is bubblewrap)")
    assert commands_error(cfg) == f"{cfg}: {why}"
    # the daemon refuses to start, saying so
    refused_at_start(cfg, why, capsys)


@pytest.mark.deadline(60)
async def test_agents_added_at_runtime_are_checked(tmp_path: Path) -> None:
    async with in_process(tmp_path, "") as d:
        sup = d.sup

        async def add(table: dict[str, Any]) -> str:
            with pytest.raises(Exception) as err:
                await d.dispatcher.call(SOCKET, "agents.add", msgspec.json.encode(
                    {"agents": {"x": {"command": [PY], **table}}}))
            return str(err.value)

        assert await add({"network": "none"}) == (
            'agents.add: agents.x.network: network = "none" needs sandbox = "bwrap" '
            "(without a sandbox an agent shares the host's network)")
        assert await add({"sandbox": "bwrap", "network": "gateway"}) == (
            'agents.add: agents.x.network: network = "gateway" needs [gateway] listen = '
            '"unix:PATH" (its socket is the only one bound into the sandbox\'s empty '
            "network namespace)")
        sup.tuning.sandbox_program = str(tmp_path / "no-bwrap")
        assert await add({"sandbox": "bwrap"}) == (
            f"agents.add: agents.x.sandbox: bubblewrap is not installed ({tmp_path}/no-bwrap "
            f"not found; Debian's package is bubblewrap)")
        assert "x" not in sup.agents


def test_a_bubblewrap_that_fails_is_refused_with_what_it_said(tmp_path: Path) -> None:
    """A host where bwrap runs but makes no sandbox: its last line, and the setting that
    forbids user namespaces where one does; one that cannot be run at all: the error."""
    bwrap = tmp_path / "bwrap"
    bwrap.write_text("#!/bin/sh\necho starting >&2\necho 'bwrap: setting up uid map: "
                     "Permission denied' >&2\nexit 1\n")
    bwrap.chmod(0o755)
    sysctl = tmp_path / "sys"
    (sysctl / "user").mkdir(parents=True)
    assert host_refusal(str(bwrap), None, sysctl=sysctl) == (
        "bubblewrap cannot make a sandbox on this host: bwrap: setting up uid map: "
        "Permission denied")
    (sysctl / "user" / "max_user_namespaces").write_text("0\n")
    assert host_refusal(str(bwrap), None, sysctl=sysctl) == (
        "user namespaces are forbidden on this host (user.max_user_namespaces = 0); "
        "bubblewrap needs one to sandbox a process (bwrap: setting up uid map: "
        "Permission denied)")
    bwrap.write_text("#!/bin/sh\nexit 3\n")  # says nothing: its status
    assert host_refusal(str(bwrap), None, sysctl=tmp_path / "none") == (
        "bubblewrap cannot make a sandbox on this host: status 3")
    bwrap.write_text(f"#!{tmp_path}/no/interpreter\n")
    why = host_refusal(str(bwrap), None, sysctl=tmp_path / "none")
    assert why is not None and why.startswith(
        f"bubblewrap could not be run ({bwrap}): [Errno 2] No such file or directory"), why


def test_a_gateway_network_without_the_gateways_socket_is_refused(tmp_path: Path) -> None:
    bwrap = tmp_path / "bwrap"
    bwrap.write_text("#!/bin/sh\n")
    bwrap.chmod(0o755)
    with pytest.raises(OSError) as err:
        sandboxed([PY], program=str(bwrap), cwd=str(tmp_path), env={}, network="gateway",
                  root=False, read_only=[])
    assert str(err.value) == ('network = "gateway": the MCP gateway has no unix socket '
                              '([gateway] listen = "unix:PATH") to bind in')


def test_user_namespaces_forbidden_are_named(tmp_path: Path) -> None:
    sysctl = tmp_path / "sys"
    assert userns_forbidden(sysctl) is None  # none of the settings: nothing forbids
    (sysctl / "kernel").mkdir(parents=True)
    (sysctl / "user").mkdir()
    (sysctl / "kernel" / "unprivileged_userns_clone").write_text("1\n")
    (sysctl / "user" / "max_user_namespaces").write_text("15000\n")
    (sysctl / "kernel" / "apparmor_restrict_unprivileged_userns").write_text("0\n")
    assert userns_forbidden(sysctl) is None
    (sysctl / "kernel" / "apparmor_restrict_unprivileged_userns").write_text("1\n")
    assert userns_forbidden(sysctl) == "kernel.apparmor_restrict_unprivileged_userns = 1"
    (sysctl / "user" / "max_user_namespaces").write_text("0\n")
    assert userns_forbidden(sysctl) == "user.max_user_namespaces = 0"
    (sysctl / "kernel" / "unprivileged_userns_clone").write_text("0\n")
    assert userns_forbidden(sysctl) == "kernel.unprivileged_userns_clone = 0"


def test_an_unprivileged_sandbox_is_tried_as_its_user() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to try the sandbox as another user")
    forbidden = userns_forbidden()
    why = host_refusal("bwrap", "nobody")
    if forbidden:  # this host forbids it: the refusal names the setting
        assert why is not None and forbidden in why
    else:
        assert why is None
    # root's sandbox has a user namespace too (it is what lets it make none of its own),
    # tried as any other: allowed to root wherever bwrap works at all
    assert host_refusal("bwrap", "root") is None


def test_what_a_program_needs_is_its_installation_or_its_directory(tmp_path: Path) -> None:
    # a venv's interpreter: the venv, and its base interpreter's installation
    base, venv = tmp_path / "base", tmp_path / "venv"
    (base / "bin").mkdir(parents=True)
    (base / "bin" / "python3").touch()
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(base / "bin" / "python3")
    (venv / "pyvenv.cfg").write_text(f"home = {base / 'bin'}\n")
    assert program_paths(str(venv / "bin" / "python")) == [str(venv), str(base), str(base)]
    # a script outside a bin directory: its own directory, not the one holding it (here,
    # every agent's)
    script = tmp_path / "agents" / "x" / "run.sh"
    script.parent.mkdir(parents=True)
    script.touch()
    assert program_paths(str(script)) == [str(script.parent)] * 2
    # the system's: bound already
    assert program_paths("/usr/bin/env") == []


def test_a_sandboxed_agent_may_not_hold_corrals_files_in_its_directory(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Its directory is writable: one holding corral's config (an agent without a cwd of
    its own runs in the config's directory) would let it rewrite corral's orders."""
    cfg = write_config(tmp_path, f'[agents.a]\ncommand = ["{PY}"]\nsandbox = "bwrap"\n')
    why = (f"agents.a.cwd: {tmp_path} is writable in the sandbox and holds corral's config "
           f"file ({cfg}): give the agent a cwd of its own")
    assert commands_error(cfg) == f"{cfg}: {why}"
    refused_at_start(cfg, why, capsys)
    # nor the includes' directory (a new file there is a new agent at the next reload)
    (tmp_path / "agents" / "conf.d").mkdir(parents=True)
    cfg = write_config(tmp_path, f'[agents.a]\ncommand = ["{PY}"]\nsandbox = "bwrap"\n'
                                 f'cwd = "{tmp_path}/agents"\n',
                       supervisor='include = ["agents/conf.d/*.toml"]')
    assert commands_error(cfg) == (
        f"{cfg}: agents.a.cwd: {tmp_path}/agents is writable in the sandbox and holds the "
        f"config's includes ({tmp_path}/agents/conf.d): give the agent a cwd of its own")


@pytest.mark.deadline(120)
async def test_corrals_files_are_masked_in_what_it_may_read(tmp_path: Path) -> None:
    """Read-only is no guard for a unix socket (connect needs no write permission): the
    control socket, the config and the state inside a path the agent may read are hidden."""
    home = tmp_path / "home"
    async with in_process(tmp_path, agent("box", home, f'sandbox_paths = ["{tmp_path}"]\n')
                          ) as d:
        assert (tmp_path / "corral.sock").exists()
        assert await run(d, "box", {"do": "connect_unix", "path": str(tmp_path / "corral.sock")}
                         ) == {"error": "ConnectionRefusedError: [Errno 111] Connection refused"}
        config = tmp_path / "corral.toml"
        assert await run(d, "box", {"do": "read", "path": str(config)}) == {
            "error": f"PermissionError: [Errno 13] Permission denied: '{config}'"}
        db = tmp_path / "state" / "corral.db"
        assert db.exists()
        assert await run(d, "box", {"do": "read", "path": str(db)}) == {
            "error": f"FileNotFoundError: [Errno 2] No such file or directory: '{db}'"}
        # what else is there is readable, as sandbox_paths says
        (tmp_path / "data.txt").write_text("shared data")
        assert await run(d, "box", {"do": "read", "path": str(tmp_path / "data.txt")}) == {
            "ok": "shared data"}

        # an agent added at runtime without a cwd runs in the config's directory: refused
        with pytest.raises(Exception) as err:
            await d.dispatcher.call(SOCKET, "agents.add", msgspec.json.encode(
                {"agents": {"x": {"command": [PY], "sandbox": "bwrap"}}}))
        assert str(err.value) == (
            f"agents.add: agents.x.cwd: {tmp_path} is writable in the sandbox and holds "
            f"corral's config file ({tmp_path}/corral.toml): give the agent a cwd of its own")
        assert "x" not in d.sup.agents
