"""Traces, the daemon's side (docs/tracing.md): the [tracing] settings (with the OTEL_*
variables), and the engine's spans handed in batches to the exporter process
(traceexport.py). A collector or an exporter that is away or slow costs spans, never a
task: each place that drops spans counts them (`corral_trace_spans_dropped_total`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, NamedTuple

import msgspec

from ..methods import TraceView
from ..supervisor.config import TracingSettings
from ..supervisor.process import PIPE_SIZE as PIPE_SIZE
from ..supervisor.process import set_pipe_sizes
from ..supervisor.tracing import BUFFER_BYTES, Sampling, Tracer
from ..timeouts import waited
from . import tracestore

log = logging.getLogger("corral.daemon")


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
    sampling = Sampling(ratio if cfg.sample is None else cfg.sample,
                        parent_based if cfg.parent_based is None else cfg.parent_based, cfg.slow)
    service = cfg.service_name or env.get("OTEL_SERVICE_NAME") or "corral"
    return Settings(endpoint, headers, sampling, service)


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


# -- the exporter process, fed and supervised ------------------------------------------------
PIPE_BOUND = 8 << 20  # bytes of batches waiting for the exporter to read; past it, dropped
# full batches handed over together: the exporter woken a few times a second at most,
# not at each batch (its runs beside the loop cost the loop more than the hand-over's
# size), and the pipe widened for them (PIPE_SIZE, process.py's)
HANDOVER = 16
FLUSH_WAIT = 5.0  # seconds a read waits for the exporter to store what it was sent
BACKOFF = (0.5, 30.0)  # a dead exporter's restart: first delay, longest
STEADY = 60.0  # seconds an exporter lives for its restart delay to start over


class ExporterLine(msgspec.Struct, frozen=True):
    """A line of the exporter's: ready; a flush answered; its counts since it started."""

    ready: bool = False
    flushed: int | None = None
    done: Annotated[int, msgspec.Meta(ge=0)] | None = None
    exported: Annotated[int, msgspec.Meta(ge=0)] = 0
    dropped: Annotated[int, msgspec.Meta(ge=0)] = 0
    failures: Annotated[int, msgspec.Meta(ge=0)] = 0
    error: str | None = None


_SAID = msgspec.json.Decoder(ExporterLine)
COUNTED = ("done", "dropped", "exported", "failures")  # the counts of its `done` lines


