"""The systemd journal's native protocol, spoken directly (no libsystemd, no library).

Each entry is one datagram to /run/systemd/journal/socket holding `FIELD=value` lines; a
value with a newline is sent as `FIELD\\n`, its length as 64-bit little-endian, the bytes,
`\\n`. An entry too big for a datagram goes in a sealed memfd passed with SCM_RIGHTS, as
sd_journal_sendv does. Sends never block the loop: an entry the journal cannot take now is
counted and dropped (the log files keep every line). The fields: docs/operations.md.
"""

from __future__ import annotations

import array
import contextlib
import errno
import os
import socket
import struct
from collections.abc import Iterable
from pathlib import Path

JOURNAL_SOCKET = "/run/systemd/journal/socket"
SYSLOG_IDENTIFIER = "corral"
PRIORITY_INFO = 6
PRIORITY_NOTICE = 5
# a process's own lines (stdout: a plain program's); everything else corral says: notice
STREAM_PRIORITY = {"stderr": PRIORITY_INFO, "stdout": PRIORITY_INFO}


def available() -> bool:
    return Path(JOURNAL_SOCKET).is_socket()


def encode(fields: Iterable[tuple[str, bytes | str]]) -> bytes:
    out = bytearray()
    for key, value in fields:
        data = value.encode("utf-8", "replace") if isinstance(value, str) else value
        out += key.encode()
        if b"\n" in data:
            out += b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
        else:
            out += b"=" + data + b"\n"
    return bytes(out)


def split_priority(line: bytes, default: int) -> tuple[int, bytes]:
    """A `<N>` prefix (N in 0..7) sets the priority, as for a service's stderr."""
    if len(line) >= 3 and line[0:1] == b"<" and line[2:3] == b">" and 48 <= line[1] <= 55:
        return line[1] - 48, line[3:]
    return default, line


class JournalSender:
    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self.sock.setblocking(False)
        self.sent = 0
        self.dropped = 0  # the journal could not take them (they are in the files)

    def send(self, fields: list[tuple[str, bytes | str]]) -> None:
        data = encode(fields)
        try:
            self.sock.sendto(data, JOURNAL_SOCKET)
            self.sent += 1
        except OSError as exc:
            if exc.errno in (errno.EMSGSIZE, errno.ENOBUFS):
                self._send_memfd(data)
            else:  # EAGAIN (journald behind), ENOENT/ECONNREFUSED (journald gone)
                self.dropped += 1

    def _send_memfd(self, data: bytes) -> None:
        fd = os.memfd_create("corral-journal", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.write(fd, data)
            # journald only accepts a memfd sealed against any change
            import fcntl

            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW
                        | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL)
            self.sock.sendmsg([], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                    array.array("i", [fd]))], 0, JOURNAL_SOCKET)
            self.sent += 1
        except OSError:
            self.dropped += 1
        finally:
            os.close(fd)

    def lines(self, kind: str, name: str, replica: int, pid: int, stream: str,
              lines: Iterable[bytes]) -> None:
        """One entry per line of an agent (kind "agent") or MCP server ("mcp")."""
        who = "CORRAL_AGENT" if kind == "agent" else "CORRAL_MCP_SERVER"
        default = STREAM_PRIORITY.get(stream, PRIORITY_NOTICE)
        common: list[tuple[str, bytes | str]] = [
            ("SYSLOG_IDENTIFIER", SYSLOG_IDENTIFIER), (who, name),
            ("CORRAL_REPLICA", str(replica)), ("CORRAL_STREAM", stream)]
        if pid:
            common.append(("OBJECT_PID", str(pid)))
        for line in lines:
            priority, text = split_priority(line, default)
            self.send([("MESSAGE", text), ("PRIORITY", str(priority)), *common])

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


LEVELS = {"debug": 7, "info": 6, "notice": 5, "warning": 4, "error": 3}


def stderr_is_journal() -> bool:
    """True when fd 2 is the journal's stream (systemd sets JOURNAL_STREAM=dev:inode)."""
    dev, _, ino = os.environ.get("JOURNAL_STREAM", "").partition(":")
    try:
        st = os.fstat(2)
        return bool(ino) and (st.st_dev, st.st_ino) == (int(dev), int(ino))
    except (OSError, ValueError):
        return False


class StderrEcho:
    """The daemon's own log lines on stderr, at or above `level` (under systemd with a
    `<N>` priority prefix). stderr is non-blocking: a reader that does not read costs
    lines (counted), never a stalled daemon, nor half a line (its end is written first)."""

    def __init__(self, level: str = "info") -> None:
        self.max = LEVELS[level]
        self.journal = stderr_is_journal()
        self.dropped = 0
        self.rest = b""  # the unwritten end of a line begun
        with contextlib.suppress(OSError):
            os.set_blocking(2, False)

    def __call__(self, text: str, priority: int) -> None:
        if priority > self.max:
            return
        line = f"<{priority}>{text}\n" if self.journal else f"corral: {text}\n"
        if self.rest:  # finish the line begun first
            self.rest = self.rest[_put(self.rest):]
            if self.rest:
                self.dropped += 1
                return
        data = line.encode("utf-8", "replace")
        done = _put(data)
        if done == 0:
            self.dropped += 1
        self.rest = data[done:] if done else b""


def _put(data: bytes) -> int:
    """What of `data` the non-blocking stderr took (0 when full or gone)."""
    try:
        return os.write(2, data)
    except OSError:
        return 0
