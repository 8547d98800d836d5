"""check-config says every error of a file at once, several in one table among them, and
for another supervisor's key names corral's instead of a spelling guess (issue 57)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from .daemon_harness import corral_run

ROOT = Path(__file__).resolve().parent.parent


def check(path: Path) -> subprocess.CompletedProcess[str]:
    return corral_run(["check-config", "--no-check", str(path)],
                      env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_five_errors_in_one_table_and_its_subtable_are_five_lines(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text("[agents.a]\ncommand = 'true'\nreplica = 2\nmax_restarts = -1\n"
                 "restart = 'sometimes'\n[agents.a.limits]\nrss = 3\nmemory_mb = 'x'\n")
    r = check(p)
    said = f"corral: invalid config: {p}: "
    assert (r.returncode, r.stdout, r.stderr.splitlines()) == (1, "", [
        f"{said}agents.a: Object contains unknown field `replica` (did you mean "
        "`replicas`?)",
        f"{said}agents.a.max_restarts: Expected `int` >= 0",
        f"{said}agents.a.restart: Invalid enum value 'sometimes' (valid: 'always', "
        "'never', 'on-failure')",
        f"{said}agents.a.limits: Object contains unknown field `rss` (did you mean "
        "`rss_mb`?)",
        f"{said}agents.a.limits.memory_mb: Expected `int`, got `str`",
        f"corral: 5 errors in {p}"])


def test_a_table_missing_its_command_says_so_beside_its_other_errors(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text("[agents.a]\nreplicaz = 2\n[supervisor]\nlog_backups = -1\nlog_levl = 'x'\n")
    r = check(p)
    said = f"corral: invalid config: {p}: "
    assert r.stderr.splitlines() == [
        f"{said}supervisor.log_backups: Expected `int` >= 0",
        f"{said}supervisor: Object contains unknown field `log_levl` (did you mean "
        "`log_level`?)",
        f"{said}agents.a: Object contains unknown field `replicaz` (did you mean "
        "`replicas`?)",
        f"{said}agents.a: Object missing required field `command`",
        f"corral: 4 errors in {p}"]


def test_another_supervisors_key_is_named_by_corrals_not_guessed(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    # `autorestart` is one edit from `autostart`, which means something else
    p.write_text("[agents.a]\ncommand = 'true'\nautorestart = true\ndirectory = '/'\n"
                 "ExecStart = 'x'\n[supervisor]\nautorestart = true\n")
    r = check(p)
    said = f"corral: invalid config: {p}: "
    assert r.stderr.splitlines() == [
        # no agent key here: a guess would name one that does something else
        f"{said}supervisor: Object contains unknown field `autorestart`",
        f"{said}agents.a: Object contains unknown field `autorestart` (`autorestart` is "
        "supervisord's and PM2's name: corral's is `restart`)",
        f"{said}agents.a: Object contains unknown field `directory` (`directory` is "
        "supervisord's name: corral's is `cwd`)",
        f"{said}agents.a: Object contains unknown field `ExecStart` (`ExecStart` is "
        "systemd's name: corral's is `command`)",
        f"corral: 4 errors in {p}"]


def test_a_key_corral_renamed_is_named_by_its_new_name(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    # decision 1089 renamed them; where the table has no such key, no hint is made up
    p.write_text("[supervisor]\ntasks_kept = 10\nrevisions_kept_mb = 2\n"
                 "[cluster]\ntasks_kept_for = 60\n[agents.a]\ncommand = 'true'\n"
                 "tasks_kept = 3\n")
    r = check(p)
    said = f"corral: invalid config: {p}: "
    assert (r.returncode, r.stderr.splitlines()) == (1, [
        f"{said}supervisor: Object contains unknown field `tasks_kept` (renamed "
        "`keep_tasks` by decision 1089)",
        f"{said}supervisor: Object contains unknown field `revisions_kept_mb` (renamed "
        "`keep_revisions_mb` by decision 1089)",
        f"{said}cluster: Object contains unknown field `tasks_kept_for` (renamed "
        "`keep_tasks_for` by decision 1089)",
        f"{said}agents.a: Object contains unknown field `tasks_kept`",
        f"corral: 4 errors in {p}"])
