"""An attacker's pass over the A2A door (issue 88): what a caller who sends bytes the
door does not expect makes it answer. Each was a 500 (an exception out of the handler)
before its fix; each is now the protocol's error, saying what was wrong."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from .harness import a2a_daemon

JSON = {"Content-Type": "application/json"}


def _nested(depth: int) -> bytes:
    return (b'{"message": {"messageId": "deep", "role": "ROLE_USER", "parts": [{"data": '
            + b"[" * depth + b"]" * depth + b"}]}}")


@pytest.mark.timeout(120)
async def test_a_body_nested_too_deeply_is_a_parse_error_on_both_bindings_not_a_500(
        tmp_path: Path) -> None:
    with a2a_daemon(tmp_path) as (_, url):
        async with httpx.AsyncClient(timeout=30) as http:
            for depth in (1000, 200_000):  # past msgspec's limit, the first and far
                params = _nested(depth)
                r = await http.post(f"{url}/a2a/tck", headers=JSON, content=(
                    b'{"jsonrpc": "2.0", "id": 1, "method": "SendMessage", "params": '
                    + params + b"}"))
                assert r.status_code == 200, (depth, r.status_code, r.text[:200])
                error = r.json()["error"]
                assert (error["code"], error["message"]) == (
                    -32700, "parse error: JSON nested too deeply"), depth
                r = await http.post(f"{url}/a2a/tck/message:send", headers=JSON,
                                    content=params)
                assert r.status_code == 400, (depth, r.status_code, r.text[:200])
                assert r.json()["error"]["message"] == (
                    "the body is not JSON: JSON nested too deeply"), depth
            # nothing was made of them, and the door still serves
            listed = await http.get(f"{url}/a2a/tck/tasks")
            assert (listed.status_code, listed.json()["tasks"]) == (200, [])


@pytest.mark.timeout(120)
async def test_a_non_utf8_a2a_version_header_is_refused_saying_so_not_a_500(
        tmp_path: Path) -> None:
    with a2a_daemon(tmp_path) as (_, url):
        async with httpx.AsyncClient(timeout=30) as http:
            r = await http.post(f"{url}/a2a/tck", headers={**JSON, "A2A-Version": b"\xff1"},
                                json={"jsonrpc": "2.0", "id": 1, "method": "ListTasks",
                                      "params": {}})
            assert r.status_code == 200, r.text
            error = r.json()["error"]
            assert (error["code"], error["message"]) == (
                -32009, "A2A-Version '\\udcff1' is not served: this agent speaks 1.0")
            r = await http.get(f"{url}/a2a/tck/tasks", headers={"A2A-Version": b"\xff1"})
            assert r.status_code == 400, r.text
            assert r.json()["error"]["message"] == (
                "A2A-Version '\\udcff1' is not served: this agent speaks 1.0")
