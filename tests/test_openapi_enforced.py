"""The OpenAPI document states what the server enforces (issue 57 item 4): a token's
agents glob is not empty, a task's own timeout is positive (its input bounded), a
workflow's step names are names; and for each, a request the document refuses the server
refuses with its own words (a schema-driven client learns no rule by a 400)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from .daemon_harness import hello
from .test_http_api import serving

NULL = {"type": "null"}


def body_schema(doc: dict[str, Any], path: str) -> dict[str, Any]:
    schema: dict[str, Any] = doc["paths"][f"/api/v1{path}"]["post"]["requestBody"][
        "content"]["application/json"]["schema"]
    return schema


@pytest.mark.deadline(120)
async def test_what_the_document_refuses_the_server_refuses(tmp_path: Path) -> None:
    async with serving(tmp_path, hello("hello")) as api:
        await api.token("admin", "admin")
        status, doc, _ = await api.ask("GET", "/openapi.json")
        assert status == 200
        tokens = body_schema(doc, "/tokens")["properties"]
        assert tokens["agents"]["anyOf"] == [{"type": "string", "minLength": 1}, NULL]
        tasks = body_schema(doc, "/tasks")["properties"]
        assert tasks["timeout"]["anyOf"] == [{"type": "number", "exclusiveMinimum": 0},
                                             NULL]
        assert tasks["input"]["description"] == "any JSON, at most 16773120 bytes of it"
        step = doc["components"]["schemas"]["ConfigStepSpec"]["properties"]["name"]
        assert step == {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_-]*$",
                        "description": "unique among the workflow's steps"}

        status, body, _ = await api.ask("POST", "/tokens", "admin",
                                        {"name": "t", "scopes": ["tasks:run"], "agents": ""})
        assert (status, body["detail"]) == (400, "an agents glob may not be empty")
        status, body, _ = await api.ask("POST", "/tasks", "admin",
                                        {"agent": "hello", "timeout": 0})
        assert (status, body["detail"]) == (400, "timeout must be > 0")
        status, body, _ = await api.ask("POST", "/workflows", "admin", {"workflows": {
            "w": {"steps": [{"name": "1st", "agent": "hello"}]}}})
        assert (status, body["detail"]) == (
            400, "workflows.add: workflow w: step name '1st' is not a name (letters, "
                 "digits, _ and -, not starting with a digit or -)")
