"""The attacker's pass over the sandbox's binds (corral/supervisor/sandbox.py) under real
bubblewrap: what an agent may write must choose none of its next sandbox's binds, and no
bind may hold corral's own files where the agent could move them (decision 1825's rule,
carried to the writable binds and the masks). Each attack runs two lives of an agent's
sandbox: the first makes its change, the second shows what it gained."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from corral.supervisor.config import ConfigError
from corral.supervisor.configload import check_sandboxes, parse_agents
from corral.supervisor.sandbox import sandboxed

from .sandboxprobe import sandbox_refusal

pytestmark = pytest.mark.skipif(sandbox_refusal(None) is not None,
                                reason="no sandbox here")


def life(script: str, cwd: Path, writable: list[Path], read_only: list[Path],
         protected: list[tuple[str, str]]) -> str:
    argv = sandboxed(["/bin/sh", "-c", script], program="bwrap", cwd=str(cwd), env={},
                     network="none", root=os.geteuid() == 0,
                     read_only=[str(p) for p in read_only],
                     writable=[str(p) for p in writable], protected=protected)
    return subprocess.run(argv, capture_output=True, text=True, timeout=60).stdout


def installation(tmp_path: Path) -> tuple[Path, Path, Path]:
    """corral's installation (bound read-only into every sandbox) with its config masked
    in it, and a file of its code."""
    venv = tmp_path / "corral" / "venv"
    (venv / "lib").mkdir(parents=True)
    (venv / "secret.toml").write_text("the operator's secret")
    (venv / "lib" / "code.py").write_text("corral's code")
    return venv, venv / "secret.toml", venv / "lib" / "code.py"


def test_a_link_on_the_way_to_a_writable_bind_inside_another_binds_nothing(
        tmp_path: Path) -> None:
    """A write_path inside the agent's cwd (or a cwd inside a write_path) was bound apart
    as named: the agent moved its parent away (a mount's parent is its to move), made a
    directory there holding a relative link under the bind's name, and its next sandbox
    bound the link's target writable, bwrap following it on the host and inside: corral's
    installation, read-only in every sandbox, written on the host (its masked secret read,
    where the link named the directory holding it: that start is refused now). Now one
    writable bind inside another is not bound apart: the outer one holds it."""
    venv, secret, code = installation(tmp_path)
    home = tmp_path / "deep" / "er" / "home"
    for writable, cwd in (([home / "x" / "out"], home),  # a write_path inside the cwd
                          ([home], home / "x" / "out")):  # the cwd inside a write_path
        (home / "x" / "out").mkdir(parents=True)
        link = os.path.relpath(code.parent, home / "x")
        attack = f"cd {home} && mv x x.$$ && mkdir x && ln -s {link} x/out && echo moved"
        assert life(attack, cwd, writable, [venv], [(str(secret), "corral's config")]
                    ) == "moved\n"
        assert (home / "x" / "out").is_symlink()
        got = life(f"echo written > {code}; cat {secret}", cwd, writable, [venv],
                   [(str(secret), "corral's config")])
        assert (got, code.read_text()) == ("", "corral's code")
        (home / "x" / "out").unlink()
        (home / "x" / "out").symlink_to(os.path.relpath(venv, home / "x"))
        with pytest.raises(OSError) as said:
            life(f"cat {secret}", cwd, writable, [venv], [(str(secret), "corral's config")])
        assert f"holds corral's config ({secret})" in str(said.value)
        for old in home.glob("x*"):
            subprocess.run(["rm", "-rf", str(old)], check=True)


def test_a_write_path_holding_corrals_own_files_is_refused(tmp_path: Path) -> None:
    """A write_path holding corral's config was accepted, the config only masked in it:
    the agent renamed the mask's parent (its to move) and wrote a config of its own at
    the config's path on the host, and read the operator's in its next life. A writable
    directory holding one of corral's files is refused, at the config's check and at the
    start, as a cwd holding one was."""
    data, home = tmp_path / "data", tmp_path / "home"
    state = data / "state"
    state.mkdir(parents=True)
    home.mkdir()
    config = state / "corral.toml"
    config.write_text("the operator's config")
    protected = [(str(config), "corral's config")]
    with pytest.raises(OSError) as said:
        life(f"mv {state} {data}/s && mkdir {state} && echo mine > {config}", home, [data],
             [], protected)
    assert str(said.value) == (f"{data} is writable in the sandbox and holds corral's "
                               f"config ({config}): give the agent a cwd of its own")
    assert config.read_text() == "the operator's config"
    agents = parse_agents({"agents": {"a": {
        "command": ["/bin/true"], "cwd": str(home), "sandbox": "bwrap",
        "write_paths": [str(data)]}}}, "corral.toml")
    with pytest.raises(ConfigError) as refused:
        check_sandboxes(agents, "bwrap", "corral.toml", protected)
    assert str(refused.value) == f"corral.toml: agents.a.write_paths: {said.value}"


def test_a_file_of_corrals_named_through_a_link_is_masked_where_it_is(
        tmp_path: Path) -> None:
    """corral's config named through a link (its directory a link into a read_paths
    entry) was masked by its name alone, outside every bind: the file, bound read-only
    where it is, was read. It is masked as named and as resolved; a cwd holding it by
    its resolved path is refused."""
    shared, home = tmp_path / "shared", tmp_path / "home"
    (shared / "conf").mkdir(parents=True)
    home.mkdir()
    (shared / "conf" / "corral.toml").write_text("the operator's secret")
    (tmp_path / "etc-corral").symlink_to(shared / "conf")
    named = tmp_path / "etc-corral" / "corral.toml"
    protected = [(str(named), "corral's config")]
    assert life(f"cat {shared}/conf/corral.toml", home, [], [shared], protected) == ""
    with pytest.raises(OSError) as said:
        life("true", shared, [], [], protected)
    assert str(said.value) == (f"{shared} is writable in the sandbox and holds corral's "
                               f"config ({named}): give the agent a cwd of its own")
