"""The exporter process (docs/tracing.md): the spans the daemon sends down a pipe, kept in
the local store and sent to an OTLP/HTTP collector, at no cost to the daemon's loop.

    python -m corral.daemon.traceexport CONFIG_JSON

In, on stdin, msgpack documents, each after its length (4 bytes, big-endian): an array
is a batch of the engine's records; `{"flush": N}` asks for `{"flushed": N}` once every
batch before it is in the store, `{"flush": N, "sent": true}` once it was also exported
(or failed). Out, on stdout, one JSON object a line: those answers, and the counts in spans
since this process started (`done`: stored and then exported or dropped) whenever they
change. It ends at the end of its input, after the batches taken are sent.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import signal
import sys
import threading
import time
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import msgspec

from ..supervisor.tracerecords import TEXT_MAX, spans_of
from .otlprecords import encode
from .tracestore import TraceStore

if TYPE_CHECKING:
    from .otlpcollector import Collector

log = logging.getLogger("corral.traces")

PRUNE_EVERY = 60.0  # seconds between the store's prunes
QUEUED_BATCHES = 64  # batches waiting for the collector; past it, dropped
_RAWS = msgspec.msgpack.Decoder(list[msgspec.Raw])  # a batch's records, each its bytes


class ExportConfig(msgspec.Struct, kw_only=True):
    store: str
    endpoint: str | None = None
    headers: dict[str, str] = {}
    service: str = "corral"
    node: str = ""
    version: str = ""
    keep_days: float = 7.0
    keep_spans: int = 200_000
    timeout: float = 5.0


# -- the process -----------------------------------------------------------------------------
class Exporter:
    """The store written as batches arrive (the main thread); the collector sent to by a
    thread of its own, so that a slow collector never holds the store back."""

    def __init__(self, cfg: ExportConfig, out: IO[bytes]) -> None:
        self.cfg = cfg
        self.out = out
        self.store = TraceStore(Path(cfg.store), cfg.keep_days, cfg.keep_spans)
        self.done = 0  # spans stored, and sent or counted dropped (a batch at a time)
        self.exported = 0
        self.dropped = 0
        self.failures = 0
        self.error: str | None = None
        self._lock = threading.Lock()  # the counts and stdout, between the two threads
        self._queue: queue.Queue[Any] = queue.Queue(QUEUED_BATCHES)
        self._sender: threading.Thread | None = None
        self._collector: Collector | None = None
        self._pruned = 0.0
        self._warned = 0.0
        if cfg.endpoint is not None:
            # only with an endpoint: http.client and urllib were most of the exporter's
            # imports, and a local store alone needs neither
            from .otlpcollector import Collector

            self._collector = Collector(cfg.endpoint, cfg.headers, cfg.timeout)
            self._sender = threading.Thread(target=self._send_loop, name="otlp-send",
                                            daemon=True)
            self._sender.start()

    def say(self, message: dict[str, Any]) -> None:
        with self._lock:
            self._write(message)

    def _write(self, message: dict[str, Any]) -> None:
        self.out.write(msgspec.json.encode(message) + b"\n")
        self.out.flush()

    def _counts(self) -> None:
        with self._lock:
            self._write({"done": self.done, "exported": self.exported,
                         "dropped": self.dropped, "failures": self.failures,
                         "error": self.error})

    def take(self, frame: bytes) -> None:
        if frame and (0x90 <= frame[0] <= 0x9F or frame[0] in (0xDC, 0xDD)):  # an array
            self.batch(frame)
            return
        message = msgspec.msgpack.decode(frame)
        if isinstance(message, dict) and "flush" in message:
            if message.get("sent") and self._sender is not None:
                self._queue.put(message)  # answered after the batches before it are sent
            else:
                self.say({"flushed": message["flush"]})

    def batch(self, frame: bytes) -> None:
        """A batch (a msgpack array of records) stored, and handed to the sending thread
        when there is a collector: decoded at once, each record's length read from the
        frame (a record no longer than TEXT_MAX bytes holds no text to cut)."""
        records = msgspec.msgpack.decode(frame)
        sizes = list(map(len, _RAWS.decode(frame)))
        now = time.time()
        spans = sum(map(_spans, records))
        self.store.write(frame, records, max(sizes, default=0), spans, now)
        if now - self._pruned >= PRUNE_EVERY:
            self.store.prune(now)
            self._pruned = now
        if self._sender is None:
            self.done += spans
        else:
            try:
                self._queue.put_nowait(([(r, n <= TEXT_MAX) for r, n in
                                         zip(records, sizes, strict=True)], spans))
                return
            except queue.Full:  # the collector is slower than the spans come
                self._lost(spans)
        self._counts()

    def _send_loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if isinstance(item, dict):
                self.say({"flushed": item["flush"]})
                continue
            self._send(*item)
            self._counts()
            del item  # (not kept while the thread waits: its batch's records)

    def _send(self, batch: list[Any], spans: int) -> None:
        """A batch's spans made (in this thread, off the store's) and sent; `batch`:
        (record, whether its msgpack was short enough to hold no text to cut) pairs."""
        cfg, collector = self.cfg, self._collector
        assert cfg.endpoint is not None and collector is not None
        try:
            body, _ = encode(batch, cfg.service, cfg.node, cfg.version)
        except Exception as exc:  # a record it cannot make spans of: that batch, not the
            # thread (which every later batch needs)
            self._lost(spans, f"a batch could not be encoded: {exc!r:.200}")
            log.warning("tracing: %s", self.error)
            return
        try:
            collector.post(body)
        except collector.FAILURES as exc:
            self._lost(spans, str(exc))
            now = time.monotonic()
            if now - self._warned >= 60:
                log.warning("tracing: export to %s failed (%s): %d spans dropped; the "
                            "next failures are counted in corral_trace_spans_dropped_total",
                            cfg.endpoint, exc, spans)
                self._warned = now
            return
        with self._lock:
            self.exported += spans
            self.done += spans

    def _lost(self, spans: int, error: str | None = None) -> None:
        """Dropped; with an error, a failure of the export."""
        with self._lock:
            self.dropped += spans
            self.done += spans
            if error is not None:
                self.failures += 1
                self.error = error

    def close(self) -> None:
        if self._sender is not None:
            self._queue.put(None)
            self._sender.join()
        self._counts()
        self.store.close()


def _spans(record: Any) -> int:
    """The spans a record makes, or 1 for one not of a record's shape (counted dropped)."""
    try:
        return spans_of(record)
    except Exception:
        return 1


def idle() -> None:
    """Only the CPU nothing else wants: the encoding costs more than the task it traces,
    and a busy machine's cores are its tasks' first (the spans wait, to their bounds)."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        with contextlib.suppress(OSError):
            os.nice(19)


def main(argv: list[str]) -> int:
    # nothing of the daemon's held here: its spawn (uvloop's) ignores close_fds, so any fd
    # the daemon has inheritable (one it was started with, one kept for an upgrade's
    # exec) would reach this process, which outlives the daemon's agents at a stop (an
    # MCP server's stdin never read its end; a killed daemon's socket stayed bound)
    os.closerange(3, os.sysconf("SC_OPEN_MAX"))
    # the daemon's signals are the daemon's: this process ends when its input does
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    idle()
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    exporter = Exporter(msgspec.json.decode(argv[1], type=ExportConfig), sys.stdout.buffer)
    exporter.say({"ready": True})
    source = sys.stdin.buffer
    while True:
        head = source.read(4)
        if len(head) < 4:
            break
        exporter.take(source.read(int.from_bytes(head, "big")))
    exporter.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

