"""Where a newcomer lands (issue 36, "The HTTP API says no rather than guessing"): `/`
goes to the dashboard; `/api/v1/` lists every resource with its scope; a reference page
shows them; none needs a token, and none shows what the fleet holds."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.daemon.http.resources import RESOURCES
from corral.methods import REGISTRY

from .daemon_harness import hello
from .test_http_api import serving


@pytest.mark.deadline(60)
async def test_the_root_the_api_index_and_its_reference(tmp_path: Path) -> None:
    async with serving(tmp_path, hello("secretive-agent")) as api:
        base = api.d.http_server.url
        async with api.http.get(base + "/", allow_redirects=False) as r:
            assert (r.status, r.headers["Location"]) == (302, "/ui/")
        for path in ("", "/"):
            status, index, r = await api.ask("GET", path)
            assert (status, r.content_type) == (200, "application/json")
            assert (index["openapi"], index["reference"], index["dashboard"]) == (
                "/api/v1/openapi.json", "/api/v1/reference", "/ui/")
            assert len(index["resources"]) == len(RESOURCES)
            scale = next(x for x in index["resources"]
                         if x["path"] == "/api/v1/agents/{name}/scale")
            assert (scale["method"], scale["call"], scale["scope"]) == (
                "POST", "agents.scale", REGISTRY["agents.scale"].scope)
        async with api.http.get(base + "/api/v1/reference") as r:
            page = await r.text()
            assert (r.status, r.content_type) == (200, "text/html")
        assert "<code>/api/v1/agents/{name}/scale</code>" in page
        assert 'href="/api/v1/openapi.json"' in page
        # what the API is, never what the fleet holds
        assert "secretive-agent" not in page and "secretive-agent" not in str(index)
        # the openapi document it points at is there
        status, doc, _ = await api.ask("GET", "/openapi.json")
        assert status == 200 and doc["openapi"].startswith("3.")
