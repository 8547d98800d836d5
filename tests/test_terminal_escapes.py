"""The terminal is the operator's (issue 52, item 3): what an agent writes — its log
lines, its task's output, error and progress, its spans' errors — reaches `corral logs`,
`run`, `task` and `trace` with its control characters and escape sequences made visible,
as corral's own log lines are (text.one_line's escapes, the newline kept), whether the
output is a terminal or, as here, a pipe; `--raw` passes them as they are."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import textwrap
from collections.abc import Iterator

import pytest

from corral.text import one_line, visible

from .conftest import ROOT
from .daemon_harness import PY, Daemon, corral_run, shared_tmpdir
from .test_daemon_cli import wait_until

# an OSC 52 write to the clipboard, a new window title, a CR that redraws the line as
# another agent's, a CSI in one C1 character that clears the screen
EVIL = ("\x1b]52;c;cHduZWQ=\x07" "\x1b]0;pwned\x07"
        "ok\r2026-01-01T00:00:00.000Z other#0[1] stderr: fine" "\x9b2J")
SHOWN = ("\\x1b]52;c;cHduZWQ=\\x07" "\\x1b]0;pwned\\x07"
         "ok\\r2026-01-01T00:00:00.000Z other#0[1] stderr: fine" "\\x9b2J")

AGENT = textwrap.dedent(f"""
    import sys
    from corral.worker import run

    EVIL = {EVIL!r}

    def handle(task, ctx):
        sys.stderr.write("said " + EVIL + "\\n")
        sys.stderr.flush()
        if task == "fail":
            raise RuntimeError(EVIL)
        ctx.progress(1, 2, EVIL)
        return EVIL

    run(handle)
""")


@pytest.fixture
def daemon() -> Iterator[Daemon]:
    tmp = shared_tmpdir()
    script = tmp / "evil.py"
    script.write_text(AGENT)
    d = Daemon(tmp, textwrap.dedent(f"""
        [agents.evil]
        command = ["{PY}", "{script}"]
        env = {{ PYTHONPATH = "{ROOT}" }}
        stop_timeout = 5.0

        [tracing]
        export_interval = 0.05
    """))
    try:
        d.start()
        yield d
        assert d.stop() == 0
    finally:
        d.close()
        shutil.rmtree(tmp, ignore_errors=True)


def raw_cli(d: Daemon, *args: str) -> subprocess.CompletedProcess[bytes]:
    """The CLI's bytes (Daemon.cli's text mode would read a CR as a newline)."""
    return corral_run(["--socket", str(d.sock), *args], timeout=30,
                      env={**os.environ, "PYTHONPATH": str(ROOT)}, text=False)


def test_the_escaped_form_is_one_lines_but_for_the_newline() -> None:
    assert visible(EVIL) == SHOWN
    assert one_line(EVIL + "\n") == SHOWN + "\\n"
    assert visible("a\nb\tc\x7f") == "a\nb\\tc\\x7f"


def test_an_agents_sequences_reach_the_cli_visible_and_raw_as_they_are(
        daemon: Daemon) -> None:
    ok = daemon.cli("run", "evil", "--input", '"ok"')
    assert ok.returncode == 0, ok.stderr
    # the output is JSON: its escapes are JSON's; the progress note is corral's line
    assert ok.stdout == json.dumps(EVIL, indent=2) + "\n"
    assert ok.stderr == f"progress: 1/2 {SHOWN}\n"

    failed = daemon.cli("run", "evil", "--input", '"fail"', "--json")
    task_id = json.loads(failed.stdout)["task_id"]
    failed = daemon.cli("run", "evil", "--input", '"fail"')
    assert failed.returncode == 1
    assert failed.stderr.startswith("corral: task ")
    assert failed.stderr.endswith(f" failed: RuntimeError: {SHOWN}\n")
    assert "\x1b" not in failed.stderr and "\r" not in failed.stderr

    ok_id = json.loads(daemon.cli("run", "evil", "--input", '"ok"', "--json").stdout)[
        "task_id"]
    shown = daemon.cli("task", ok_id)
    assert shown.returncode == 0, shown.stderr
    assert f"\noutput: {SHOWN}\n" in shown.stdout
    shown = daemon.cli("task", task_id)
    assert f"(RuntimeError: {SHOWN})" in shown.stdout
    assert "\x1b" not in shown.stdout and "\r" not in shown.stdout

    logs = daemon.cli("logs", "evil", "--stream", "stderr")
    said = [line for line in logs.stdout.splitlines() if " stderr: said " in line]
    assert said and all(line.endswith(f" stderr: said {SHOWN}") for line in said), logs
    assert "\x1b" not in logs.stdout and "\r" not in logs.stdout and "\x9b" not in logs.stdout

    as_json = daemon.cli("logs", "evil", "--stream", "stderr", "--json")
    assert "said " + EVIL in [json.loads(line)["text"] for line in as_json.stdout.splitlines()]

    # the trace: the failed attempt's span says the agent's error, escaped
    trace = wait_until(lambda: (t := daemon.cli("trace", task_id)).returncode == 0 and t,
                       what="the failed task's trace")
    assert f"RuntimeError: {SHOWN}" in trace.stdout
    assert "\x1b" not in trace.stdout and "\x9b" not in trace.stdout

    # --raw: the bytes, on whichever command it is given, and before the command too
    evil = EVIL.encode()
    raw = raw_cli(daemon, "logs", "evil", "--stream", "stderr", "--raw")
    assert b" stderr: said " + evil + b"\n" in raw.stdout
    raw = raw_cli(daemon, "--raw", "task", ok_id)
    assert b"\noutput: " + evil + b"\n" in raw.stdout
    raw = raw_cli(daemon, "run", "evil", "--input", '"fail"', "--raw")
    assert raw.stderr.endswith(b" failed: RuntimeError: " + evil + b"\n")
    raw = raw_cli(daemon, "trace", task_id, "--raw")
    assert b"RuntimeError: " + evil in raw.stdout
    # and without it, the same bytes escaped
    shown_bytes = raw_cli(daemon, "logs", "evil", "--stream", "stderr").stdout
    assert b" stderr: said " + SHOWN.encode() + b"\n" in shown_bytes
    assert not any(c in shown_bytes for c in (b"\x1b", b"\r", b"\x07", "\x9b".encode()))
