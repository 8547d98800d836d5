"""A new user's trial of `egress = "gateways"` (issue 88's done-when): under a daemon
running as root, an agent naming no user (a dynamic uid of its own) tries each escape —
a direct connect, DNS, corral's own control socket, /etc/shadow, another agent's
directory, corral's state directory — and each is refused; what the kernel lets corral
see (the connect, the lookup's datagram, the control socket's connect, the open of
/etc/shadow) is an event of
the agent and its task, an audit row and a counter; /etc/shadow's content is never seen.
/etc/shadow is a decoy whose open fanotify lets corral refuse and record (opentrip.py);
the other opens are refused unseen: the mount namespace answers them with an errno and
tells no one (docs/security.md)."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import shutil
import textwrap
from pathlib import Path
from typing import Any

import msgspec
import pytest

from corral.daemon.tokens import tokens_of
from corral.supervisor.egresstrip import refusal_line
from corral.supervisor.refusals import TOPIC

from .conftest import ROOT
from .daemon_harness import free_port, in_process, shared_tmpdir
from .sandboxprobe import sandbox_refusal
from .test_http_api import SOCKET
from .test_metrics import samples, scrape, value

SYSTEM_PY = "/usr/bin/python3"  # (the tests' own interpreter is under root's 0700 home)
pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="a new user's trial as DESIGN runs it: "
                       "the daemon as root (the agent a dynamic uid, its refusals seen "
                       "in the network namespace the daemon holds)"),
    pytest.mark.skipif(sandbox_refusal(None) is not None,
                       reason=f"no sandbox here: {sandbox_refusal(None)}"),
    pytest.mark.skipif(not os.access(SYSTEM_PY, os.X_OK),
                       reason=f"no interpreter a dynamic uid reaches ({SYSTEM_PY})")]


def resolver() -> str:
    """Where the agent's lookup goes: resolv.conf's first nameserver (glibc's default
    the loopback), as the refusal names it."""
    for line in Path("/etc/resolv.conf").read_text().splitlines():
        parts = line.split()
        if parts[:1] == ["nameserver"] and len(parts) > 1:
            ip = ipaddress.ip_address(parts[1].split("%")[0])
            return f"[{ip}]:53" if ip.version == 6 else f"{ip}:53"
    return "127.0.0.1:53"


@pytest.mark.deadline(240)
async def test_a_new_users_trial_sees_each_escape_refused_and_recorded_never_shadow() -> None:
    tmp = shared_tmpdir()
    try:
        await trial(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


async def trial(tmp: Path) -> None:
    for name in ("box", "other"):
        (tmp / name).mkdir()
        (tmp / name).chmod(0o777)  # (each agent's cwd, its dynamic uid's to write)
    (tmp / "other" / "notes.txt").write_text("another agent's notes")
    agents = textwrap.dedent(f"""
        [agents.box]
        command = ["{SYSTEM_PY}", "{ROOT}/tests/egress_trial_agent.py"]
        env = {{ PYTHONPATH = "{ROOT}" }}
        cwd = "{tmp}/box"
        egress = "gateways"
        start_timeout = 60.0

        [agents.other]
        command = ["{SYSTEM_PY}", "{ROOT}/tests/egress_trial_agent.py"]
        env = {{ PYTHONPATH = "{ROOT}" }}
        cwd = "{tmp}/other"
        start_timeout = 60.0

        [gateway]
        listen = "127.0.0.1:{free_port()}"
    """)
    http = '\n[http]\nlisten = "127.0.0.1:0"\n'
    async with in_process(tmp, agents, http, "dynamic_uids = [61184, 65519]") as d:
        secret = (await tokens_of(d.services.store).create(
            "scraper", ["metrics:read"], None, None))[0]
        d.secrets = {"scraper": secret}
        bus = d.sup.events.follow(TOPIC)
        control = str(tmp / "corral.sock")
        done = await asyncio.wait_for(d.dispatcher.call(SOCKET, "tasks.run", msgspec.json.encode(
            {"agent": "box", "input": {"control": control, "other": f"{tmp}/other/notes.txt",
                                       "state": f"{tmp}/state"}})), 90)
        done = msgspec.json.decode(msgspec.json.encode(done))
        assert done["status"] == "succeeded", done
        seen, task = done["output"], done["task_id"]
        # each refused, in the error's own words; corral's socket says whose refusal
        assert seen["connect"] == {"error": "ConnectionRefusedError: [Errno 111] "
                                            "Connection refused"}
        assert seen["dns"]["error"].startswith("gaierror: "), seen["dns"]
        assert seen["control"] == {"ok": refusal_line("box", control).decode()}
        assert "refused by corral's boundary" in seen["control"]["ok"]
        # its decoy's open denied by fanotify (opentrip.py): EPERM, not the mode's EACCES
        assert seen["shadow"] == {"error": "PermissionError: [Errno 1] Operation not "
                                           "permitted: '/etc/shadow'"}
        assert seen["other"] == {"error": "FileNotFoundError: [Errno 2] No such file or "
                                          f"directory: '{tmp}/other/notes.txt'"}
        assert seen["state"] == {"error": "FileNotFoundError: [Errno 2] No such file or "
                                          f"directory: '{tmp}/state'"}
        # never the content of /etc/shadow, anywhere in what the agent got back
        shadow = Path("/etc/shadow").read_text()
        first = shadow.splitlines()[0] if shadow else "root:"
        assert first not in msgspec.json.encode(seen).decode()
        # what the kernel lets corral see: each an event of box and its task
        want = {("connect", "192.0.2.1:443"), ("send", resolver()),
                ("connect", f"unix:{control}"), ("open", "/etc/shadow")}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        got: dict[tuple[str, str], dict[str, Any]] = {}
        while not want <= set(got):
            assert loop.time() < deadline, f"refusals seen: {sorted(got)}"
            while bus.queue:
                event = msgspec.json.decode(bus.pop())
                got[(event["data"]["kind"], event["data"]["target"])] = event
            await asyncio.sleep(0.05)
        d.sup.events.unfollow(bus)
        for key in want:
            event = got[key]
            assert (event["topic"], event["tenant"], event["data"]["agent"],
                    event["data"]["task"]) == (TOPIC, "default", "box", task), event
        # an audit row each
        rows = {(r[5], *(lambda a: (a["agent"], a["task"], a["kind"], a["target"]))(
            msgspec.json.decode(r[4]))) for r in await d.services.store.audit_log_now()
            if r[3] == TOPIC}
        assert {("refused", "box", task, kind, target) for kind, target in want} <= rows
        # and counted, per agent and kind
        status, _, text = await scrape(d)
        assert status == 200
        series = samples(text)
        assert value(series, "corral_boundary_refusals_total", agent="box",
                     kind="connect") >= 2
        assert value(series, "corral_boundary_refusals_total", agent="box",
                     kind="send") >= 1
        assert value(series, "corral_boundary_refusals_total", agent="box",
                     kind="open") == 1
