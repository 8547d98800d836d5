"""`corral mcp serve` with a file or /dev/null for its stdin and stdout (a host gives
pipes; a script or a smoke test may not): uvloop's pipe transports take neither, and the
bridge ended by SIGABRT before any request was read."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from .daemon_harness import Daemon, corral_popen, running_daemon, shared_tmpdir


@pytest.fixture(scope="module")
def daemon() -> Iterator[Daemon]:
    with running_daemon(shared_tmpdir(), "") as d:
        yield d


def bridge(d: Daemon, stdin: Path | str, stdout: Path | str) -> int:
    with open(stdin, "rb") as into, open(stdout, "wb") as out:
        proc = corral_popen(["--socket", str(d.sock), "mcp", "serve"], stdin=into,
                            stdout=out, stderr=-1)
        _, err = proc.communicate(timeout=60)
    assert not err, err
    assert proc.returncode is not None
    return proc.returncode


def test_a_file_of_requests_is_answered_each_into_a_file(daemon: Daemon,
                                                         tmp_path: Path) -> None:
    requests = tmp_path / "requests.jsonl"
    requests.write_text("".join(json.dumps({"jsonrpc": "2.0", **m}) + "\n" for m in (
        {"id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {},
            "clientInfo": {"name": "script", "version": "1"}}},
        {"method": "notifications/initialized"},
        {"id": 2, "method": "ping"})))
    answers = tmp_path / "answers.jsonl"
    assert bridge(daemon, requests, answers) == 0
    said = {m["id"]: m for m in map(json.loads, answers.read_text().splitlines())
            if "id" in m}
    assert said[1]["result"]["protocolVersion"] == "2025-11-25", said
    assert said[2]["result"] == {}, said


def test_dev_null_for_stdin_and_stdout_ends_at_once_and_cleanly(daemon: Daemon) -> None:
    assert bridge(daemon, os.devnull, os.devnull) == 0
