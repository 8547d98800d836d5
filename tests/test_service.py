"""corral under a real systemd (tests/nsystemd.py), as an operator installs it: the
journal gets the daemon's own lines and every agent line with fields to filter on, the
configured group reaches the socket without --socket, and the unit's sandbox scores at
most 4.0 by `systemd-analyze security` while agents still run in it."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import textwrap
import time
from typing import Any

import pytest

from corral.cli.install import quoted

from .conftest import ROOT
from .nsystemd import NSystemd, install_corral, skip_reason

# the venv's interpreter on corral's module, not its `corral` script: a checkout under a
# path with a space gets a script that is a /bin/sh trampoline, which the namespace's sh
# ran from a working directory it could not see (getcwd() failed)
CLI = ("/opt/corral/bin/python", "-m", "corral")
TALK = textwrap.dedent("""
    import sys
    print("hello from talk", file=sys.stderr, flush=True)
    print("<4>careful now", file=sys.stderr, flush=True)
    from corral.worker import run
    run(lambda task, ctx: task)
""")
CONFIG = textwrap.dedent("""
    [supervisor]
    group = "corral"
    dynamic_uids = []  # python3 is under root's 0700 home here: its agents run as root

    [agents.talk]
    command = ["python3", "/srv/talk.py"]
""")


def test_the_unit_is_sandboxed_to_an_exposure_of_at_most_4() -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    r = subprocess.run([analyze, "security", "--offline=yes",
                        str(ROOT / "systemd" / "corral.service")],
                       capture_output=True, text=True)
    m = re.search(r"Overall exposure level for corral\.service: (\d+\.\d)", r.stdout)
    assert m, r.stdout + r.stderr
    assert float(m.group(1)) <= 4.0, r.stdout


def _journal(nsd: NSystemd, *match: str) -> list[dict[str, Any]]:
    out = nsd.run("journalctl", "-u", "corral", "-o", "json", "--no-pager", *match,
                  check=False).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def _wait_journal(nsd: NSystemd, message: str, *match: str) -> dict[str, Any]:
    deadline = time.monotonic() + 20
    while True:
        for entry in _journal(nsd, *match):
            if entry.get("MESSAGE") == message:
                return entry
        if time.monotonic() > deadline:
            raise AssertionError(f"{message!r} not in the journal ({match}):\n" +
                                 nsd.run("journalctl", "-u", "corral", "--no-pager",
                                         check=False).stdout[-3000:])
        time.sleep(0.1)


@pytest.mark.timeout(120)
@pytest.mark.skipif(skip_reason() is not None, reason=str(skip_reason()))
def test_under_systemd_the_journal_has_every_line_and_the_group_reaches_the_socket() -> None:
    n = NSystemd(files={"etc/corral/corral.toml": CONFIG, "srv/talk.py": TALK})
    install_corral(n, ROOT)
    with n as nsd:
        nsd.run("groupadd", "corral")
        nsd.run("useradd", "-M", "-G", "corral", "member")
        nsd.run("useradd", "-M", "stranger")
        nsd.run("systemctl", "start", "corral")  # Type=notify: returns after READY=1
        # the group reaches the socket, found without --socket
        as_member = nsd.run("setpriv", "--reuid=member", "--regid=member", "--init-groups",
                            *CLI, "status", "--json", check=False)
        assert as_member.returncode == 0, as_member.stderr
        talk = json.loads(as_member.stdout)["agents"][0]
        assert (talk["name"], talk["state"]) == ("talk", "ready")
        as_stranger = nsd.run("setpriv", "--reuid=stranger", "--regid=stranger",
                              "--init-groups", *CLI, "status", check=False)
        assert as_stranger.returncode == 3
        assert "/run/corral/corral.sock: permission denied" in as_stranger.stderr
        mode = nsd.run("stat", "-c", "%A %U %G", "/run/corral", "/run/corral/corral.sock")
        assert mode.stdout.splitlines() == ["drwxr-x--- root corral", "srw-rw---- root corral"]
        # the agent's lines, with fields to filter on and priority from the line
        hello = _wait_journal(nsd, "hello from talk", "CORRAL_AGENT=talk")
        assert (hello["CORRAL_REPLICA"], hello["CORRAL_STREAM"], hello["PRIORITY"],
                hello["OBJECT_PID"], hello["SYSLOG_IDENTIFIER"]) == (
            "0", "stderr", "6", str(talk["pid"]), "corral")
        careful = _wait_journal(nsd, "careful now", "CORRAL_AGENT=talk")
        assert careful["PRIORITY"] == "4"
        ready = _wait_journal(nsd, "starting -> ready: initialized", "CORRAL_AGENT=talk",
                              "CORRAL_STREAM=event")
        assert ready["PRIORITY"] == "5"
        # the daemon's own lines: its stderr, which the journal captures
        own = _wait_journal(nsd, "ready: 1 agent, 1/1 replica serving, 0 failed")
        assert own["PRIORITY"] == "6" and "CORRAL_AGENT" not in own
        # and agents still run their programs in the sandbox: a task round trip
        r = nsd.run(*CLI, "run", "talk", "--input", '{"x": 1}', check=False)
        assert (r.returncode, json.loads(r.stdout)) == (0, {"x": 1}), r.stderr
        nsd.run("systemctl", "stop", "corral")


def test_systemd_install_writes_the_unit_and_a_starter_config_from_the_package(
        tmp_path: Any) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    units, config = tmp_path / "units", tmp_path / "etc" / "corral.toml"
    corral = [str(ROOT / ".venv" / "bin" / "corral")]

    def install(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*corral, "systemd", "install", "--unit-dir", str(units),
                               "--config", str(config), *extra],
                              capture_output=True, text=True, env=env)

    # --dry-run: what would be written, the unit's text among it, and nothing written
    r = install("--dry-run")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == f"would write {units}/corral.service:"
    assert lines[-1] == f"would write {config} (a starter config)"
    assert (f"    ExecStart={quoted(f'{ROOT}/.venv/bin/corral')} daemon --config "
            f"{quoted(str(config))}") in lines
    assert not units.exists() and not config.exists()
    r = install()
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [
        f"wrote {units}/corral.service", f"wrote {config}",
        f"next: {units} is not where systemd reads units: copy corral.service to "
        f"/etc/systemd/system/ (or link it: systemctl link {units}/corral.service), then "
        "systemctl daemon-reload && systemctl enable --now corral"]
    unit = (units / "corral.service").read_text()
    bindir = ROOT / ".venv" / "bin"
    # (quoted where a path has a space: a checkout there is installed all the same)
    assert (f"ExecStart={quoted(f'{bindir}/corral')} daemon --config {quoted(str(config))}\n"
            in unit)
    assert (f"Environment=PATH={bindir}:" in unit if " " not in str(bindir)
            else f'Environment="PATH={bindir}:' in unit)
    analyze = shutil.which("systemd-analyze")
    if analyze is not None:
        v = subprocess.run([analyze, "verify", str(units / "corral.service")],
                           capture_output=True, text=True)
        assert (v.returncode, v.stderr) == (0, ""), v.stderr
    # (its agent runs as root here: python3 and this tmp_path are out of a dynamic uid's
    # reach, which check-config says: tests/test_dynamic_users.py)
    starter = config.read_text()
    config.write_text(starter.replace("[supervisor]\n", "[supervisor]\ndynamic_uids = []\n", 1))
    check = subprocess.run([*corral, "check-config", str(config)], capture_output=True,
                           text=True, env=env)
    assert check.returncode == 0, check.stderr
    config.write_text(starter)
    # again: the config is kept, the same unit rewritten; a changed unit needs --force
    assert install().stdout.splitlines()[1] == f"kept {config} (it exists)"
    (units / "corral.service").write_text(unit + "# local change\n")
    r = install()
    assert (r.returncode, r.stderr) == (1, f"corral: {units}/corral.service exists and "
                                           "differs (--force to replace it)\n")
    assert install("--force").returncode == 0
    assert (units / "corral.service").read_text() == unit
