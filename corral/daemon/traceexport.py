"""The exporter process: the spans the daemon sends down a pipe, kept in the local store
and sent to an OTLP/HTTP collector, encoded with the official `opentelemetry-proto`
package. A process of its own so that the encoding and the writes cost the daemon's
event loop nothing: under one GIL they took most of a tiny task's time (decision 230).

    python -m corral.daemon.traceexport CONFIG_JSON

In, on stdin, msgpack documents, each after its length (4 bytes, big-endian): an array
is a batch of the engine's records (supervisor/tracing.py: a task and its attempts, or a
tool call), each made its spans here (`expand`); `{"flush": N}` asks for `{"flushed":
N}` once every batch before it is in the store, `{"flush": N, "sent": true}` once it was
also exported (or failed). Out, on stdout, one JSON object a line: those answers, and
`{"done": D, "exported": E, "dropped": X, "failures": F, "error": ...}` (counts since
this process started; `done` counts records, the others spans) whenever they change. It
ends at the end of its input, after the batches already taken are sent (each within the
export timeout).
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
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import msgspec

from ..supervisor.tracing import expand
from .tracestore import TraceStore

log = logging.getLogger("corral.traces")

SCOPE = "corral"
PRUNE_EVERY = 60.0  # seconds between the store's prunes
QUEUED_BATCHES = 64  # batches waiting for the collector; past it, dropped


class Config(msgspec.Struct, kw_only=True):
    store: str
    endpoint: str | None = None
    headers: dict[str, str] = {}
    service: str = "corral"
    node: str = ""
    version: str = ""
    keep_days: float = 7.0
    keep_spans: int = 200_000
    timeout: float = 5.0


# -- OTLP ------------------------------------------------------------------------------------
KEPT_VALUES = 8192  # attribute messages kept for reuse; past it, the cache starts over
_made: dict[tuple[str, Any, type], Any] = {}


def _attribute(key: str, v: Any) -> Any:
    """A KeyValue message, made once for each (key, value): most values repeat (agent
    names, transports, outcomes), and a message copied into a span costs a fraction of
    one made from Python objects."""
    kind = type(v)
    found = _made.get((key, v, kind))
    if found is not None:
        return found
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

    if kind is bool:
        value = AnyValue(bool_value=v)
    elif kind is int:
        value = AnyValue(int_value=v)
    elif kind is float:
        value = AnyValue(double_value=v)
    else:
        value = AnyValue(string_value=str(v))
    if len(_made) >= KEPT_VALUES:
        _made.clear()
    made = _made[(key, v, kind)] = KeyValue(key=key, value=value)
    return made


def encode(spans: Sequence[Sequence[Any]], service: str, node: str, version: str = ""
           ) -> bytes:
    """An ExportTraceServiceRequest of `spans`, one resource (the daemon), one scope."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )
    from opentelemetry.proto.trace.v1.trace_pb2 import Status

    request = ExportTraceServiceRequest()
    resource = request.resource_spans.add()
    resource.resource.attributes.extend([_attribute(k, v) for k, v in {
        "service.name": service, "service.version": version, "host.name": node,
        "telemetry.sdk.name": "corral", "telemetry.sdk.language": "python"}.items()])
    scope = resource.scope_spans.add()
    scope.scope.name = SCOPE
    scope.scope.version = version
    out = scope.spans
    for (trace_id, span_id, parent_id, name, kind, start, end, error, attrs, events,
         _task) in spans:
        pb = out.add(trace_id=trace_id.to_bytes(16, "big"), span_id=span_id.to_bytes(8, "big"),
                     name=name, kind=kind, start_time_unix_nano=int(start * 1e9),
                     end_time_unix_nano=int(max(end, start) * 1e9))
        pb.attributes.extend([_attribute(k, v) for k, v in attrs.items()])
        if parent_id:
            pb.parent_span_id = parent_id.to_bytes(8, "big")
        for t, n, a in events:
            event = pb.events.add(time_unix_nano=int(t * 1e9), name=n)
            event.attributes.extend([_attribute(k, v) for k, v in a.items()])
        if error is not None:
            pb.status.code = Status.STATUS_CODE_ERROR
            pb.status.message = error
    return bytes(request.SerializeToString())


