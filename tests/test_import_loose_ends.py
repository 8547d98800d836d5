"""`corral import`'s loose ends (issue 78): what supervisord accepts is read, and what
was dropped or merged without a word is said: an environment naming a $VARIABLE, a
process_name of one process, [supervisord]'s own files, per-process logs merged into
one, PM2's stop_exit_codes of an app never restarted, a relative out_file."""

from __future__ import annotations

import json
from pathlib import Path

from .test_import_corpus import imported


def test_an_environment_naming_a_variable_is_read_as_supervisord_accepts_it(
        tmp_path: Path) -> None:
    agents, said = imported(tmp_path, {"s.conf": (
        b'[program:w]\ncommand=sleep 9\nstartsecs=0\n'
        b'environment=PROC_NAME="%(program_name)s",USER=$USER_NAME\n')})
    assert agents["w"]["env"] == {"PROC_NAME": "w", "USER": "$USER_NAME"}
    assert said == [
        "s.conf: [program:w]: environment: USER=$USER_NAME: taken as written (supervisord "
        "expands no $VARIABLE here, nor does corral's env: %(ENV_USER_NAME)s is read from "
        "the environment)"]


def test_a_process_name_of_one_process_and_supervisords_own_files_are_said(
        tmp_path: Path) -> None:
    agents, said = imported(tmp_path, {"s.conf": (
        b"[supervisord]\nlogfile=%(ENV_HOME)s/supervisord.log\npidfile=/run/s.pid\n"
        b"childlogdir=/var/log/s\nloglevel=debug\nnodaemon=true\n"
        b"[program:w]\ncommand=sleep 9\nstartsecs=0\nnumprocs=%(ENV_NOPE_N)s\n"
        b"process_name=%(program_name)s_%(process_num)02d\n")})
    assert list(agents) == ["w"] and "replicas" not in agents["w"]
    log = "not carried: supervisord's own log; corral's daemon logs to its stderr (the " \
          "journal under systemd)"
    assert said == [
        f"s.conf: [supervisord]: logfile: '%(ENV_HOME)s/supervisord.log': {log}",
        "s.conf: [supervisord]: pidfile: '/run/s.pid': not carried: corral writes no pid "
        "file of its own (systemd, or `corral status`, knows its pid)",
        "s.conf: [supervisord]: childlogdir: '/var/log/s': not carried: programs' logs "
        "(AUTO) are in corral's [supervisor] log_dir",
        f"s.conf: [supervisord]: loglevel: 'debug': {log}",
        "s.conf: [program:w]: numprocs: '%(ENV_NOPE_N)s': not carried: $NOPE_N not set "
        "where corral import ran (supervisord reads it as it starts)",
        "s.conf: [program:w]: process_name: '%(program_name)s_%(process_num)02d': not "
        "carried: the agent is named after the program (its replicas AGENT#0.., the "
        "number is $CORRAL_REPLICA)"]


def test_per_process_logs_merged_into_one_file_are_said(tmp_path: Path) -> None:
    agents, said = imported(tmp_path, {"s.conf": (
        b"[program:w]\ncommand=sleep 9\nstartsecs=0\nnumprocs=2\n"
        b"process_name=%(program_name)s_%(process_num)02d\n"
        b"stdout_logfile=/var/log/w_%(process_num)02d.log\n")})
    assert agents["w"]["log_file"] == "/var/log/w_00.log"
    assert said[-1] == (
        "s.conf: [program:w]: stdout_logfile: '/var/log/w_%(process_num)02d.log': one file "
        "for every replica, /var/log/w_00.log (corral's log_file is the agent's, each line "
        "tagged with its replica), not one a process")


def test_pm2s_exit_codes_of_an_app_never_restarted_and_a_relative_out_file_are_said(
        tmp_path: Path) -> None:
    agents, said = imported(tmp_path, {"ecosystem.json": json.dumps({"apps": [
        {"name": "job", "script": "/srv/job.sh", "autorestart": False,
         "stop_exit_codes": [0, 3]},
        {"name": "api", "script": "/srv/api.js", "cwd": "api",
         "out_file": "logs/out.log", "env_file": ".env"}]}).encode()})
    root = tmp_path.resolve()
    assert agents["job"]["restart"] == "never" and "exit_codes" not in agents["job"]
    assert agents["api"]["log_file"] == f"{root}/api/logs/out.log"
    assert agents["api"]["env_file"] == [f"{root}/api/.env"]
    assert said == [
        "ecosystem.json: apps[0] (job): stop_exit_codes: [0, 3]: not carried: autorestart "
        "is false, so it is never restarted, whatever its status",
        f'ecosystem.json: apps[1] (api): out_file: "logs/out.log": log_file = '
        f'"{root}/api/logs/out.log" (resolved from the app\'s directory, as PM2 does)']
