"""Traces, the daemon's side: the engine's spans (supervisor/tracing.py) taken off its
buffer by one thread, which keeps them in a bounded local store (SQLite, for `corral
trace`) and sends them to an OTLP/HTTP collector, encoded with the official
`opentelemetry-proto` package. Nothing here runs on the event loop but the handler's
read, which waits in a thread of its own (docs/tracing.md).

A collector that is away costs spans, never a task: a failed export drops its batch
(counted), and while an export waits the engine's buffer fills to its bound and drops
what comes next (counted there). Both are `corral_trace_spans_dropped_total`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sqlite3
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

from ..methods import SpanView, TraceView
from ..supervisor.config import TracingSettings
from ..supervisor.tracing import Sampling, Span, Tracer

log = logging.getLogger("corral.daemon")

SCOPE = "corral"
PRUNE_EVERY = 60.0  # seconds between the store's prunes


class Settings(NamedTuple):
    """[tracing] with the standard OTEL_* variables filling what it leaves out."""

    endpoint: str | None
    headers: dict[str, str]
    sampling: Sampling
    service: str


def settings(cfg: TracingSettings, env: Mapping[str, str] = os.environ) -> Settings:
    endpoint = cfg.endpoint
    if endpoint is None:
        endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or None
    if endpoint is None and env.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        # the base URL's signal path, as every OpenTelemetry SDK appends it
        endpoint = env["OTEL_EXPORTER_OTLP_ENDPOINT"].rstrip("/") + "/v1/traces"
    headers = dict(_headers(env.get("OTEL_EXPORTER_OTLP_TRACES_HEADERS")
                            or env.get("OTEL_EXPORTER_OTLP_HEADERS") or ""))
    headers.update(cfg.headers)
    ratio, parent_based = _sampler(env)
    if cfg.sample is not None:
        ratio = cfg.sample
    if cfg.parent_based is not None:
        parent_based = cfg.parent_based
    service = cfg.service_name or env.get("OTEL_SERVICE_NAME") or "corral"
    return Settings(endpoint, headers, Sampling(ratio, parent_based, cfg.slow), service)


def _headers(text: str) -> list[tuple[str, str]]:
    out = []
    for item in text.split(","):
        key, sep, value = item.partition("=")
        if sep and key.strip():
            out.append((urllib.parse.unquote(key.strip()),
                        urllib.parse.unquote(value.strip())))
    return out


def _sampler(env: Mapping[str, str]) -> tuple[float, bool]:
    """OTEL_TRACES_SAMPLER and its _ARG, as the SDKs read them (the default:
    parentbased_always_on)."""
    name = (env.get("OTEL_TRACES_SAMPLER") or "parentbased_always_on").strip().lower()
    try:
        arg = min(1.0, max(0.0, float(env.get("OTEL_TRACES_SAMPLER_ARG", "1.0"))))
    except ValueError:
        arg = 1.0
    return {"always_on": (1.0, False), "always_off": (0.0, False),
            "traceidratio": (arg, False), "parentbased_always_off": (0.0, True),
            "parentbased_traceidratio": (arg, True)}.get(name, (1.0, True))


# -- OTLP ------------------------------------------------------------------------------------
def _value(v: Any) -> Any:
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue

    if isinstance(v, bool):
        return AnyValue(bool_value=v)
    if isinstance(v, int):
        return AnyValue(int_value=v)
    if isinstance(v, float):
        return AnyValue(double_value=v)
    return AnyValue(string_value=str(v))


def _attributes(attrs: Mapping[str, Any]) -> list[Any]:
    from opentelemetry.proto.common.v1.common_pb2 import KeyValue

    return [KeyValue(key=k, value=_value(v)) for k, v in attrs.items()]


def encode(spans: list[Span], service: str, node: str) -> bytes:
    """An ExportTraceServiceRequest of `spans`, one resource (this daemon), one scope."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )
    from opentelemetry.proto.common.v1.common_pb2 import InstrumentationScope
    from opentelemetry.proto.resource.v1.resource_pb2 import Resource
    from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Status
    from opentelemetry.proto.trace.v1.trace_pb2 import Span as PbSpan

    from .. import __version__

    out = []
    for (trace_id, span_id, parent_id, name, kind, start, end, error, attrs, events,
         _task) in spans:
        pb = PbSpan(trace_id=trace_id.to_bytes(16, "big"), span_id=span_id.to_bytes(8, "big"),
                    name=name, kind=kind,  # type: ignore[arg-type]
                    start_time_unix_nano=int(start * 1e9),
                    end_time_unix_nano=int(max(end, start) * 1e9),
                    attributes=_attributes(attrs),
                    events=[PbSpan.Event(time_unix_nano=int(t * 1e9), name=n,
                                         attributes=_attributes(a)) for t, n, a in events],
                    status=Status(code=Status.STATUS_CODE_ERROR, message=error)
                    if error is not None else None)
        if parent_id:
            pb.parent_span_id = parent_id.to_bytes(8, "big")
        out.append(pb)
    resource = Resource(attributes=_attributes({
        "service.name": service, "service.version": __version__, "host.name": node,
        "telemetry.sdk.name": "corral", "telemetry.sdk.language": "python"}))
    request = ExportTraceServiceRequest(resource_spans=[ResourceSpans(
        resource=resource, scope_spans=[ScopeSpans(
            scope=InstrumentationScope(name=SCOPE, version=__version__), spans=out)])])
    return bytes(request.SerializeToString())


