"""A line's tag in its log file (its time to the millisecond, source#replica[pid] and
stream) is rendered once for the lines that share it (a burst of an agent's output lines),
never carried over to a line of another millisecond, source, replica, pid or stream."""

from __future__ import annotations

from pathlib import Path

from corral.daemon.logs import LogHub
from corral.jsonrpc import LineBlock

T = 1700000000.1234  # 2023-11-14T22:13:20.123Z


def test_lines_of_one_millisecond_each_carry_their_own_tag(tmp_path: Path) -> None:
    hub = LogHub(tmp_path)
    for when, source, replica, pid, stream, text in [
            (T, "hello", 0, 41, "stderr", b"one"), (T + 0.0002, "hello", 0, 41, "stderr", b"two"),
            (T, "hello", 0, 41, "event", b"three"), (T, "hello", 1, 41, "event", b"four"),
            (T, "hello", 1, 42, "event", b"five"), (T, "other", 1, 42, "event", b"six"),
            (T + 0.001, "hello", 1, 42, "event", b"seven")]:
        hub.emit(source, replica, pid, stream, LineBlock.of([text]), when=when)
    hub.close()
    assert (tmp_path / "hello.log").read_text().splitlines() == [
        "2023-11-14T22:13:20.123Z hello#0[41] stderr: one",
        "2023-11-14T22:13:20.123Z hello#0[41] stderr: two",
        "2023-11-14T22:13:20.123Z hello#0[41] event: three",
        "2023-11-14T22:13:20.123Z hello#1[41] event: four",
        "2023-11-14T22:13:20.123Z hello#1[42] event: five",
        "2023-11-14T22:13:20.124Z hello#1[42] event: seven"]
    assert (tmp_path / "other.log").read_text() == \
        "2023-11-14T22:13:20.123Z other#1[42] event: six\n"
