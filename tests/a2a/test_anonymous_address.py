"""Anonymous callers from other hosts (`[a2a] anonymous_remote = true`; decision 1171): each
address off this host is an anonymous caller of its own, its tasks labelled with it, so
one host's caller reaches none of another's tasks (nor a loopback caller's); on loopback
every caller has the one address, and is one caller."""

from __future__ import annotations

import ipaddress
import textwrap
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from ..daemon_harness import Daemon, free_port
from .harness import tck_agent


def off_loopback() -> str | None:
    """An IPv4 address of this host that is not loopback, if it has one."""
    for addresses in psutil.net_if_addrs().values():
        for a in addresses:
            if a.family.name == "AF_INET" and not ipaddress.ip_address(a.address).is_loopback:
                return str(a.address)
    return None


async def rpc(http: httpx.AsyncClient, url: str, method: str, params: dict[str, Any]
              ) -> dict[str, Any]:
    r = await http.post(f"{url}/a2a/tck", json={"jsonrpc": "2.0", "id": 1, "method": method,
                                                "params": params})
    said: dict[str, Any] = r.json()
    return said


def message(prefix: str) -> dict[str, Any]:
    return {"message": {"messageId": f"{prefix}-{id(object())}", "role": "ROLE_USER",
                        "parts": [{"text": "hi"}]},
            "configuration": {"returnImmediately": True}}


@pytest.mark.timeout(120)
async def test_an_anonymous_caller_of_another_address_reaches_none_of_its_tasks(
        tmp_path: Path) -> None:
    address = off_loopback()
    if address is None:
        pytest.skip("this host has no address off loopback")
    port = free_port()
    d = Daemon(tmp_path, tck_agent(), extra=textwrap.dedent(f"""
        [http]
        listen = "0.0.0.0:{port}"
        allow_insecure_remote = true
        rate_per_minute = 0
        [a2a]
        anonymous = ["tck"]
        anonymous_remote = true
    """))
    d.start()
    try:
        here, there = f"http://127.0.0.1:{port}", f"http://{address}:{port}"
        async with httpx.AsyncClient(timeout=30) as http:
            local = (await rpc(http, here, "SendMessage", message("tck-complete-task"))
                     )["result"]["task"]["id"]
            remote = (await rpc(http, there, "SendMessage", message("tck-complete-task"))
                      )["result"]["task"]["id"]
            for url, theirs, mine in ((there, local, remote), (here, remote, local)):
                said = await rpc(http, url, "GetTask", {"id": theirs})
                assert said.get("error", {}).get("message") == f"no such task: {theirs}", said
                said = await rpc(http, url, "GetTask", {"id": mine})
                assert said["result"]["id"] == mine, said
                listed = await rpc(http, url, "ListTasks", {"pageSize": 100})
                assert [t["id"] for t in listed["result"]["tasks"]] == [mine], listed
    finally:
        d.close()
