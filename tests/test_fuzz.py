"""Fuzz: thousands of random and mutated JSON-RPC lines, from a client to the control
socket and from a worker to corral, against a real daemon. The daemon must stay up, answer
every well-formed request, keep its healthy agents, and stay bounded in memory.

Hypothesis draws the messages (pinned in pyproject.toml; docs/decisions.md says why); the
examples are derandomized so the suite is repeatable, and bounded so the whole file runs
in well under a minute.
"""

from __future__ import annotations

import json
import shutil
import socket
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from corral.cli.client import Disconnection
from corral.methods import GOING_AWAY, REGISTRY

from .daemon_harness import Daemon, hello, running_daemon, shared_tmpdir
from .test_daemon_cli import wait_until
from .test_hostile import healthy, rss

MiB = 1024 * 1024
FUZZ_WORKER = Path(__file__).with_name("fuzz_worker.py")

# never sent: stopping the daemon, and adding agents (a random table could name a real
# program to run). Follows are sent: the half-close after each example ends them.
UNSAFE = {"daemon.shutdown", "agents.add"}
METHODS = sorted(set(REGISTRY) - UNSAFE)
NAMES = ["hello", "nope", "", "hello#0"]

json_leaf = (st.none() | st.booleans() | st.integers(-(2**53), 2**53)
             | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20))
json_value = st.recursive(
    json_leaf,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=12)


@st.composite
def params_for(draw: st.DrawFn, method: str) -> Any:
    """Mostly params shaped like the method's (so validation passes now and then), else
    any JSON value."""
    spec = REGISTRY.get(method)
    if spec is None or draw(st.integers(0, 3)) == 0:
        return draw(json_value)
    fields = spec.params.__struct_fields__
    out: dict[str, Any] = {}
    for f in draw(st.lists(st.sampled_from(fields), unique=True)) if fields else []:
        out[f] = draw(st.one_of(
            st.lists(st.sampled_from(NAMES), max_size=2), st.sampled_from(NAMES),
            st.integers(-1, 3), st.booleans(), json_value))
    return out


@st.composite
def request(draw: st.DrawFn, rid: str) -> bytes:
    method = draw(st.sampled_from(METHODS) | st.text(max_size=12))
    msg: dict[str, Any] = {"jsonrpc": "2.0", "id": rid, "method": method}
    if draw(st.booleans()):
        msg["params"] = draw(params_for(method))
    return msgspec.json.encode(msg)


@st.composite
def junk(draw: st.DrawFn) -> bytes:
    """Lines whose answer is not checked: mutated requests, notifications, batches, JSON
    that is not JSON-RPC, bytes that are not JSON."""
    kind = draw(st.integers(0, 5))
    if kind == 0:  # a request with some bytes changed, cut or doubled
        line = bytearray(draw(request("m")))
        for _ in range(draw(st.integers(1, 4))):
            i = draw(st.integers(0, len(line) - 1))
            op = draw(st.integers(0, 2))
            if op == 0:
                line[i] = draw(st.integers(0, 255))
            elif op == 1:
                del line[i:]
                if not line:
                    line += b"{"
            else:
                line[i:i] = line[i:i + draw(st.integers(1, 8))]
        return bytes(line).replace(b"\n", b" ")
    if kind == 1:  # a notification
        return msgspec.json.encode({"jsonrpc": "2.0", "method": draw(st.sampled_from(METHODS)),
                                    "params": draw(json_value)})
    if kind == 2:  # a batch
        return msgspec.json.encode(draw(st.lists(json_value, max_size=3)))
    if kind == 3:
        return msgspec.json.encode(draw(json_value))
    if kind == 4:  # deep nesting
        depth = draw(st.integers(1000, 50_000))
        return b'{"jsonrpc":"2.0","id":"deep","method":"daemon.info","params":' + \
            b"[" * depth + b"]" * depth + b"}"
    return draw(st.binary(max_size=64)).replace(b"\n", b" ")


@st.composite
def conversation(draw: st.DrawFn, prefix: str) -> tuple[list[bytes], set[str]]:
    """Lines to send, and the ids of the well-formed requests among them."""
    lines: list[bytes] = []
    ids: set[str] = set()
    for i in range(draw(st.integers(1, 60))):
        if draw(st.integers(0, 2)):
            rid = f"{prefix}{i}"
            ids.add(rid)
            lines.append(draw(request(rid)))
        else:
            lines.append(draw(junk()))
    return lines, ids


@pytest.fixture
def daemon() -> Iterator[Daemon]:
    with running_daemon(shared_tmpdir(), hello("hello"), extra="max_replicas = 4") as d:
        yield d


# no shrinking: each run of an example talks to the daemon, and a failure is reported
# as drawn (the lines are small enough to read)
FUZZ = settings(max_examples=80, deadline=None, derandomize=True, database=None,
                phases=[Phase.generate], suppress_health_check=list(HealthCheck))


