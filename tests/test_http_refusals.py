"""How a refusal reads over HTTP (daemon/http/route.py, decisions 146 and 147): a fixed
quota is a 403 without Retry-After, since waiting changes nothing; a rate is a 429 whose
Retry-After says when the next is admitted; every problem's title is its status's."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral import jsonrpc

from .daemon_harness import hello, problem, sleeper
from .test_http_api import serving

QUOTAS = """
[tenants.acme]
max_agents = 1
max_replicas = 2
[tenants.slow]
rate_per_minute = 2
"""


def in_tenant(agent: str, tenant: str) -> str:
    return agent + f'tenant = "{tenant}"\n'


@pytest.mark.deadline(120)
async def test_a_fixed_quota_is_a_403_and_a_rate_a_429_with_its_honest_retry_after(
        tmp_path: Path) -> None:
    agents = (in_tenant(hello("a-hello"), "acme") + in_tenant(sleeper("r1"), "slow")
              + sleeper("rated") + "rate_per_minute = 1\n")
    async with serving(tmp_path, agents, QUOTAS) as api:
        sup = api.d.sup
        await api.token("op", "agents:write", "tasks:run", "agents:read")

        # a scale without its count is refused, not scaled to a default
        for body in ({}, None):
            status, got, r = await api.ask("POST", "/agents/a-hello/scale", "op", body)
            assert (status, got["detail"]) == (400, "invalid params: Object missing required "
                                                    "field `replicas`"), got
        assert len(sup.agents["a-hello"].replicas) == 1
        # max_replicas: a quota, not a rate; no Retry-After to loop on
        status, body, r = await api.ask("POST", "/agents/a-hello/scale", "op",
                                        {"replicas": 5})
        assert (status, body) == (403, problem(
            403, "forbidden", "tenant acme: max_replicas 2 (1 in use); scaling a-hello to "
                              "5 needs 4 more", jsonrpc.QUOTA_EXCEEDED))
        assert "Retry-After" not in r.headers
        assert len(sup.agents["a-hello"].replicas) == 1
        # max_agents, the same
        status, body, r = await api.ask("POST", "/agents", "op", {"agents": {"a2": {
            "command": "true", "tenant": "acme"}}, "check": False})
        assert (status, body) == (403, problem(
            403, "forbidden", "tenant acme: max_agents 1 reached (1 in use); adding a2 "
                              "needs 1 more", jsonrpc.QUOTA_EXCEEDED))
        assert "Retry-After" not in r.headers and "a2" not in sup.agents

        # the tenant's rate: 2 a minute, so the third waits about 30 s for its room; an
        # agent's own rate: 1 a minute, so the second waits about a minute
        for agent, admitted, detail, waits in (
                ("r1", 2, "tenant slow: rate_per_minute 2 reached; a task for r1 waits "
                          "for the next minute's room", range(25, 31)),
                ("rated", 1, "rate limit: agent rated takes 1 task a minute",
                 range(55, 61))):
            task = {"agent": agent, "input": {"do": "echo"}}
            for _ in range(admitted):
                status, body, _ = await api.ask("POST", "/tasks", "op", task)
                assert status == 202, body
            status, body, r = await api.ask("POST", "/tasks", "op", task)
            assert (status, body) == (429, problem(429, "too many requests", detail,
                                                   jsonrpc.REFUSED))
            assert int(r.headers["Retry-After"]) in waits, (agent, r.headers)
