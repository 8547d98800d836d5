"""A small blocking client of the control socket (no asyncio: CLI start-up is paid by
every command an operator types)."""

from __future__ import annotations

import contextlib
import errno
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

EXIT_FAILED = 1
EXIT_UNREACHABLE = 3


class Unreachable(Exception):
    """The daemon cannot be reached; the message says how to start it."""


class CallFailed(Exception):
    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data


class Client:
    def __init__(self, path: Path, timeout: float | None = 600.0) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(str(path))
        except OSError as exc:
            self.sock.close()
            why = {
                errno.ENOENT: "no socket there",
                errno.ECONNREFUSED: "nothing is listening (a stale socket?)",
                errno.EACCES: "permission denied (are you root or in the corral group?)",
            }.get(exc.errno or 0, exc.strerror or str(exc))
            raise Unreachable(
                f"cannot reach the corral daemon at {path}: {why}\n"
                "start it with `corral daemon --config PATH` (or `systemctl start corral`), "
                "or point at it with --socket / CORRAL_SOCKET"
            ) from None
        self._buf = b""
        self._next_id = 0

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _read_line(self) -> bytes:
        nl = self._buf.find(b"\n")
        if nl < 0:
            # a large reply arrives in many chunks: look for the newline in each new chunk
            # only and join once, rather than rescanning and recopying a growing buffer
            chunks = [self._buf]
            while nl < 0:
                try:
                    chunk = self.sock.recv(1 << 20)
                except (ConnectionResetError, BrokenPipeError):
                    chunk = b""  # the daemon went away, as with a clean close
                if not chunk:
                    raise Unreachable(f"the corral daemon at {self.path} closed the connection")
                chunks.append(chunk)
                nl = chunk.find(b"\n")
            nl += sum(map(len, chunks)) - len(chunks[-1])
            self._buf = b"".join(chunks)
        line, self._buf = self._buf[:nl], self._buf[nl + 1 :]
        return line

    def call(
        self,
        method: str,
        params: Any = None,
        on_notification: Callable[[str, Any], None] | None = None,
    ) -> Any:
        self._next_id += 1
        rid = self._next_id
        # the envelope is written here rather than with corral.jsonrpc, which would import
        # asyncio (~20 ms) into every CLI command
        req = {"jsonrpc": "2.0", "id": rid, "method": method, "params": params or {}}
        # a refused client is told why, then disconnected: the reason is still readable
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.sock.sendall(msgspec.json.encode(req) + b"\n")

        while True:
            msg = msgspec.json.decode(self._read_line())
            if "method" in msg and "id" not in msg:
                if on_notification is not None:
                    on_notification(msg["method"], msg.get("params"))
                continue
            if msg.get("id") not in (rid, None):
                continue
            if "error" in msg:
                e = msg["error"]
                raise CallFailed(e.get("code", 0), e.get("message", ""), e.get("data"))
            return msg.get("result")
