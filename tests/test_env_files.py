"""Environment files (issue 57): `env_file`, read as each process starts, under `env`;
one that cannot be read fails the start saying why; the operator's alone."""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import pytest

from corral.daemon.privilege import refusal
from corral.supervisor.config import AgentSpec, ConfigError, TenantSpec
from corral.supervisor.envfiles import ENV_FILE_BYTES, read_env_files

from .daemon_harness import corral_run, running_daemon, shared_tmpdir
from .test_daemon_cli import wait_until

ROOT = Path(__file__).resolve().parent.parent
SAYS = "echo \"A=$A B=$B C=$C\"; exec sleep 1000"


def test_an_env_file_is_read_at_each_start_under_env() -> None:
    tmp = shared_tmpdir()
    env_file = tmp / "app.env"
    env_file.write_text("# the app's\nA=from-file\nexport B='file b'\n; and\nC=\"c c\"\n")
    agents = textwrap.dedent(f"""
        [agents.app]
        command = ["sh", "-c", {json.dumps(SAYS)}]
        protocol = "none"
        env_file = ["{env_file}", "-{tmp}/absent.env"]
        env = {{ B = "from-env" }}
    """)
    with running_daemon(tmp, agents) as d:
        wait_until(lambda: "stdout: A=from-file B=from-env C=c c" in
                   d.logs("app", lines=5), what="the variables")
        env_file.write_text("A=edited\n")
        d.cli("restart", "app")
        wait_until(lambda: "stdout: A=edited B=from-env C=" in
                   d.logs("app", lines=5), what="the file read again")


@pytest.mark.parametrize(("text", "said"), [
    (None, "env_file {f}: cannot read: No such file or directory"),
    ("A=1\nnot a pair\n", "env_file {f}: line 2: not KEY=VALUE"),
])
def test_an_env_file_not_read_fails_the_start_saying_why(text: str | None, said: str
                                                         ) -> None:
    tmp = shared_tmpdir()
    f = tmp / "app.env"
    if text is not None:
        f.write_text(text)
    agents = textwrap.dedent(f"""
        [agents.app]
        command = ["sleep", "1000"]
        protocol = "none"
        env_file = ["{f}"]
        max_restarts = 0
    """)
    with running_daemon(tmp, agents) as d:
        wait_until(lambda: d.status()["app#0"]["state"] == "failed", what="app failed")
        assert f"spawn failed: {said.format(f=f)}" in d.cli("logs", "app").stdout


def test_an_env_file_past_its_bound_is_refused_naming_it(tmp_path: Path) -> None:
    f = tmp_path / "big.env"
    f.write_text("A=" + "x" * ENV_FILE_BYTES + "\n")
    with pytest.raises(ConfigError) as e:
        read_env_files([str(f)])
    assert str(e.value) == (f"env_file {f}: larger than {ENV_FILE_BYTES} bytes "
                            "(ENV_FILE_BYTES)")
    assert read_env_files([f"-{tmp_path}/absent"]) == {}


def test_a_relative_env_file_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text("[agents.a]\ncommand = 'true'\nenv_file = ['-app.env']\n")
    r = corral_run(["check-config", "--no-check", str(p)],
                   env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert (r.returncode, r.stderr) == (
        1, f"corral: invalid config: {p}: agents.a: env_file '-app.env' is not an "
           "absolute path\n")


def test_a_tenants_caller_may_not_name_an_env_file() -> None:
    """The daemon reads it as root: /etc/shadow's lines in the agent's environment."""
    spec = AgentSpec(name="a", command="true", tenant="t", cwd="/srv/t",
                     env_file=["/etc/shadow"])
    assert refusal(spec, "t", TenantSpec(), "/srv/t") == (
        "env_file", "[\"/etc/shadow\"] differs from tenant t's (none)")
