"""A user that is a reference, carried rather than refused (issue 89): supervisord's
`user=%(ENV_X)s` (laravel sail's) and a start script's `user=$X` (ai-dock's) are imported
as `user = "${X}"`, never the importing shell's value (issue 88), and read from the
daemon's environment where it starts the program, as supervisord reads its own: the
start is refused, saying why, while it is unset. A systemd template unit (syncthing's
`User=%i`) is imported with `--instance NAME`, as `systemctl enable UNIT@NAME` starts it."""

from __future__ import annotations

import os
import pwd
import textwrap
import tomllib
from pathlib import Path

import pytest

from .daemon_harness import running_daemon, shared_tmpdir
from .test_daemon_cli import wait_until
from .test_import import ENV, corral

SAIL = ("[supervisord]\nnodaemon=true\nuser=root\n\n[program:php]\n"
        "command=/usr/bin/php -d variables_order=EGPCS /var/www/html/artisan serve "
        "--host=0.0.0.0 --port=80\nuser=%(ENV_SUPERVISOR_PHP_USER)s\n"
        "environment=LARAVEL_SAIL=\"1\"\nstdout_logfile=/dev/stdout\n"
        "stdout_logfile_maxbytes=0\nstderr_logfile=/dev/stderr\nstderr_logfile_maxbytes=0\n")
COMFY = ("[program:comfyui]\nuser=$USER_NAME\nenvironment=PROC_NAME=\"%(program_name)s\"\n"
         "command=/opt/ai-dock/bin/supervisor-comfyui.sh\nautostart=true\n"
         "startsecs=0\n")
SYNCTHING = ("[Unit]\nDescription=Syncthing - Open Source Continuous File Synchronization "
             "for %I\n[Service]\nUser=%i\nExecStart=/usr/bin/syncthing serve --no-browser "
             "--no-restart --logflags=0\nRestart=on-failure\n[Install]\n"
             "WantedBy=multi-user.target\n")
SAID = "read from the daemon's environment as the program starts (as supervisord reads " \
       "it from its own): its start is refused while unset"


def test_sails_env_user_is_carried_as_a_reference_not_the_shells_value(
        tmp_path: Path) -> None:
    (tmp_path / "supervisord.conf").write_text(SAIL)
    r = corral("import", "supervisord.conf", cwd=tmp_path,
               env={**ENV, "SUPERVISOR_PHP_USER": "sail-from-the-shell"})
    assert r.returncode == 0, r.stderr
    assert "sail-from-the-shell" not in r.stdout
    assert tomllib.loads(r.stdout)["agents"]["php"]["user"] == "${SUPERVISOR_PHP_USER}"
    assert ("corral import: supervisord.conf: [program:php]: user: "
            f"%(ENV_SUPERVISOR_PHP_USER)s: user = \"${{SUPERVISOR_PHP_USER}}\", "
            f"SUPERVISOR_PHP_USER {SAID}") in r.stderr.splitlines()


