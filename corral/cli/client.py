"""A small blocking client of the control socket (no asyncio: CLI start-up is paid by
every command an operator types)."""

from __future__ import annotations

# _socket, not socket: the connection takes nothing of socket.py's but its class, and
# socket.py's import (the enums it makes of _socket's constants) was ~3 ms of every
# command's start
import _socket
import contextlib
import errno
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec
from msgspec import UNSET, UnsetType

from ..methods import CANCEL, GOING_AWAY, DaemonInfo, Method, Params, named

if TYPE_CHECKING:
    # pathlib (and urllib, ipaddress) is not imported at a command's start
    from pathlib import Path

EXIT_FAILED = 1
EXIT_UNREACHABLE = 3
INTERNAL_ERROR = -32603  # JSON-RPC's (corral.jsonrpc would import asyncio)


# The variables are read at each use, not at import: a process forked after the import (the
# tests' fork server) has its own environment.
def default_timeout() -> float:
    """How long a call that the daemon answers at once may take before the CLI gives up
    on it (CORRAL_CLIENT_TIMEOUT: seconds; a call that waits for a task's end has no such
    bound)."""
    return float(os.environ.get("CORRAL_CLIENT_TIMEOUT") or 600.0)


FROM_ENVIRONMENT = -1.0  # Client's timeout or resume_wait: the variable's, at the call
UNAVAILABLE = -32013


class Unreachable(Exception):
    """The daemon cannot be reached; the message says how to start it."""


class Disconnection(Unreachable):
    """The daemon closed a connection it had accepted (it stopped, or restarts)."""


class GoneAway(Disconnection):
    """The daemon went away for an upgrade: a call it had read was answered unfinished
    (a stream, a wait for a task: ask again), or one it had not read could not be sent
    again to the next image within the client's `resume_wait` (it was not made)."""


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


def result_type(method: str | Params) -> Any:
    """What the method answers (corral.methods), or Any for one this CLI does not know. A
    method named by its params is looked up in their declaration: a name, in REGISTRY,
    which declares every domain's methods (a command's start declares its own alone)."""
    spec: Method | None
    if isinstance(method, Params):
        spec = type(method).declared
    else:
        from .. import methods

        spec = methods.REGISTRY.get(method)
    return Any if spec is None or spec.result is None else spec.result