class Traces:
    """The exporter process fed with the engine's records, one msgpack frame a batch
    down its stdin, restarted when it dies. Nothing waits for the process: a batch it
    has not read while `PIPE_BOUND` bytes wait is dropped, and while it is dead the
    engine's buffer keeps the spans to its bound."""

    def __init__(self, cfg: TracingSettings, resolved: Settings, state_dir: Path, node: str,
                 spared: set[int] | None = None) -> None:
        """Made before the engine, whose task path its tracer is given to."""
        self.tracer = Tracer(resolved.sampling, capacity=cfg.buffer, batch=cfg.batch,
                             ready=self._ready)
        self.cfg = cfg
        self.settings = resolved
        self.node = node
        self.path = state_dir / "traces.db"
        self.spared = spared if spared is not None else set()
        self.proc: asyncio.subprocess.Process | None = None
        self.started = 0  # exporter processes started
        self.pipe_dropped = 0  # spans of the batches the exporter did not read in time
        self.lost = 0  # spans sent to an exporter that died before it was done with them
        self.last_error: str | None = None
        self._ended: Counter[str] = Counter()  # the processes that ended, added up
        self._live: Counter[str] = Counter()  # the live one's, as its last `done` line said
        self._sent = 0  # spans written to the live process (its `done` counts them too)
        self._encoder = msgspec.msgpack.Encoder()
        self._flushes: dict[int, asyncio.Future[None]] = {}
        self._seq = 0
        self._timer: asyncio.TimerHandle | None = None
        self._soon = False
        self._closing = False
        self._delay = BACKOFF[0]
        self._watcher: asyncio.Task[None] | None = None
        self._restart: asyncio.TimerHandle | None = None
        # the live process said it has made its imports and opened the store
        self.ready = asyncio.Event()
        self._changed = asyncio.Event()  # set (and replaced) at each start, ready and end

    # -- counts -----------------------------------------------------------------------------
    @property
    def exported(self) -> int:
        return self._ended["exported"] + self._live["exported"]

    @property
    def export_failures(self) -> int:
        return self._ended["failures"] + self._live["failures"]

    @property
    def dropped(self) -> int:
        return (self.tracer.dropped + self.pipe_dropped + self.lost + self._ended["dropped"]
                + self._live["dropped"])

    def stats(self) -> dict[str, Any]:
        return {"endpoint": self.settings.endpoint, "recorded": self.tracer.recorded,
                "exported": self.exported, "dropped": self.dropped,
                "export_failures": self.export_failures, "last_error": self.last_error,
                "exporter_pid": self.proc.pid if self.proc is not None else None,
                "exporter_starts": self.started}

    # -- the process --------------------------------------------------------------------------
    async def until(self, condition: Callable[[], bool]) -> None:
        """Until `condition()` holds, asked again each time an exporter process starts,
        says it is ready, or ends."""
        while not condition():
            await self._changed.wait()

    def _change(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def start(self) -> None:
        from .. import __version__
        from .traceexport import ExportConfig

        cfg = ExportConfig(store=str(self.path), endpoint=self.settings.endpoint,
                           headers=self.settings.headers, service=self.settings.service,
                           node=self.node, version=__version__, keep_days=self.cfg.keep_days,
                           keep_spans=self.cfg.keep_spans, timeout=self.cfg.export_timeout)
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "corral.daemon.traceexport",
                msgspec.json.encode(cfg).decode(), stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE, start_new_session=True)
        except OSError as exc:
            self.last_error = f"the exporter process cannot start: {exc}"
            log.warning("tracing: %s", self.last_error)
            self._again()
            return
        # its status is its waiter's (below), not containment's; nor is it an orphan
        self.spared.add(proc.pid)
        _widen(proc)
        self.proc = proc
        self.started += 1
        self._watcher = asyncio.ensure_future(self._watch(proc, time.monotonic()))
        self._change()
        if self.tracer.buffered:
            self._flush()  # what waited while there was no process

    async def _watch(self, proc: asyncio.subprocess.Process, since: float) -> None:
        assert proc.stdout is not None
        try:
            async for line in proc.stdout:
                self._heard(line)
        except (OSError, ValueError) as exc:  # a line past the reader's limit: not its own
            log.warning("tracing: the exporter's output is unreadable (%s)", exc)
        status = await proc.wait()
        self.spared.discard(proc.pid)
        self.proc = None
        self.ready.clear()
        live, self._live = self._live, Counter()
        lost = max(0, self._sent - live["done"])
        self._sent = 0
        self._ended += live
        self.lost += lost
        for fut in self._flushes.values():
            if not fut.done():
                fut.set_result(None)
        self._flushes.clear()
        self._change()
        if self._closing:
            return
        self.last_error = f"the exporter process exited (status {status}); {lost} spans lost"
        if time.monotonic() - since >= STEADY:
            self._delay = BACKOFF[0]
        log.warning("tracing: %s; restarting it in %g s", self.last_error, self._delay)
        self._again()

    def _again(self) -> None:
        if self._closing:
            return
        delay, self._delay = self._delay, min(self._delay * 2, BACKOFF[1])
        self._restart = asyncio.get_running_loop().call_later(
            delay, lambda: asyncio.ensure_future(self.start()))

    def _heard(self, line: bytes) -> None:
        try:
            said = _SAID.decode(line)
        except msgspec.MsgspecError:  # not its protocol: one line lost, not the reader
            log.warning("tracing: the exporter said what is not its protocol: %r", line[:200])
            return
        if said.ready:
            self.ready.set()
            self._change()
        elif said.flushed is not None:
            fut = self._flushes.pop(said.flushed, None)
            if fut is not None and not fut.done():
                fut.set_result(None)
        elif said.done is not None:
            live = self._live  # counts since it started: each at least what it said last
            for name in COUNTED:
                live[name] = max(live[name], getattr(said, name))
            if said.error:
                self.last_error = said.error

    # -- feeding it ---------------------------------------------------------------------------
    def _ready(self) -> None:
        """The engine's buffer had its first span, or a batch's worth: the batches handed
        over when HANDOVER of them wait, or half the buffer's room in records or bytes."""
        if self._closing:
            return  # its last batches are flushed by `close`
        tracer = self.tracer
        full = tracer.batches
        if (full >= HANDOVER or full * tracer.batch * 2 >= tracer.capacity
                or tracer.waiting_bytes * 2 >= BUFFER_BYTES):
            if not self._soon:
                self._soon = True
                asyncio.get_running_loop().call_soon(self._flush)
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.cfg.export_interval,
                                                                self._flush)

    def _stdin(self) -> asyncio.StreamWriter | None:
        proc = self.proc
        if proc is None or proc.stdin is None or proc.stdin.is_closing():
            return None
        return proc.stdin

    def _flush(self) -> None:
        self._soon = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        pipe = self._stdin()
        if not self.tracer.buffered or pipe is None:
            return  # kept (to the buffer's bound) for the next process
        for _, spans, body in self.tracer.take():
            if pipe.transport.get_write_buffer_size() > PIPE_BOUND:
                self.pipe_dropped += spans
                continue
            pipe.writelines((len(body).to_bytes(4, "big"), body))
            self._sent += spans

    async def sync(self, sent: bool = False, timeout: float = FLUSH_WAIT) -> None:
        """What the engine buffered is in the store (`sent`: and was exported, or failed
        to be) — or `timeout` passed, or the exporter died."""
        self._flush()
        pipe = self._stdin()
        if pipe is None:
            return
        self._seq += 1
        fut = self._flushes[self._seq] = asyncio.get_running_loop().create_future()
        body = self._encoder.encode({"flush": self._seq, "sent": sent})
        pipe.write(len(body).to_bytes(4, "big") + body)
        try:
            await waited(fut, timeout)
        except TimeoutError:
            self._flushes.pop(self._seq, None)

    # -- what is asked of it --------------------------------------------------------------------
    async def trace(self, task_id: str) -> TraceView:
        await self.sync()
        spans = await asyncio.to_thread(tracestore.of_task, self.path, task_id)
        return TraceView(task_id=task_id, trace_id=spans[0].trace_id if spans else None,
                         spans=spans)

    async def close(self) -> None:
        self._flush()
        self._closing = True
        for handle in (self._timer, self._restart):
            if handle is not None:
                handle.cancel()
        proc, pipe = self.proc, self._stdin()
        if pipe is not None:
            pipe.close()
        if proc is not None and self._watcher is not None:
            try:
                await waited(self._watcher,
                             self.cfg.export_timeout + 5)
            except TimeoutError:
                proc.kill()
                await self._watcher


def _widen(proc: asyncio.subprocess.Process) -> None:
    """The exporter's input pipe widened as an agent's are (the default 64 KiB took a
    hand-over's batches in dozens of writes, each a wake-up)."""
    pipe = proc.stdin.transport.get_extra_info("pipe") if proc.stdin is not None else None
    if pipe is not None:
        set_pipe_sizes([pipe.fileno()])


def traces_of(cfg: TracingSettings | None, state_dir: Path,
              spared: set[int] | None = None) -> Traces | None:
    """With [tracing], the engine's traces; `spared`: where the daemon lists its own
    children (Supervisor's)."""
    if cfg is None:
        return None
    import socket

    return Traces(cfg, settings(cfg), state_dir, socket.gethostname(), spared)


async def start(traces: Traces | None) -> None:
    if traces is not None:
        await asyncio.to_thread(tracestore.create, traces.path)
        await traces.start()
