"""Binds are corral's alone (issue 88): what bubblewrap binds into an agent's sandbox comes
from the config and the agent's package, never from a file the agent can write nor from
an env value a tenant's caller sends. One attack per bind source, on real bubblewrap in
the real daemon: the environment's gateway socket, PYTHONPATH, a pyvenv.cfg beside the
agent's own command, and a link its command is."""

from __future__ import annotations

import asyncio
import os
import shlex
import shutil
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any

import msgspec
import pytest

from corral.daemon.tokens import tokens_of
from corral.supervisor import State
from corral.supervisor.sandbox import program_paths

from .conftest import ROOT
from .daemon_harness import PY, free_port, in_process
from .sandboxprobe import sandbox_refusal
from .test_http_api import SOCKET

HERE = Path(__file__).resolve().parent
NO_FILE = "FileNotFoundError: [Errno 2] No such file or directory"
pytestmark = pytest.mark.skipif(sandbox_refusal(None) is not None,
                                reason=f"no sandbox here: {sandbox_refusal(None)}")


def secret_dir(tmp: Path) -> Path:
    """A host directory no agent is given, holding a secret."""
    hostdir = tmp / "hostdir"
    (hostdir / "bin").mkdir(parents=True)
    (hostdir / "secret.txt").write_text("the host's secret")
    return hostdir


async def task(d: Any, name: str, given: dict[str, Any]) -> Any:
    done = await asyncio.wait_for(d.dispatcher.call(SOCKET, "tasks.run", msgspec.json.encode(
        {"agent": name, "input": given})), 60)
    return msgspec.json.decode(msgspec.json.encode(done))


async def restarted(d: Any, name: str) -> None:
    """The agent's process killed by its own hand, and its next one serving."""
    replica = d.sup.agents[name].replicas[0]
    before = replica.restarts
    done = await task(d, name, {"do": "die", "signal": 9})
    assert done["status"] in ("failed", "lost"), done
    serving = {State.READY, State.IDLE}
    await d.sup.wait_state(name, serving, replica=0, timeout=30)
    assert replica.restarts > before  # (each of the task's tries killed one)


@pytest.mark.deadline(120)
async def test_a_tenants_caller_binds_no_host_directory_through_env(tmp_path: Path) -> None:
    """The attack: a tenant's admin posts an agent whose env names a host directory as
    CORRAL_MCP_SOCKET (bound writable: the agent wrote on the host and reached its unix
    sockets) or on PYTHONPATH (each entry bound read-only), or LD_PRELOAD; or whose
    command (or PATH) is a program in a host directory, whose installation the sandbox
    binds. Each is 403, the key said, nothing added; the worker SDK's directory on
    PYTHONPATH is the one entry outside its cwd a tenant's agent may name."""
    import aiohttp

    hostdir = Path("/root")  # outside its cwd (the config's directory)
    port = free_port()
    async with in_process(tmp_path, "", f'[tenants.acme]\n\n[http]\nlisten = "127.0.0.1:{port}"\n'
                          ) as d:
        secret, _ = await tokens_of(d.services.store).create(
            "acme-admin", ["admin", "agents:write", "agents:read"], None, None, "acme")
        base = f"http://127.0.0.1:{port}/api/v1"
        refused = {
            "CORRAL_MCP_SOCKET": (str(hostdir), "CORRAL_MCP_SOCKET: names starting CORRAL_, "
                                  "PYTHON, LD_ are corral's and its operator's to set (what "
                                  "they name is bound into the sandbox or run)"),
            "PYTHONPATH": (f"{ROOT}{os.pathsep}{hostdir}",
                           f'PYTHONPATH names "{hostdir}": a tenant\'s agent imports from its '
                           "cwd"),
            "LD_PRELOAD": (str(tmp_path / "x.so"), "LD_PRELOAD: names starting"),
            "PYTHONSTARTUP": (str(tmp_path / "x.py"), "PYTHONSTARTUP: names starting"),
        }
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {secret}"}
                                         ) as http:
            for name, (value, said) in refused.items():
                async with http.post(f"{base}/agents", json={"agents": {"box": {
                        "command": [PY, f"{HERE}/sandbox_agent.py"],
                        "env": {name: value}}}}) as r:
                    body = await r.json()
                    assert r.status == 403, (name, body)
                    assert f"agents.box.env: {said}" in body["detail"], (name, body)
            # the program it runs: its installation is bound (a program not in a bin
            # directory: its own directory), so a tenant names none outside its cwd, the
            # system's and corral's own, by its command or by a PATH to look it up on
            elsewhere = Path(tempfile.mkdtemp(prefix="corral-host-"))
            try:
                (elsewhere / "tool").write_text("#!/bin/sh\ncat secret\n")
                (elsewhere / "tool").chmod(0o755)
                for table, said in (
                        ({"command": [str(elsewhere / "tool")]},
                         f'command: "{elsewhere}/tool" is {elsewhere}/tool, outside its cwd'),
                        ({"command": ["tool"], "env": {"PATH": f"{elsewhere}:/usr/bin"}},
                         f'env: PATH names "{elsewhere}": a tenant\'s agent runs programs '
                         "of its cwd")):
                    async with http.post(f"{base}/agents", json={"agents": {"box": table}}
                                         ) as r:
                        body = await r.json()
                        assert r.status == 403, (table, body)
                        assert f"agents.box.{said}" in body["detail"], (table, body)
            finally:
                shutil.rmtree(elsewhere)
            assert "box" not in d.sup.agents
            async with http.post(f"{base}/agents", json={"agents": {"box": {
                    "command": [PY, f"{HERE}/sandbox_agent.py"],
                    "env": {"PYTHONPATH": str(ROOT)}}}}) as r:
                assert r.status == 200, await r.text()
        assert d.sup.agents["box"].spec.tenant == "acme"


