"""The peer of bench_cluster: Celery with its Redis broker and result backend, running the
same echo task as corral's echo agent."""

from __future__ import annotations

import os
import time
from typing import Any

from celery import Celery

app = Celery("bench", broker=os.environ.get("CELERY_BROKER", "redis://127.0.0.1:6379/1"),
             backend=os.environ.get("CELERY_BACKEND", "redis://127.0.0.1:6379/2"))
app.conf.update(task_serializer="json", result_serializer="json", accept_content=["json"],
                broker_connection_retry_on_startup=True, worker_hijack_root_logger=False)


@app.task(name="echo")
def echo(x: Any) -> Any:
    return x


@app.task(name="started")
def started(sent: float) -> float:
    """Submission to start: the time it started less the time it was sent (one host)."""
    return time.time() - sent