def settled(daemon: Daemon) -> bool:
    """No upgrade under way (the draws ask for `daemon.upgrade` now and then), and every
    replica in a state the fuzz may leave it in."""
    try:
        if daemon.ask("daemon.upgrade", {"report": True})["state"] == "handing_over":
            return False
        return all(a["state"] in ("ready", "idle", "busy", "terminated", "paused")
                   for a in daemon.status().values())
    except Disconnection:  # the exec came between the two
        return False


# (a fixed amount of work: 80 conversations, a few seconds on a quiet machine, minutes on
# one at a load of tens, where the default timeout cut it)
@pytest.mark.timeout(300)
def test_random_and_mutated_requests_to_the_control_socket(daemon: Daemon) -> None:
    assert daemon.proc is not None
    healthy(daemon)
    start = rss(daemon)
    sent = answered = 0

    @FUZZ
    @given(conversation("c-"))
    def one_client(conv: tuple[list[bytes], set[str]]) -> None:
        nonlocal sent, answered
        lines, ids = conv
        s = socket.socket(socket.AF_UNIX)
        s.connect(str(daemon.sock))
        s.settimeout(60)
        s.sendall(b"".join(line + b"\n" for line in lines))
        s.shutdown(socket.SHUT_WR)  # every request read is answered, then the daemon hangs up
        buf = b""
        reset = False
        try:
            while chunk := s.recv(1 << 20):
                buf += chunk
        except ConnectionResetError:
            # the kernel's word for a peer that closed with lines unread: after the
            # going-away notice, which the test asserts below, and never without it
            reset = True
        s.close()
        replies = [msgspec.json.decode(x) for x in buf.split(b"\n") if x]
        got = {r.get("id") for r in replies}
        # a drawn daemon.upgrade's drain: every request read is answered, then the notice
        # names the last one read, the last line; the rest were not read (not made)
        gone = [r for r in replies if r.get("method") == GOING_AWAY]
        assert gone or not reset, f"reset with no going-away notice: {replies[-3:]}"
        if gone:
            assert replies[-1] is gone[0], replies[-3:]
            last = gone[0]["params"]["last_id"]
            assert last is None or last in got or last not in ids, last
        else:
            assert ids <= got, f"unanswered: {sorted(ids - got)}"
        for r in replies:  # every error says what went wrong
            if "error" in r:
                assert r["error"]["message"] and not r["error"]["message"].endswith(": ")
        sent += len(lines)
        answered += len(ids)

    one_client()
    assert daemon.proc.poll() is None
    # enough traffic to mean something (the draws are derandomized: fixed per method list)
    assert sent > 1000 and answered > 400
    assert rss(daemon) - start < 32 * MiB
    # the daemon still serves, and the agent it had is alive or back
    # (a drawn agents.pause leaves it paused: a state it may be left in, as stopped)
    wait_until(lambda: settled(daemon), what="settled")


def test_random_messages_from_a_worker(tmp_path: Path) -> None:
    lines: list[bytes] = []
    ids: set[str] = set()

    # Hypothesis draws the worker's whole script; the worker sends it in one go
    @FUZZ
    @given(conversation("w-x"))
    def collect(conv: tuple[list[bytes], set[str]]) -> None:
        n = len(lines)
        for line in conv[0]:  # ids unique across examples: "w-<example line>"
            lines.append(line.replace(b'"w-x', f'"w-{n}-'.encode()))
        ids.update(i.replace("w-x", f"w-{n}-") for i in conv[1])

    collect()
    worker_lines = [_as_worker(line) for line in lines]
    (tmp_path / "lines").write_bytes(b"\n".join(worker_lines))
    tmp = shared_tmpdir()
    agents = f"""
[agents.fake]
command = ["{sys.executable}", "{FUZZ_WORKER}"]
env = {{ FUZZ_LINES = "{tmp_path}/lines", FUZZ_RESULT = "{tmp_path}/result" }}
"""
    d = Daemon(tmp, agents + hello("hello"))
    d.start()
    try:
        start = rss(d)
        result = tmp_path / "result"
        wait_until(result.exists, timeout=90, what="the worker's script sent and answered")
        assert json.loads(result.read_text()) == []
        assert d.proc is not None and d.proc.poll() is None
        status = d.status()
        assert (status["fake#0"]["state"], status["fake#0"]["restarts"]) == ("ready", 0)
        assert (status["hello#0"]["state"], status["hello#0"]["restarts"]) == ("ready", 0)
        assert rss(d) - start < 32 * MiB
        assert len(lines) > 1000
        assert d.stop() == 0
    finally:
        d.close()
        shutil.rmtree(tmp, ignore_errors=True)


WORKER_METHODS = ["tools/call", "tools/list", "events/subscribe", "resources/list",
                  "resources/read", "prompts/list", "prompts/get", "task/progress",
                  "events/publish", "state/checkpoint"]


def _as_worker(line: bytes) -> bytes:
    """A control-socket line made a worker's: its method one of the worker protocol's."""
    try:
        msg = json.loads(line)
    except (ValueError, RecursionError):
        return line
    if isinstance(msg, dict) and isinstance(msg.get("method"), str):
        msg["method"] = WORKER_METHODS[zlib.crc32(msg["method"].encode()) % len(WORKER_METHODS)]
        return json.dumps(msg, separators=(",", ":")).encode()
    return line