@pytest.mark.deadline(180)
async def test_a_gateway_socket_in_an_agents_env_binds_nothing(tmp_path: Path) -> None:
    """The attack's bind: CORRAL_MCP_SOCKET in an egress = "gateways" agent's env (TCP
    gateways) made the sandbox bind that host directory writable as the gateway's socket.
    The gateways' addresses are corral's alone to set: the agent's file lands in its own
    /tmp, not the host's directory."""
    hostdir = secret_dir(tmp_path)
    home = tmp_path / "home"
    home.mkdir()
    agent = textwrap.dedent(f"""
        [agents.box]
        command = ["{PY}", "{HERE}/sandbox_agent.py"]
        env = {{ PYTHONPATH = "{ROOT}", CORRAL_MCP_SOCKET = "{hostdir}" }}
        cwd = "{home}"
        egress = "gateways"
        stop_timeout = 5.0
        start_timeout = 60.0
        [gateway]
        listen = "127.0.0.1:{free_port()}"
    """)
    async with in_process(tmp_path, agent) as d:
        planted = hostdir / "planted"
        done = await task(d, "box", {"do": "write", "path": str(planted)})
        assert done["output"] in ({"error": f"{NO_FILE}: '{planted}'"},
                                  {"ok": str(planted)}), done  # (its own /tmp)
        assert not planted.exists()
        done = await task(d, "box", {"do": "read", "path": str(hostdir / "secret.txt")})
        assert done["output"] == {"error": f"{NO_FILE}: '{hostdir / 'secret.txt'}'"}


def own_command(tmp: Path, home: Path) -> str:
    """An operator's agent whose command is a script in its own (writable) directory, as
    a package's run script is."""
    (home / "bin").mkdir(parents=True)
    script = home / "bin" / "agent"
    # (quoted: a checkout's path may hold a space)
    run = shlex.join([PY, f"{HERE}/sandbox_agent.py"])
    script.write_text(f"#!/bin/sh\nexec {run}\n")
    script.chmod(0o755)
    return textwrap.dedent(f"""
        [agents.box]
        command = ["{script}"]
        env = {{ PYTHONPATH = "{ROOT}" }}
        cwd = "{home}"
        sandbox = "bwrap"
        read_paths = ["{sys.base_prefix}"]
        stop_timeout = 5.0
        backoff_initial = 0.05
        start_timeout = 60.0
    """)