# -- the local store ---------------------------------------------------------------------------
SCHEMA = """
CREATE TABLE IF NOT EXISTS spans (
    trace_id TEXT NOT NULL, span_id TEXT NOT NULL, parent_id TEXT, name TEXT NOT NULL,
    kind INTEGER NOT NULL, start REAL NOT NULL, end REAL NOT NULL, error TEXT,
    attributes TEXT NOT NULL, events TEXT NOT NULL, task_id TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS spans_task ON spans(task_id);
CREATE INDEX IF NOT EXISTS spans_start ON spans(start);
"""


class TraceStore:
    """Recent spans in SQLite, bounded by age and by count; written by the exporter's
    thread, read by a thread of each `traces.get`."""

    def __init__(self, path: Path, keep_days: float, keep_spans: int) -> None:
        self.path = path
        self.keep_days = keep_days
        self.keep_spans = keep_spans
        self.db = self._connect()
        self.db.executescript(SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=OFF")  # recent traces: a power loss may take some
        return db

    def write(self, spans: list[Span]) -> None:
        rows = [(f"{s[0]:032x}", f"{s[1]:016x}", f"{s[2]:016x}" if s[2] else None, s[3],
                 s[4], s[5], s[6], s[7], json.dumps(s[8]),
                 json.dumps([[t, n, a] for t, n, a in s[9]]), s[10]) for s in spans]
        with self.db:
            self.db.execute("BEGIN")
            self.db.executemany("INSERT INTO spans VALUES (?,?,?,?,?,?,?,?,?,?,?)", rows)

    def prune(self, now: float) -> None:
        with self.db:
            self.db.execute("BEGIN")
            if self.keep_days:
                self.db.execute("DELETE FROM spans WHERE start < ?",
                                (now - self.keep_days * 86400,))
            if self.keep_spans:
                self.db.execute("DELETE FROM spans WHERE rowid <= (SELECT max(rowid) FROM "
                                "spans) - ?", (self.keep_spans,))

    def of_task(self, task_id: str) -> list[SpanView]:
        db = sqlite3.connect(self.path)
        try:
            rows = db.execute("SELECT trace_id, span_id, parent_id, name, kind, start, end, "
                              "error, attributes, events FROM spans WHERE task_id = ? "
                              "ORDER BY start, rowid", (task_id,)).fetchall()
        finally:
            db.close()
        return [SpanView(trace_id=r[0], span_id=r[1], parent_id=r[2], name=r[3],
                         kind=_KINDS.get(r[4], "internal"), start=r[5], end=r[6], error=r[7],
                         attributes=json.loads(r[8]), events=json.loads(r[9]))
                for r in rows]

    def close(self) -> None:
        self.db.close()


_KINDS = {1: "internal", 2: "server", 3: "client"}


# -- the exporter ------------------------------------------------------------------------------
class Traces:
    """The exporter thread, the store, and what `traces.get` and /metrics ask of them."""

    def __init__(self, tracer: Tracer, cfg: TracingSettings, resolved: Settings,
                 state_dir: Path, node: str) -> None:
        self.tracer = tracer
        self.cfg = cfg
        self.settings = resolved
        self.node = node
        self.store = TraceStore(state_dir / "traces.db", cfg.keep_days, cfg.keep_spans)
        self.exported = 0
        self.export_dropped = 0  # spans of exports that failed
        self.export_failures = 0
        self.last_error: str | None = None
        self._lock = threading.Lock()  # one taker of the buffer at a time
        self._wake = threading.Event()
        self._stop = False
        self._thread: threading.Thread | None = None
        self._pruned = 0.0
        self._warned = 0.0

    @property
    def dropped(self) -> int:
        return self.tracer.dropped + self.export_dropped

    def start(self) -> None:
        self.tracer.ready = self._wake.set
        self._thread = threading.Thread(target=self._run, name="corral-traces", daemon=True)
        self._thread.start()

    async def close(self) -> None:
        """The last spans stored and sent (bounded by the export's timeout)."""
        self._stop = True
        self._wake.set()
        self.tracer.ready = None
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, self.cfg.export_timeout + 5)
        self.store.close()

    def _run(self) -> None:
        while True:
            self._wake.wait(self.cfg.export_interval)
            self._wake.clear()
            stopping = self._stop
            try:
                self._cycle()
            except Exception:  # the thread lives on: spans are not worth a dead exporter
                log.exception("tracing: an export cycle failed")
            if stopping:
                return

    def _take(self) -> list[Span]:
        """What the buffer holds, stored (under the lock: a reader sees it once taken)."""
        spans = self.tracer.spans
        batch: list[Span] = []
        with self._lock:
            while spans:
                batch.append(spans.popleft())
            if batch:
                self.store.write(batch)
        return batch

    def _cycle(self) -> None:
        batch = self._take()
        now = time.time()
        if now - self._pruned >= PRUNE_EVERY:
            with self._lock:
                self.store.prune(now)
            self._pruned = now
        endpoint = self.settings.endpoint
        size = self.cfg.batch
        for i in range(0, len(batch) if endpoint else 0, size):
            self._send(batch[i:i + size])

    def _send(self, spans: list[Span]) -> None:
        assert self.settings.endpoint is not None
        body = encode(spans, self.settings.service, self.node)
        request = urllib.request.Request(
            self.settings.endpoint, data=body, method="POST",
            headers={"Content-Type": "application/x-protobuf", **self.settings.headers})
        try:
            with urllib.request.urlopen(request, timeout=self.cfg.export_timeout) as answer:
                answer.read()
        except (OSError, urllib.error.URLError, ValueError) as exc:
            self.export_failures += 1
            self.export_dropped += len(spans)
            self.last_error = str(exc)
            now = time.monotonic()
            if now - self._warned >= 60:
                log.warning("tracing: export to %s failed (%s): %d spans dropped; the "
                            "next failures are counted in corral_trace_spans_dropped_total",
                            self.settings.endpoint, exc, len(spans))
                self._warned = now
            return
        self.exported += len(spans)

    def _read(self, task_id: str) -> list[SpanView]:
        self._take()  # what is still buffered is in the store before it is read
        return self.store.of_task(task_id)

    async def trace(self, task_id: str) -> TraceView:
        spans = await asyncio.to_thread(self._read, task_id)
        return TraceView(task_id=task_id, trace_id=spans[0].trace_id if spans else None,
                         spans=spans)

    def stats(self) -> dict[str, Any]:
        return {"endpoint": self.settings.endpoint, "recorded": self.tracer.recorded,
                "exported": self.exported, "dropped": self.dropped,
                "export_failures": self.export_failures, "last_error": self.last_error}


async def start(cfg: TracingSettings | None, tasks: Any, state_dir: Path
                ) -> Traces | None:
    """With [tracing], the engine's tasks traced and the exporter started (a change of
    the table takes a restart of the daemon)."""
    if cfg is None:
        return None
    import socket

    resolved = settings(cfg)
    tracer = Tracer(resolved.sampling, capacity=cfg.buffer, batch=cfg.batch)
    traces = await asyncio.to_thread(Traces, tracer, cfg, resolved, state_dir,
                                     socket.gethostname())
    tracer.install(tasks)
    traces.start()
    return traces
