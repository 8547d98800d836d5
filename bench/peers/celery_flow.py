"""Celery's side of bench/bench_workflow_peers.py, on a Redis broker and result backend:
the no-op steps of a chain (each appends the wall clock to the list it is fed) and of a
chord (each item answered as it is, then joined)."""

from __future__ import annotations

import os
import time
from typing import Any

from celery import Celery

app = Celery("flow", broker=os.environ.get("CELERY_BROKER", "redis://127.0.0.1:6379/1"),
             backend=os.environ.get("CELERY_BACKEND", "redis://127.0.0.1:6379/2"))
app.conf.update(task_serializer="json", result_serializer="json", accept_content=["json"],
                broker_connection_retry_on_startup=True, worker_hijack_root_logger=False,
                task_default_queue="flow")


@app.task(name="stamp")
def stamp(t: list[float]) -> list[float]:
    return [*t, time.time()]


@app.task(name="noop")
def noop(x: Any) -> Any:
    return x


@app.task(name="join")
def join(xs: list[Any]) -> int:
    return len(xs)
