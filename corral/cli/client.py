"""A small blocking client of the control socket (no asyncio: CLI start-up is paid by
every command an operator types)."""

from __future__ import annotations

import contextlib
import errno
import os
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec
from msgspec import UNSET, UnsetType

from ..methods import REGISTRY, Params, named

if TYPE_CHECKING:
    # pathlib (and urllib, ipaddress) is not imported at a command's start
    from pathlib import Path

EXIT_FAILED = 1
EXIT_UNREACHABLE = 3
INTERNAL_ERROR = -32603  # JSON-RPC's (corral.jsonrpc would import asyncio)
# how long a call that the daemon answers at once may take before the CLI gives up on it
# (CORRAL_CLIENT_TIMEOUT: seconds; a call that waits for a task's end has no such bound)
CLIENT_TIMEOUT = float(os.environ.get("CORRAL_CLIENT_TIMEOUT") or 600.0)


class Unreachable(Exception):
    """The daemon cannot be reached; the message says how to start it."""


class Disconnection(Unreachable):
    """The daemon closed a connection it had accepted (it stopped, or restarts)."""


class CallFailed(Exception):
    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data


class _Message(msgspec.Struct):
    """A line from the daemon: an answer (its result left as JSON, for the type the method
    declares) or a notification (no id)."""

    id: int | str | UnsetType | None = UNSET
    method: str | None = None
    params: msgspec.Raw = msgspec.Raw(b"null")
    result: msgspec.Raw = msgspec.Raw(b"null")
    error: dict[str, Any] | None = None


_message = msgspec.json.Decoder(_Message)


def result_type(method: str) -> Any:
    """What the method answers (corral.methods), or Any for one this CLI does not know."""
    spec = REGISTRY.get(method)
    return Any if spec is None or spec.result is None else spec.result


class Client:
    def __init__(self, path: Path | str, timeout: float | None = CLIENT_TIMEOUT) -> None:
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
                    raise Disconnection(
                        f"the corral daemon at {self.path} closed the connection")
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
        *,
        result: Any = Any,
    ) -> Any:
        """The method's answer decoded into `result` (plain JSON values unless a type is
        given); notifications meanwhile go to `on_notification`."""
        self._next_id += 1
        rid = self._next_id
        # the envelope is written here rather than with corral.jsonrpc, which would import
        # asyncio (~20 ms) into every CLI command
        req = {"jsonrpc": "2.0", "id": rid, "method": method, "params": params or {}}
        # a refused client is told why, then disconnected: the reason is still readable
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.sock.sendall(msgspec.json.encode(req) + b"\n")

        while True:
            msg = _message.decode(self._read_line())
            if msg.method is not None and msg.id is UNSET:
                if on_notification is not None:
                    on_notification(msg.method, msgspec.json.decode(msg.params))
                continue
            if msg.id not in (rid, None, UNSET):
                continue
            if msg.error is not None:
                e = msg.error
                raise CallFailed(e.get("code", 0), e.get("message", ""), e.get("data"))
            try:
                return msgspec.json.decode(msg.result, type=result)
            except msgspec.ValidationError as exc:
                raise CallFailed(INTERNAL_ERROR, f"the daemon's answer to {method} is not "
                                 f"what this corral reads ({exc}): are the daemon and this "
                                 "CLI the same version?") from None

    def ask(
        self,
        request: str | Params,
        params: Any = None,
        on_notification: Callable[[str, Any], None] | None = None,
        *,
        result: Any = None,
    ) -> Any:
        """`call` of the method whose params `request` is (or, for a script, named so
        with its params), the answer decoded into the result the method declares
        (corral.methods; the CLI reads its fields), or into `result` where the caller
        names one."""
        method, params = named(request, params)
        return self.call(method, params, on_notification,
                         result=result if result is not None else result_type(method))
