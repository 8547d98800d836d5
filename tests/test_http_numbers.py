"""The REST API reads numbers as its OpenAPI document's JSON Schema does: `2.0` is the
integer 2 (schemathesis sends it so; decision 273), where a fraction is still refused for
an integer, and an agent's input is passed on as it came."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.daemon.http import bodies
from corral.daemon.http.resources import RESOURCES
from corral.methods import REGISTRY

from .daemon_harness import hello
from .test_http_api import serving


@pytest.mark.deadline(120)
async def test_a_whole_float_is_an_integer_a_fraction_is_not(tmp_path: Path) -> None:
    async with serving(tmp_path, hello("hello")) as api:
        await api.token("admin", "admin")
        status, body, _ = await api.ask("POST", "/agents/hello/scale", "admin",
                                        {"replicas": 2.0})
        assert status == 200, body
        assert len(api.d.sup.agent("hello").replicas) == 2
        status, body, _ = await api.ask("POST", "/agents/hello/scale", "admin",
                                        {"replicas": 2.5})
        assert (status, body["detail"]) == (
            400, "invalid params: Expected `int`, got `float` - at `$.replicas`")
        assert len(api.d.sup.agent("hello").replicas) == 2
        # a config table's integers too, typed by the config's Structs after the body
        status, body, _ = await api.ask("POST", "/tenants", "admin", {"tenants": {
            "t": {"max_queue": 3.0, "rate_per_minute": 1.5}}})
        assert (status, body) == (200, {"added": ["t"]})
        status, body, _ = await api.ask("PATCH", "/tenants/t", "admin",
                                        {"set": {"max_concurrent_tasks": 2.0}})
        assert status == 200, body
        assert body["quotas"] == {"max_queue": 3, "rate_per_minute": 1.5,
                                  "max_concurrent_tasks": 2}
        assert isinstance(body["quotas"]["max_queue"], int)
        status, body, _ = await api.ask("PATCH", "/tenants/t", "admin",
                                        {"set": {"max_queue": 4.5}})
        assert (status, body["detail"]) == (
            400, "tenants.set: tenants.t.max_queue: Expected `int`, got `float`")


def test_an_agents_input_is_passed_on_as_it_came() -> None:
    fields = next(r.body for r in RESOURCES if r.method == "tasks.submit")
    into = bodies.body_type(REGISTRY["tasks.submit"].params, fields)
    got = bodies.decode(b'{"agent": "a", "input": {"x": 2.0, "y": [1.0]}, "priority": 3.0}',
                        into, fields)
    assert got.priority == 3 and isinstance(got.priority, int)
    # read again for the priority's sake: the input's values kept, floats floats
    assert bytes(got.input) == b'{"x":2.0,"y":[1.0]}'
    # and the usual body's input is its very bytes
    got = bodies.decode(b'{"agent": "a", "input": {"x": 2.0}, "priority": 3}', into, fields)
    assert bytes(got.input) == b'{"x": 2.0}'
