"""What a new user trips on at the CLI (issue 89): a pretty-printed input, a waited-for
run's exit status, against a real daemon; and the same input over HTTP."""

from __future__ import annotations

import json
import shutil
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from .daemon_harness import Daemon, hello, shared_tmpdir, sleeper
from .test_http_api import serving

PRETTY = json.dumps({"name": "pat", "note": "two\nlines"}, indent=2)  # several lines

FAILING = textwrap.dedent("""
    [workflows.broken]
    [[workflows.broken.steps]]
    name = "boom"
    agent = "bad"
    input = { do = "fail" }
""")


@pytest.fixture(scope="module")
def daemon() -> Iterator[Daemon]:
    tmp = shared_tmpdir()
    d = Daemon(tmp, hello("hello") + sleeper("bad") + FAILING)
    try:
        d.start()
        yield d
        assert d.stop() == 0
    finally:
        d.close()
        shutil.rmtree(tmp, ignore_errors=True)


def test_a_pretty_printed_input_is_taken_from_a_file_stdin_and_by_submit(
        daemon: Daemon) -> None:
    path = daemon.dir / "in.json"
    path.write_text(PRETTY + "\n")
    for args, given in ((("--input", f"@{path}"), None), (("--input", "-"), PRETTY)):
        r = daemon.cli("run", "hello", *args, "--json", input=given)
        assert (r.returncode, r.stderr) == (0, ""), args
        assert json.loads(r.stdout)["output"]["greeting"] == "hello, pat", args
    r = daemon.cli("submit", "hello", "--input", f"@{path}")
    assert (r.returncode, r.stderr) == (0, "")
    r = daemon.cli("task", r.stdout.strip(), "--wait", "--json")
    assert json.loads(r.stdout)["output"] == {"greeting": "hello, pat", "agent": "hello",
                                              "replica": 0}, r.stdout + r.stderr


def test_run_status_wait_exits_1_for_a_failed_run(daemon: Daemon) -> None:
    run_id = daemon.cli("workflows", "run", "broken").stdout.strip()
    r = daemon.cli("run-status", run_id, "--wait", "60")
    assert r.returncode == 1, r.stdout + r.stderr
    assert r.stdout.startswith(f"run {run_id}  workflow broken  failed  "), r.stdout
    # the JSON carries the status and exits 0, as before; unwaited the tree exits 0 too
    assert daemon.json("run-status", run_id, "--wait", "60")["status"] == "failed"
    assert daemon.cli("run-status", run_id).returncode == 0
    r = daemon.cli("workflows", "run", "broken", "--wait", "60")
    assert r.returncode == 1 and " failed " in r.stdout.splitlines()[0], r.stdout


@pytest.mark.deadline(60)
async def test_a_pretty_printed_body_reaches_the_worker_over_http(tmp_path: Path) -> None:
    async with serving(tmp_path, hello("web")) as api:
        await api.token("runner", "tasks:run", "tasks:read")
        body = json.dumps({"agent": "web", "input": json.loads(PRETTY)}, indent=2)
        status, got, _ = await api.ask("POST", "/tasks?wait=30", "runner",
                                       raw=body.encode())
        assert (status, got["status"], got["output"]["greeting"]) == (
            200, "succeeded", "hello, pat"), got