def test_a_start_scripts_dollar_user_is_carried_as_a_reference(tmp_path: Path) -> None:
    (tmp_path / "comfyui.conf").write_text(COMFY)
    r = corral("import", "comfyui.conf", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    agent = tomllib.loads(r.stdout)["agents"]["comfyui"]
    assert (agent["user"], agent["env"]) == ("${USER_NAME}", {"PROC_NAME": "comfyui"})
    assert r.stderr.splitlines()[0] == (
        f"corral import: comfyui.conf: [program:comfyui]: user: $USER_NAME: user = "
        f"\"${{USER_NAME}}\", USER_NAME {SAID}")


@pytest.mark.parametrize(("user", "said"), [
    ("%(ENV_A)s %(ENV_B)s", "[program:w]: user: '${A} ${B}' is not a user's name or "
                            "number: refused: without its user the program would run as "
                            "root"),
    ("%(nope)s", "[program:w]: user: '%(nope)s' cannot be resolved ('%(nope)s' names "
                 "'nope' which cannot be expanded (names there: ENV_*, group_name, here, "
                 "host_node_name, numprocs, process_num, program_name)): refused: without "
                 "its user the program would run as root"),
])
def test_a_user_that_is_no_name_even_so_is_refused(tmp_path: Path, user: str,
                                                   said: str) -> None:
    (tmp_path / "s.conf").write_text(f"[program:w]\ncommand=sleep 9\nuser={user}\n")
    r = corral("import", "s.conf", cwd=tmp_path)
    assert (r.returncode, r.stdout, r.stderr) == (1, "", f"corral: s.conf: {said}\n")


def test_a_template_unit_is_imported_as_its_instance(tmp_path: Path) -> None:
    (tmp_path / "syncthing@.service").write_text(SYNCTHING)
    r = corral("import", "--instance", "alice", "syncthing@.service", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert tomllib.loads(r.stdout)["agents"] == {"syncthing-alice": {
        "command": "/usr/bin/syncthing serve --no-browser --no-restart --logflags=0",
        "protocol": "none", "user": "alice", "restart": "on-failure"}}
    assert r.stderr.splitlines() == [
        "corral import: syncthing@.service: [Service]: %i: a template unit: instance alice "
        "(%i), as `systemctl enable syncthing@alice` starts it",
        "corral import: syncthing@.service: [Service]: name: 'syncthing@alice' is agent "
        "syncthing-alice (corral's names: 1-64 of [A-Za-z0-9_-], starting with a letter or "
        "digit, unique)"]
    # without it: refused, saying how to give it
    r = corral("import", "syncthing@.service", cwd=tmp_path)
    assert (r.returncode, r.stdout, r.stderr) == (1, "", (
        "corral: syncthing@.service: [Service]: User: '%i' is nothing where corral import "
        "runs (a template's instance or a host's specifier is not known to it): refused: "
        "without its user the program would run as root (give the instance: --instance "
        "NAME, as `systemctl enable syncthing@NAME` does)\n"))
    # and on a unit that is no template, said not read
    (tmp_path / "w.service").write_text("[Service]\nExecStart=/usr/bin/w\n")
    r = corral("import", "--instance", "alice", "w.service", cwd=tmp_path)
    assert (r.returncode, r.stderr) == (0, "corral import: w.service: [Service]: "
                                           "--instance: alice: not read: w is not a "
                                           "template unit (NAME@.service)\n")


def test_the_daemon_reads_the_user_from_its_environment_at_start(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Unset: the start refused, saying which variable; set: the program runs as it."""
    me = pwd.getpwuid(os.geteuid()).pw_name
    monkeypatch.delenv("CORRAL_TEST_APP_USER", raising=False)
    agents = textwrap.dedent("""
        [agents.app]
        command = ["sh", "-c", "echo uid=$(id -u); exec sleep 1000"]
        protocol = "none"
        user = "${CORRAL_TEST_APP_USER}"
        max_restarts = 0
    """)
    with running_daemon(shared_tmpdir(), agents) as d:
        wait_until(lambda: d.status()["app#0"]["state"] == "failed", what="app failed")
        assert ("spawn failed: user ${CORRAL_TEST_APP_USER}: CORRAL_TEST_APP_USER not set "
                "in the daemon's environment: refused: without its user the program would "
                "run as root") in d.cli("logs", "app").stdout
    monkeypatch.setenv("CORRAL_TEST_APP_USER", me)
    with running_daemon(shared_tmpdir(), agents) as d:
        wait_until(lambda: f"stdout: uid={os.geteuid()}" in d.cli("logs", "app").stdout,
                   what="app started as the user named")


def test_an_environment_value_naming_env_x_is_read_where_the_program_starts(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`%(ENV_X)s` in an environment= value is not the importing shell's value (issue
    88): the value is set by `sh -c` as the program starts, X read from the daemon's
    environment, as supervisord reads its own."""
    (tmp_path / "s.conf").write_text(
        "[program:p]\ncommand=/usr/bin/env\n"
        "environment=DATA=\"%(ENV_CORRAL_TEST_DIR)s/da`ta\",PLAIN=1\nstartsecs=0\n")
    r = corral("import", "s.conf", cwd=tmp_path,
               env={**ENV, "CORRAL_TEST_DIR": "from-the-shell"})
    assert r.returncode == 0, r.stderr
    assert "from-the-shell" not in r.stdout
    agent = tomllib.loads(r.stdout)["agents"]["p"]
    assert (agent["command"], agent["env"]) == (
        ["sh", "-c", 'exec env "DATA=${CORRAL_TEST_DIR}/da\\`ta" "$0" "$@"', "/usr/bin/env"],
        {"PLAIN": "1"})
    assert r.stderr.splitlines() == [
        "corral import: s.conf: [program:p]: environment: DATA=%(ENV_CORRAL_TEST_DIR)s/da`ta: "
        "set as the program starts, by `sh -c`, CORRAL_TEST_DIR read from the daemon's "
        "environment then (as supervisord reads it from its own), not where corral import "
        "ran"]
    monkeypatch.setenv("CORRAL_TEST_DIR", "/srv/app")
    tables = r.stdout.split("\n", 1)[1]
    with running_daemon(shared_tmpdir(), tables) as d:
        wait_until(lambda: "stdout: DATA=/srv/app/da`ta" in d.cli("logs", "p").stdout,
                   what="the value read as the program started")
        assert "stdout: PLAIN=1" in d.cli("logs", "p").stdout


def test_a_directory_naming_env_x_is_gone_to_where_the_program_starts(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "s.conf").write_text("[program:p]\ncommand=/bin/pwd\n"
                                     "directory=%(ENV_CORRAL_TEST_DIR)s/app\nstartsecs=0\n"
                                     "autorestart=false\n")
    r = corral("import", "s.conf", cwd=tmp_path,
               env={**ENV, "CORRAL_TEST_DIR": "from-the-shell"})
    assert r.returncode == 0, r.stderr
    agent = tomllib.loads(r.stdout)["agents"]["p"]
    assert ("cwd" not in agent, agent["command"]) == (True, [
        "sh", "-c", "cd \"${CORRAL_TEST_DIR:?not set in the daemon's environment}/app\" && "
                    'exec "$0" "$@"', "/bin/pwd"])
    assert r.stderr == (
        "corral import: s.conf: [program:p]: directory: %(ENV_CORRAL_TEST_DIR)s/app: gone to "
        "as the program starts, by `sh -c`, CORRAL_TEST_DIR read from the daemon's "
        "environment then (as supervisord reads it from its own), not where corral import "
        "ran\n")
    tables = r.stdout.split("\n", 1)[1]
    (tmp_path / "app").mkdir()
    monkeypatch.setenv("CORRAL_TEST_DIR", str(tmp_path))
    with running_daemon(shared_tmpdir(), tables) as d:
        wait_until(lambda: f"stdout: {tmp_path / 'app'}" in d.cli("logs", "p").stdout,
                   what="the directory gone to as the program started")
    monkeypatch.delenv("CORRAL_TEST_DIR")
    with running_daemon(shared_tmpdir(), tables) as d:
        wait_until(lambda: "CORRAL_TEST_DIR: not set in the daemon's environment" in
                   d.cli("logs", "p").stdout, what="the start refused, saying why")
