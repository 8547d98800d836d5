"""The paths an agent's start checks (corral/supervisor/sandbox.py, runas.py), read as
strings: an attacker's pass. A NUL in a command's word or a cwd is refused where the
table is read, at every way one comes in (the config file, `corral add`, a tenant's or a
package's table, an MCP server's): it reached the reach check's stat at a runtime add
with --no-check, and a ValueError came back where a refusal was owed. `..` is passed
through as the kernel does, never folded away. Nothing inside what the agent may write is
bound apart (decision 1825): a link it made on the way to its own venv chose what its next
sandbox bound there, over corral's masks."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest

from corral.supervisor.config import ConfigError, McpServerSpec
from corral.supervisor.configload import load_config, parse_agents, parse_servers
from corral.supervisor.mcpegress import server_sandboxed
from corral.supervisor.sandbox import (
    bound_cwd,
    out_of_reach,
    plain,
    program_paths,
    sandboxed,
)
from corral.supervisor.tuning import Tuning

from .sandboxprobe import sandbox_refusal

NUL = "holds a NUL, which no path nor argument may hold"


def test_a_nul_in_a_command_or_a_cwd_is_refused_where_the_table_is_read(
        tmp_path: Path) -> None:
    config = tmp_path / "corral.toml"
    config.write_text('[agents.a]\ncommand = ["/usr/bin/python3"]\n'
                      'cwd = "/tmp/a\\u0000b"\n')
    with pytest.raises(ConfigError) as said:
        load_config(config)
    assert str(said.value) == f"{config}: agents.a: '/tmp/a\\x00b' {NUL}"
    tables: list[tuple[dict[str, Any], str]] = [
        ({"command": ["/usr/bin/py\0thon3", "x.py"], "user": "nobody"},
         "/usr/bin/py\0thon3"),
        ({"command": ["/usr/bin/python3", "x\0.py"]}, "x\0.py"),
        ({"command": "/usr/bin/python3 x\0.py"}, "/usr/bin/python3 x\0.py"),
        ({"command": ["/usr/bin/python3"], "cwd": "/tmp/a\0b", "sandbox": "bwrap"},
         "/tmp/a\0b")]
    for table, word in tables:
        with pytest.raises(ConfigError) as said:
            parse_agents({"agents": {"x": table}}, "agents.add")
        assert str(said.value) == f"agents.add: agents.x: {word!r} {NUL}"
    with pytest.raises(ConfigError) as said:
        parse_servers({"mcp_servers": {"s": {"command": ["srv\0"]}}}, "servers.add")
    assert str(said.value) == f"servers.add: mcp_servers.s: 'srv\\x00' {NUL}"
    # a newline is a path's to hold
    assert parse_agents({"agents": {"x": {"command": ["/usr/bin/python3", "a\nb"]}}},
                        "agents.add")["x"].argv() == ["/usr/bin/python3", "a\nb"]


def test_the_way_to_a_path_passes_each_directory_before_a_dot_dot(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # (in /tmp: the test's own directory is under one only its owner passes)
    top = Path(tempfile.mkdtemp(prefix="corral-reach-"))
    try:
        top.chmod(0o755)
        shut, open_ = top / "shut", top / "open"
        shut.mkdir(mode=0o700)
        open_.mkdir(mode=0o755)
        uid, gid = os.getuid() + 1, os.getgid() + 1  # (neither the owner nor its group)
        assert out_of_reach(f"{shut}/../open", uid, gid) == str(shut)
        assert out_of_reach(f"{open_}/./../open//", uid, gid) is None
        assert out_of_reach(f"{shut}/../open", 0, 0) is None  # root passes everywhere
        monkeypatch.chdir(top)  # a relative path: from the cwd, not from /
        assert out_of_reach("shut/../open", uid, gid) == str(shut)
        assert out_of_reach("open", uid, gid) is None
    finally:
        shutil.rmtree(top)
    # pathlib's reading, kept: no empty nor `.` parts, each `..` where it was
    assert plain("/a//b/./c/../d/") == "/a/b/c/../d" == str(Path("/a//b/./c/../d/"))
    assert plain("./a/./b") == "a/b" == str(Path("./a/./b"))
    assert plain(".") == "." == str(Path("."))


def test_a_program_spelt_through_a_dot_dot_binds_what_the_kernel_runs_it_from(
        tmp_path: Path) -> None:
    """The attack (session 18's hole 5): a tenant's program spelt `/tmp/../bin/sh` (the
    system's shell, which tenantbinds.py lets pass) had its installation judged as spelt,
    `/tmp/..`, whose first part is no system directory's, and bound folded: the host's
    root. An installation is judged as it is bound."""
    assert program_paths("/tmp/../bin/sh") == []
    assert program_paths("/usr/../tmp/../bin/../usr/bin/env") == []
    tool = tmp_path / "b" / "bin" / "tool"
    tool.parent.mkdir(parents=True)
    tool.touch()
    (tmp_path / "a").mkdir()
    assert program_paths(f"{tmp_path}/a/../b/bin/tool") == [str(tmp_path / "b")] * 2


def test_a_cwd_is_bound_as_resolved_and_inside_its_tenants_dir_at_each_start(
        tmp_path: Path) -> None:
    """Session 18's hole 2, the rule alone: a tenant's agent's cwd was checked inside its
    tenant's dir at the add and bound as named at each start, which bubblewrap follows: a
    link another agent of the tenant put there bound a host directory. The way to a cwd
    that reaches its tenant's dir must end in it, at each start; a link there to another
    place of the dir, or an operator's link outside it, is followed."""
    acme, host = tmp_path / "acme", tmp_path / "host"
    (acme / "releases" / "v2").mkdir(parents=True)
    host.mkdir()
    (acme / "box").symlink_to(host)
    (acme / "current").symlink_to(acme / "releases" / "v2")
    (tmp_path / "door").symlink_to(acme / "box")  # (an operator's, to the tenant's)
    (tmp_path / "ops").symlink_to(host)
    said = f"its tenant's dir ({acme}) through a link there: a cwd is bound inside its " \
           "tenant's dir alone"
    for cwd in (acme / "box", tmp_path / "door"):
        with pytest.raises(OSError) as refused:
            bound_cwd(str(cwd), str(acme))
        assert str(refused.value) == f"its cwd {cwd} is {host} now, outside {said}"
    assert bound_cwd(str(acme / "current"), str(acme)) == str(acme / "releases" / "v2")
    assert bound_cwd(str(tmp_path / "ops"), str(acme)) == str(host)
    assert bound_cwd(str(acme / "box"), None) == str(host)  # (no tenant's dir: as named)


@pytest.mark.skipif(sandbox_refusal(None) is not None, reason="no sandbox here")
def test_an_mcp_servers_relative_pythonpath_is_read_from_its_cwd(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An egress = "none" server's relative PYTHONPATH entry is its cwd's, as its
    interpreter reads it (session 18's hole 1, the agents' line's twin): it bound the
    directory of that name in the daemon's own cwd read-only."""
    host, srv = tmp_path / "host", tmp_path / "srv"
    for place in (host / "lib", srv / "lib"):
        place.mkdir(parents=True)
    monkeypatch.chdir(host)
    spec = McpServerSpec(command=["/bin/true"], cwd=str(srv),
                         env={"PYTHONPATH": f"lib{os.pathsep}{os.pathsep}/usr/lib/x"})
    argv = server_sandboxed(["/bin/true"], {}, None, spec, Tuning(), held=False)
    assert str(host / "lib") not in argv
    # (its own lib is held by its cwd's writable bind: none apart)
    assert [argv[i:i + 3] for i, a in enumerate(argv) if a == "--ro-bind-try"] == [
        ["--ro-bind-try", "/usr/lib/x", "/usr/lib/x"]]


@pytest.mark.skipif(sandbox_refusal(None) is not None, reason="no sandbox here")
def test_a_link_the_agent_makes_on_the_way_to_its_venv_binds_nothing(tmp_path: Path) -> None:
    """The attack: an agent whose command is its own venv's (HOME/x/venv/bin/tool) moves
    x away and makes x a relative link to corral's installation, bound read-only in
    every sandbox with corral's own files in it masked. Its next sandbox bound its venv
    "as named": bwrap followed the link on the host and inside, binding corral's venv
    again after the mask, and ran corral's tool with the masked file readable."""
    corral, home = tmp_path / "corral", tmp_path / "deep" / "er" / "home"
    secret = corral / "venv" / "secret.toml"
    for venv, script in ((corral / "venv", f"echo corral; cat {secret}"),
                         (home / "x" / "venv", f"mv x x.old; ln -s "
                          f"{os.path.relpath(corral, home)} x; echo swapped")):
        (venv / "bin").mkdir(parents=True)
        (venv / "bin" / "tool").write_text(f"#!/bin/sh\n{script}\n")
        (venv / "bin" / "tool").chmod(0o755)
    secret.write_text("the operator's secret")
    tool = str(home / "x" / "venv" / "bin" / "tool")

    def life() -> str:
        argv = sandboxed([tool], program="bwrap", cwd=str(home), env={}, network="none",
                         root=os.geteuid() == 0,
                         read_only=[*program_paths(tool, [str(home)]), str(corral)],
                         protected=[(str(secret), "corral's config")])
        return subprocess.run(argv, capture_output=True, text=True, timeout=60).stdout

    assert life() == "swapped\n"  # (its x, a mount's parent, is its to move)
    assert (home / "x").is_symlink()
    # x names corral's venv now, seen through its cwd: that venv's tool runs, its
    # secret still masked
    assert life() == "corral\n"