@pytest.mark.deadline(180)
async def test_an_agent_chooses_no_bind_of_its_next_sandbox_by_a_pyvenv_cfg(
        tmp_path: Path) -> None:
    """The attack: an agent whose command lives in its own directory writes
    COMMAND/../../pyvenv.cfg naming `home = HOSTDIR/bin`, exits, and at its restart the
    sandbox bound HOSTDIR (the base interpreter's installation, it believed): the agent
    read the host's files. A pyvenv.cfg where the agent may write is never read."""
    hostdir = secret_dir(tmp_path)
    home = tmp_path / "home"
    async with in_process(tmp_path, own_command(tmp_path, home)) as d:
        done = await task(d, "box", {"do": "put", "path": str(home / "pyvenv.cfg"),
                                     "text": f"home = {hostdir / 'bin'}\n"})
        assert done["output"] == {"ok": str(home / "pyvenv.cfg")}, done
        await restarted(d, "box")
        done = await task(d, "box", {"do": "read", "path": str(hostdir / "secret.txt")})
        assert done["output"] == {"error": f"{NO_FILE}: '{hostdir / 'secret.txt'}'"}


@pytest.mark.deadline(180)
async def test_an_agent_chooses_no_bind_of_its_next_sandbox_by_a_link(tmp_path: Path) -> None:
    """The attack: the agent replaces its own command by a link to a program in a host
    directory; the sandbox bound the installation of what the link resolved to. A command
    where the agent may write is not followed through its links (the link then names
    nothing inside, and the restart fails to exec: the agent's own doing)."""
    hostdir = secret_dir(tmp_path)
    home = tmp_path / "home"
    (hostdir / "tool").write_text("#!/bin/sh\ncat secret.txt\n")
    paths = program_paths(str(hostdir / "tool"))
    assert paths == [str(hostdir)] * 2  # a program not in a bin directory: its own
    link = home / "bin" / "agent"
    own_command(tmp_path, home)
    link.unlink()
    link.symlink_to(hostdir / "tool")
    # (its installation is its own directory, bound writable: nothing bound apart)
    assert program_paths(str(link), [str(home)]) == []
    assert program_paths(str(link)) == [str(home), str(hostdir)]


def test_a_pyvenv_cfg_where_the_agent_writes_is_never_read(tmp_path: Path) -> None:
    """Beside the daemon's test: program_paths reads a venv's pyvenv.cfg outside what the
    agent may write, and none inside it."""
    base, venv = tmp_path / "base", tmp_path / "home" / "venv"
    (base / "bin").mkdir(parents=True)
    (base / "bin" / "python3").touch()
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(base / "bin" / "python3")
    (venv / "pyvenv.cfg").write_text(f"home = {base / 'bin'}\n")
    assert program_paths(str(venv / "bin" / "python")) == [str(venv), str(base), str(base)]
    assert program_paths(str(venv / "bin" / "python"), [str(tmp_path / "home")]) == []
    assert program_paths(str(venv / "bin" / "python"), [str(tmp_path / "elsewhere")]) == [
        str(venv), str(base), str(base)]


@pytest.mark.deadline(120)
async def test_a_models_key_file_in_a_root_agents_read_paths_is_masked(tmp_path: Path) -> None:
    """The attack: a model's `key_file` inside the directory a root agent's `read_paths`
    names was read in clear, where corral's own config files there are masked. A key
    file is among corral's own files."""
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "model.key").write_text("sk-provider-SECRET-masked\n")
    (keys / "notes.txt").write_text("shared notes")
    home = tmp_path / "home"
    home.mkdir()
    agent = textwrap.dedent(f"""
        [agents.box]
        command = ["{PY}", "{HERE}/sandbox_agent.py"]
        env = {{ PYTHONPATH = "{ROOT}" }}
        cwd = "{home}"
        sandbox = "bwrap"
        read_paths = ["{keys}"]
        stop_timeout = 5.0
        [models.gpt]
        url = "http://127.0.0.1:{free_port()}/v1"
        format = "openai"
        key_file = "{keys}/model.key"
    """)
    async with in_process(tmp_path, agent) as d:
        done = await task(d, "box", {"do": "read", "path": str(keys / "model.key")})
        assert done["output"] == {
            "error": f"PermissionError: [Errno 13] Permission denied: '{keys}/model.key'"}
        done = await task(d, "box", {"do": "read", "path": str(keys / "notes.txt")})
        assert done["output"] == {"ok": "shared notes"}
