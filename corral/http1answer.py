"""An HTTP/1.1 answer as corral's clients read it: the model gateway's upstream client
(daemon/models/http1.py), `corral mcp serve`'s on its daemon's socket (cli/unixhttp.py)
and the health probe (supervisor/probes.py). llhttp (httptools' response parser, as every
HTTP message corral takes is read) reads what a client feeds it; the bounds and the
refusals are said here, once, in the peer's name (decision 2200). No I/O of its own: a
client feeds it each read (`read_from` an asyncio stream's) and tells it the connection
ended. Imports no more than httptools: the bridge's start pays for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import httptools

if TYPE_CHECKING:
    import asyncio

MAX_HEAD = 64 * 1024  # bytes fed before an answer's final head is whole (interim ones too)
MAX_INTERIM = 8  # interim answers (1xx) read past: one more refuses the answer
READ = 64 * 1024  # bytes asked of a stream at once


class Http1Answer:
    """llhttp's callbacks for one answer: its status, reason and headers (names
    lowercased, a repeated one joined) once its final head is read, past interim answers
    (1xx but 101, as HTTP asks of a client: endless ones held a call to its timeout), and
    its body's bytes as they are parsed. Bytes past its end begin another message
    (`extra`), never read. Begun again for each answer of a kept-alive connection. A
    refusal is an `error` naming `peer`."""

    __slots__ = ("body", "complete", "error", "extra", "fed", "head_done", "headers",
                 "interims", "kept_alive", "parser", "peer", "reason", "status")

    def __init__(self, peer: str, error: type[Exception]) -> None:
        self.peer, self.error = peer, error
        # (it holds its callbacks, this: `close` lets go of it)
        self.parser: httptools.HttpResponseParser | None = httptools.HttpResponseParser(self)
        self.body: list[bytes] = []
        self.begin()

    def begin(self) -> None:
        """An answer to read, from its first byte."""
        self.headers: dict[str, str] = {}
        self.body.clear()
        self.status = self.interims = self.fed = 0
        self.reason = b""
        self.head_done = self.complete = self.extra = self.kept_alive = False

    def close(self) -> None:
        """Its connection is gone: nothing more is fed."""
        self.parser = None

    # -- llhttp's callbacks ------------------------------------------------------------
    def on_message_begin(self) -> None:
        self.extra = self.head_done
        if self.interims and not self.extra:  # (an interim answer's head is not its own)
            self.headers, self.reason = {}, b""

    def on_status(self, reason: bytes) -> None:
        if not self.extra:
            self.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.extra:
            key, text = name.decode("latin-1").lower(), value.decode("latin-1").strip(" \t")
            self.headers[key] = f"{self.headers[key]}, {text}" if key in self.headers else text

    def on_headers_complete(self) -> None:
        if not self.extra and self.parser is not None:
            status = self.parser.get_status_code()
            if 100 <= status < 200 and status != 101:
                self.interims += 1
            else:
                self.status, self.head_done = status, True
                self.kept_alive = self.parser.should_keep_alive()  # (its head's word)

    def on_body(self, body: bytes) -> None:
        if not self.extra:
            self.body.append(body)

    def on_message_complete(self) -> None:
        self.complete = self.head_done  # (an interim answer's end is not its own)

    # -- what a client does --------------------------------------------------------------
    def feed(self, data: bytes) -> None:
        """A read of its connection parsed (an `error`: llhttp refused it, or a bound was
        passed before the final head was whole)."""
        assert self.parser is not None, "an answer fed after its connection closed"
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            pass  # (a 101: its head is whole, and what follows is no HTTP's)
        except httptools.HttpParserError as exc:
            raise self.error(f"{self.peer}'s answer is not HTTP/1.1: {exc}") from None
        if not self.head_done:
            self.fed += len(data)
            if self.interims > MAX_INTERIM:
                raise self.error(f"{self.peer} sent over MAX_INTERIM ({MAX_INTERIM}) "
                                 "interim answers (1xx)")
            if self.fed > MAX_HEAD:
                raise self.error(f"{self.peer}'s answer's head is over MAX_HEAD "
                                 f"({MAX_HEAD} bytes)")

    def take(self) -> bytes:
        """The body's bytes parsed and not yet taken."""
        body = b"".join(self.body)
        self.body.clear()
        return body

    @property
    def until_close(self) -> bool:
        """No length said: the body runs to the connection's end."""
        coding = self.headers.get("transfer-encoding")
        return "content-length" not in self.headers and self.status not in (204, 304) \
            and (coding is None or "chunked" not in coding.lower())

    def ended(self, why: str = "") -> None:
        """The connection ended (`why`, said after the refusal): the body's end where it
        runs to it, else an `error` saying what of the answer was cut."""
        if self.complete or (self.head_done and self.until_close):
            self.complete = True
            return
        why = f" ({why})" if why else ""
        if not (self.head_done or self.fed):
            raise self.error(f"the connection ended before {self.peer}'s answer{why}")
        raise self.error(f"{self.peer}'s answer was cut before its end{why}")


async def read_from(reader: asyncio.StreamReader, answer: Http1Answer) -> bool:
    """One read of `reader` fed to `answer`; False once its end is read (OSError: the
    connection failed)."""
    if answer.complete:
        return False
    data = await reader.read(READ)
    if not data:
        answer.ended()
        return False
    answer.feed(data)
    return True
