"""The HTTP API says no rather than guessing (issue 36, item 2): an operation that acts on
processes takes no default for what it does to them. An empty body to /scale was a scale
to 1; one to /signal was a SIGTERM to every replica."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.daemon.http.openapi import document

from .daemon_harness import hello
from .test_http_api import serving


def test_the_document_requires_the_count_and_the_signal() -> None:
    paths = document()["paths"]
    for path, field in (("/api/v1/agents/{name}/scale", "replicas"),
                        ("/api/v1/agents/{name}/signal", "signal")):
        body = paths[path]["post"]["requestBody"]
        assert body["required"] is True
        schema = body["content"]["application/json"]["schema"]
        assert field in schema["required"] and "default" not in schema["properties"][field]


@pytest.mark.deadline(120)
async def test_an_empty_body_signals_nothing_and_scales_nothing(tmp_path: Path) -> None:
    async with serving(tmp_path, hello("hello", replicas=2)) as api:
        await api.token("admin", "admin")
        pids = [r.pid for r in api.d.sup.agent("hello").replicas]
        for path, field in (("/agents/hello/signal", "signal"),
                            ("/agents/hello/scale", "replicas")):
            status, body, _ = await api.ask("POST", path, "admin", {})
            assert (status, body["detail"]) == (
                400, f"invalid params: Object missing required field `{field}`")
        assert [r.pid for r in api.d.sup.agent("hello").replicas] == pids
        assert all(r.machine.takes_work for r in api.d.sup.agent("hello").replicas)
        status, body, _ = await api.ask("POST", "/agents/hello/signal", "admin",
                                        {"signal": "HUP"})
        assert status == 200, body
