"""An agent's own log file (issue 57): `log_file` with its own rotation by size, or the
daemon's stdout for a container's `docker logs`; the operator's to name."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from corral.daemon.privilege import refusal
from corral.supervisor.config import AgentSpec, TenantSpec

from .daemon_harness import Daemon, running_daemon, shared_tmpdir
from .test_daemon_cli import wait_until

ROOT = Path(__file__).resolve().parent.parent
# 200 numbered lines in bursts of 20 (each burst one read, one write of its log), then
# it stays up
TALKER = ("i=0; while [ $i -lt 200 ]; do echo \"line $i of the talker\"; i=$((i+1)); "
          "[ $((i % 20)) = 0 ] && sleep 0.1; done; exec sleep 1000")


def test_a_log_file_of_its_own_is_written_and_rotated_by_its_size() -> None:
    tmp = shared_tmpdir()
    own = tmp / "own"
    own.mkdir()
    agents = textwrap.dedent(f"""
        [agents.talker]
        command = ["sh", "-c", {json.dumps(TALKER)}]
        protocol = "none"
        log_file = "{own}/talker.log"
        log_max_bytes = 4000
        log_backups = 2
    """)
    with running_daemon(tmp, agents) as d:
        wait_until(lambda: "line 199 of the talker" in d.cli("logs", "talker", "-n", "5")
                   .stdout, what="every line said")
        files = sorted(p.name for p in own.iterdir())
        # rotated at 4000 bytes, a write never split; two kept, as log_backups says
        assert files == ["talker.log", "talker.log.1", "talker.log.2"], files
        assert all((own / f).stat().st_size >= 4000 for f in files[1:])
        assert "line 199 of the talker" in (own / "talker.log").read_text()
        assert not (d.state / "logs" / "talker.log").exists()


def test_dev_stdout_is_the_daemons_stdout_for_docker_logs() -> None:
    tmp = shared_tmpdir()
    d = Daemon(tmp, textwrap.dedent("""
        [agents.talker]
        command = ["sh", "-c", "echo hello from the talker; exec sleep 1000"]
        protocol = "none"
        log_file = "/dev/stdout"
    """))
    try:
        d.start()
        wait_until(lambda: "hello from the talker" in d.cli("logs", "talker").stdout,
                   what="the line")
        assert d.stop() == 0
        assert d.proc is not None and d.proc.stdout is not None
        out = d.proc.stdout.read().decode()
        said = [ln for ln in out.splitlines() if "hello from the talker" in ln]
        assert len(said) == 1 and " talker#0[" in said[0] and said[0].endswith(
            "stdout: hello from the talker"), out
        assert not (d.state / "logs" / "talker.log").exists()
    finally:
        d.close()


def test_a_relative_log_file_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text("[agents.a]\ncommand = 'true'\nlog_file = 'a.log'\n")
    r = subprocess.run([sys.executable, "-m", "corral", "check-config", "--no-check", str(p)],
                       capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert (r.returncode, r.stderr) == (1, (
        f"corral: invalid config: {p}: agents.a: log_file 'a.log' is not an absolute path "
        "(or /dev/stdout, /dev/stderr)\n"))


def test_a_tenants_caller_may_not_name_a_log_file() -> None:
    """The daemon appends to it as root: a file anywhere, its lines the agent's."""
    spec = AgentSpec(name="a", command="true", tenant="t", cwd="/srv/t",
                     log_file="/etc/cron.d/x")
    assert refusal(spec, "t", TenantSpec(), "/srv/t") == (
        "log_file", "\"/etc/cron.d/x\" differs from tenant t's (none: its log directory)")
    spec.log_file = None
    assert refusal(spec, "t", TenantSpec(), "/srv/t") is None