# -- the process -----------------------------------------------------------------------------
class Exporter:
    """The store written as batches arrive (the main thread); the collector sent to by a
    thread of its own, so that a slow collector never holds the store back."""

    def __init__(self, cfg: Config, out: IO[bytes]) -> None:
        self.cfg = cfg
        self.out = out
        self.store = TraceStore(Path(cfg.store), cfg.keep_days, cfg.keep_spans)
        self.done = 0  # spans stored, and sent or counted dropped
        self.exported = 0
        self.dropped = 0
        self.failures = 0
        self.error: str | None = None
        self._lock = threading.Lock()  # the counts and stdout, between the two threads
        self._queue: queue.Queue[Any] = queue.Queue(QUEUED_BATCHES)
        self._sender: threading.Thread | None = None
        self._pruned = 0.0
        self._warned = 0.0
        if cfg.endpoint is not None:
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
        message = msgspec.msgpack.decode(frame)
        if isinstance(message, list):
            self.batch(message)
        elif isinstance(message, dict) and "flush" in message:
            if message.get("sent") and self._sender is not None:
                self._queue.put(message)  # answered after the batches before it are sent
            else:
                self.say({"flushed": message["flush"]})

    def batch(self, records: list[Any]) -> None:
        spans = [span for record in records for span in expand(record)]
        self.store.write(spans)
        now = time.time()
        if now - self._pruned >= PRUNE_EVERY:
            self.store.prune(now)
            self._pruned = now
        if self._sender is None:
            self.done += len(records)
        else:
            try:
                self._queue.put_nowait((spans, len(records)))
                return
            except queue.Full:  # the collector is slower than the spans come
                with self._lock:
                    self.dropped += len(spans)
                    self.done += len(records)
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

    def _send(self, spans: list[Any], records: int) -> None:
        cfg = self.cfg
        assert cfg.endpoint is not None
        body = encode(spans, cfg.service, cfg.node, cfg.version)
        request = urllib.request.Request(
            cfg.endpoint, data=body, method="POST",
            headers={"Content-Type": "application/x-protobuf", **cfg.headers})
        try:
            with urllib.request.urlopen(request, timeout=cfg.timeout) as answer:
                answer.read()
        except (OSError, urllib.error.URLError, ValueError) as exc:
            with self._lock:
                self.failures += 1
                self.dropped += len(spans)
                self.done += records
                self.error = str(exc)
            now = time.monotonic()
            if now - self._warned >= 60:
                log.warning("tracing: export to %s failed (%s): %d spans dropped; the "
                            "next failures are counted in corral_trace_spans_dropped_total",
                            cfg.endpoint, exc, len(spans))
                self._warned = now
            return
        with self._lock:
            self.exported += len(spans)
            self.done += records

    def close(self) -> None:
        """The batches taken sent (each within the timeout), then the last counts."""
        if self._sender is not None:
            self._queue.put(None)
            self._sender.join()
        self._counts()
        self.store.close()


def idle() -> None:
    """Only the CPU nothing else wants: the encoding costs more than the task it traces,
    and a busy machine's cores are its tasks' first (the spans wait, to their bounds)."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        with contextlib.suppress(OSError):
            os.nice(19)


def main(argv: list[str]) -> int:
    # the daemon's signals are the daemon's: this process ends when its input does
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    idle()
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    cfg = msgspec.json.decode(argv[1], type=Config)
    if cfg.endpoint is not None:
        encode([], cfg.service, cfg.node)  # its imports, before it says it is ready
    exporter = Exporter(cfg, sys.stdout.buffer)
    exporter.say({"ready": True})
    source = sys.stdin.buffer
    while True:
        head = source.read(4)
        if len(head) < 4:
            break
        frame = source.read(int.from_bytes(head, "big"))
        exporter.take(frame)
    exporter.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