class Client:
    """`timeout`: how long a call may wait for its answer (None: for ever); `resume_wait`:
    how long a call the daemon did not read before `corral upgrade`'s exec waits for the
    next image (CORRAL_RESUME_WAIT: seconds)."""

    def __init__(self, path: Path | str, timeout: float | None = FROM_ENVIRONMENT,
                 resume_wait: float = FROM_ENVIRONMENT) -> None:
        self.path = path
        self.timeout = default_timeout() if timeout == FROM_ENVIRONMENT else timeout
        self.resume_wait = (float(os.environ.get("CORRAL_RESUME_WAIT") or 60.0)
                            if resume_wait == FROM_ENVIRONMENT else resume_wait)
        self.sock = self._connect(self.timeout)
        self._buf = b""
        self._next_id = 0

    def _connect(self, timeout: float | None) -> _socket.socket:
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
        sock.settimeout(timeout)
        try:
            sock.connect(str(self.path))
        except OSError as exc:
            sock.close()
            why = {
                errno.ENOENT: "no socket there",
                errno.ECONNREFUSED: "nothing is listening (a stale socket?)",
                errno.EACCES: "permission denied (are you root or in the corral group?)",
            }.get(exc.errno or 0, exc.strerror or str(exc))
            raise Unreachable(
                f"cannot reach the corral daemon at {self.path}: {why}\n"
                "start it with `corral daemon --config PATH` (or `systemctl start corral`), "
                "or point at it with --socket / CORRAL_SOCKET"
            ) from None
        return sock

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
        cancelled: bool = False,
    ) -> Any:
        """The method's answer decoded into `result` (plain JSON values unless a type is
        given); notifications meanwhile go to `on_notification`. `cancelled`: an interrupt
        (Ctrl-C) cancels it in the daemon too (a client gone is a half-close there)."""
        self._next_id += 1
        rid = self._next_id
        # the envelope is written here rather than with corral.jsonrpc, which would import
        # asyncio (~20 ms) into every CLI command
        req = {"jsonrpc": "2.0", "id": rid, "method": method, "params": params or {}}
        line = msgspec.json.encode(req) + b"\n"
        self._send(line)
        try:
            while True:
                msg = _message.decode(self._read_line())
                if msg.method is not None and msg.id is UNSET:
                    params = msgspec.json.decode(msg.params)
                    if on_notification is not None:
                        on_notification(msg.method, params)
                    if msg.method == GOING_AWAY:
                        self._resume(method, rid, params)
                        self._send(line)
                    continue
                if msg.id not in (rid, None, UNSET):
                    continue
                if msg.error is not None:
                    e = msg.error
                    data = e.get("data")
                    if e.get("code") == UNAVAILABLE and isinstance(data, dict) and \
                            data.get("going_away") is True:
                        raise GoneAway(e.get("message", ""))
                    raise CallFailed(e.get("code", 0), e.get("message", ""), data)
                try:
                    return msgspec.json.decode(msg.result, type=result)
                except msgspec.ValidationError as exc:
                    raise CallFailed(INTERNAL_ERROR, f"the daemon's answer to {method} is not "
                                     f"what this corral reads ({exc}): are the daemon and this "
                                     "CLI the same version?") from None
        except KeyboardInterrupt:
            if cancelled:
                self._send(msgspec.json.encode({"jsonrpc": "2.0", "method": CANCEL,
                                                "params": {"id": rid}}) + b"\n")
            raise

    def _send(self, line: bytes) -> None:
        # a refused client is told why, then disconnected: the reason is still readable
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.sock.sendall(line)

    def _resume(self, method: str, rid: int, note: Any) -> None:
        """The daemon went away for an upgrade (GOING_AWAY) and had not read request
        `rid`: it answers every request it read before it says so. Connect again (the
        next image takes the connection from the socket's backlog) and wait until it
        answers a call that changes nothing, `resume_wait` at most, before the request
        is sent again: one given up on was never sent, so never made, and none is made
        twice."""
        note = note if isinstance(note, dict) else {}
        why = str(note.get("reason") or "going away")
        if note.get("last_id") == rid:  # (it says it read it, and did not answer)
            raise Disconnection(f"the corral daemon at {self.path} read {method} and went "
                                f"away ({why}) without answering it: it may have been made")
        lost = (f"the corral daemon at {self.path} went away ({why}) before it read "
                f"{method}, and did not come back")
        deadline = time.monotonic() + self.resume_wait
        while True:
            self.sock.close()
            self._buf = b""
            try:
                # (a full backlog makes the connect itself wait)
                self.sock = self._connect(max(deadline - time.monotonic(), 0.001))
                self._next_id += 1
                probe = self._next_id
                self._send(msgspec.json.encode({"jsonrpc": "2.0", "id": probe,
                                                "method": DaemonInfo.declared.name,
                                                "params": {}}) + b"\n")
                while True:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise TimeoutError
                    self.sock.settimeout(left)
                    msg = _message.decode(self._read_line())
                    if msg.method == GOING_AWAY and msg.id is UNSET:
                        break  # (the next image went away too: once more)
                    if msg.id == probe:
                        self.sock.settimeout(self.timeout)
                        return
            except TimeoutError:
                raise GoneAway(f"{lost} within {self.resume_wait:g} s: {method} was not "
                               "made") from None
            except Unreachable:  # (the connect's, or a Disconnection)
                raise GoneAway(f"{lost}: {method} was not made") from None

    def ask(
        self,
        request: str | Params,
        params: Any = None,
        on_notification: Callable[[str, Any], None] | None = None,
        *,
        result: Any = None,
        cancelled: bool = False,
    ) -> Any:
        """`call` of the method whose params `request` is (or, for a script, named so
        with its params), the answer decoded into the result the method declares
        (corral.methods; the CLI reads its fields), or into `result` where the caller
        names one."""
        method, params = named(request, params)
        return self.call(method, params, on_notification, cancelled=cancelled,
                         result=result if result is not None else result_type(request))
