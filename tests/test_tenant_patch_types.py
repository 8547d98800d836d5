"""`PATCH /tenants/{name}` refuses a value of the wrong type (issue 57 item 4): `false`
is no number 0 and no directory, so `{"dir": false, "max_cpu_percent": false}` is a 400
naming the key, the tenant's table untouched (it answered 200, resetting both)."""

from __future__ import annotations

from pathlib import Path

import pytest

from .daemon_harness import hello
from .test_http_api import serving


@pytest.mark.deadline(120)
async def test_a_patch_of_wrong_types_is_refused_and_changes_nothing(tmp_path: Path
                                                                     ) -> None:
    async with serving(tmp_path, hello("hello")) as api:
        await api.token("admin", "admin")
        status, body, _ = await api.ask("POST", "/tenants", "admin", {"tenants": {
            "t": {"max_queue": 3, "max_cpu_percent": 50}}})
        assert (status, body) == (200, {"added": ["t"]})
        status, body, _ = await api.ask("PATCH", "/tenants/t", "admin",
                                        {"set": {"dir": False, "max_cpu_percent": False}})
        assert (status, body["detail"]) == (
            400, "tenants.set: tenants.t.max_cpu_percent: Expected `float`, got `bool`\n"
                 "tenants.set: tenants.t.dir: Expected `str | null`, got `bool`")
        status, body, _ = await api.ask("GET", "/tenants", "admin", None)
        assert status == 200
        assert next(t for t in body["tenants"] if t["name"] == "t")["quotas"] == {
            "max_queue": 3, "max_cpu_percent": 50}
        # a number 0 still resets a key
        status, body, _ = await api.ask("PATCH", "/tenants/t", "admin",
                                        {"set": {"max_cpu_percent": 0}})
        assert (status, body["quotas"]) == (200, {"max_queue": 3})
