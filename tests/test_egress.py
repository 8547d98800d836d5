"""egress = "gateways" | "none", read_paths, write_paths: the agent's boundary enforced
(docs/sandbox.md#egress), on real bubblewrap in the real daemon. A compromised agent
(tests/egress_agent.py) tries every way out it has, itself and from a child process, and
each refusal comes back in the error's own words; its benign work through corral's
gateways, with the official MCP and openai clients unchanged, succeeds beside it."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import secrets
import socket
import subprocess
import textwrap
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from corral.supervisor.config import ConfigError
from corral.supervisor.configload import check_commands, load_config
from corral.supervisor.egresstrip import refusal_line
from corral.supervisor.isolation import isolation
from corral.supervisor.refusals import PER_MINUTE, TOPIC

from .conftest import EXAMPLES, ROOT
from .daemon_harness import PY, config_text, free_port, in_process
from .sandboxprobe import sandbox_refusal
from .servers.model_upstream import StandIn
from .test_http_api import SOCKET

HERE = Path(__file__).resolve().parent
KEY = "sk-provider-SECRET-egress"
REFUSED = "ConnectionRefusedError: [Errno 111] Connection refused"
NO_FILE = "FileNotFoundError: [Errno 2] No such file or directory"
pytestmark = pytest.mark.skipif(sandbox_refusal(None) is not None,
                                reason=f"no sandbox here: {sandbox_refusal(None)}")


@pytest.fixture
async def upstream() -> AsyncIterator[StandIn]:
    stand_in = StandIn()
    await stand_in.start()
    try:
        yield stand_in
    finally:
        await stand_in.close()


@pytest.fixture(autouse=True)
def provider_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORRAL_TEST_PROVIDER_KEY", KEY)


def fleet(tmp: Path, upstream: str, egress: str, extra: str = "") -> str:
    home = tmp / "home"
    home.mkdir(exist_ok=True)
    return textwrap.dedent(f"""
        [agents.box]
        command = ["{PY}", "{HERE}/egress_agent.py"]
        env = {{ PYTHONPATH = "{ROOT}" }}
        cwd = "{home}"
        egress = "{egress}"
        tools = ["notes__*"]
        stop_timeout = 5.0
        # its start imports the openai and mcp clients in a sandbox: beside a busy loop
        # per core that passed the default 10 s, and five kills failed the agent
        start_timeout = 60.0
        {extra}

        [mcp_servers.notes]
        command = ["{PY}", "{EXAMPLES}/notes_server.py"]
        start_timeout = 30.0

        [gateway]
        listen = "127.0.0.1:{free_port()}"

        [models.gpt-small]
        url = "{upstream}/v1"
        format = "openai"
        key_env = "CORRAL_TEST_PROVIDER_KEY"
    """)


async def run(d: Any, task: dict[str, Any]) -> Any:
    done = await asyncio.wait_for(d.dispatcher.call(SOCKET, "tasks.run", msgspec.json.encode(
        {"agent": "box", "input": task})), 90)
    done = msgspec.json.decode(msgspec.json.encode(done))
    assert done["status"] == "succeeded", done
    return done["output"]


async def boundary(d: Any) -> str | None:
    st = await d.dispatcher.call(SOCKET, "agents.status", msgspec.json.encode(
        {"names": ["box"]}))
    [replica] = msgspec.json.decode(msgspec.json.encode(st))["agents"]
    return replica.get("boundary")


@contextlib.contextmanager
def planted(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """What the test opens on the host for the agent to try: a TCP listener and a UDP
    socket on loopback, a unix socket in the host's /tmp, an abstract one, a secret."""
    name = f"corral-egress-{secrets.token_hex(4)}"
    secret = tmp_path / "secret.txt"
    secret.write_text("the host's secret")
    with socket.socket() as tcp, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp, \
            socket.socket(socket.AF_UNIX) as unix, socket.socket(socket.AF_UNIX) as abstract:
        tcp.bind(("127.0.0.1", 0))
        tcp.listen(8)
        udp.bind(("127.0.0.1", 0))
        udp.setblocking(False)
        unix.bind(f"/tmp/{name}.sock")
        unix.listen(8)
        abstract.bind("\0" + name)
        abstract.listen(8)
        try:
            yield {"tcp_port": tcp.getsockname()[1], "udp_port": udp.getsockname()[1],
                   "planted": f"/tmp/{name}.sock", "abstract": name,
                   "control": str(tmp_path / "corral.sock"), "secret": str(secret),
                   "udp": udp}
        finally:
            os.unlink(f"/tmp/{name}.sock")


def attacks_refused(seen: dict[str, Any], seen_control: str, held: bool = False) -> None:
    """`held`: in a network namespace the daemon holds (egress = "gateways" as root);
    `seen_control`: the control socket's path."""
    assert seen["tcp"] == {"error": REFUSED}
    # a datagram to loopback is sent, to the sandbox's own loopback: nothing listens
    # there (the test's socket, on the host's, gets nothing: below); off the host, there
    # is no route at all
    assert seen["udp"] == {"ok": len(b"exfiltrated")}
    if held:
        # in a namespace the daemon holds every address is its loopback's, so that what
        # it refuses is seen (egresswatch.py): nothing listens there
        assert seen["udp_out"] == {"ok": len(b"exfiltrated")}
        assert seen["tcp_out"] == {"error": REFUSED}
    else:
        assert seen["udp_out"] == {"error": "OSError: [Errno 101] Network is unreachable"}
        assert seen["tcp_out"] == {"error": "OSError: [Errno 101] Network is unreachable"}
    assert seen["raw"] == {"error": "PermissionError: [Errno 1] Operation not permitted"}
    # no family but unix, IPv4 and IPv6 (supervisor/seccomp.py)
    for name in ("netlink", "packet"):
        assert seen[name] == {
            "error": "OSError: [Errno 97] Address family not supported by protocol"}, name
    # corral's own socket's path is its trip (egresstrip.py): the refusal in words
    assert seen["control"] == {"ok": refusal_line("box", seen_control).decode()}
    assert seen["planted"] == {"error": NO_FILE}
    assert seen["abstract"] == {"error": REFUSED}  # abstract sockets are per netns
    assert seen["secret"]["error"].startswith(NO_FILE)
    assert seen["upstream"] == {"error": REFUSED}  # the provider, but for corral


async def each_refusal_recorded(d: Any, bus: Any, p: dict[str, Any], upstream: int) -> None:
    """What the attack's namespace refused, itself and its child, each a `boundary.refused`
    of agent box and its task, and counted in /metrics' families (issue 88)."""
    want = sorted(2 * [("connect", f"unix:{p['control']}"),
                       ("connect", f"127.0.0.1:{p['tcp_port']}"),
                       ("connect", "192.0.2.1:443"), ("connect", f"127.0.0.1:{upstream}"),
                       ("send", f"127.0.0.1:{p['udp_port']}"), ("send", "192.0.2.1:53")])
    got: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while len(got) < len(want):
        assert loop.time() < deadline, f"refusals seen: {got}"
        while bus.queue:
            got.append(msgspec.json.decode(bus.pop())["data"])
        await asyncio.sleep(0.05)
    assert sorted((g["kind"], g["target"]) for g in got) == want
    # the attack's task's: the one the replica ran
    [task] = {g["task"] for g in got}
    assert {g["agent"] for g in got} == {"box"} and d.sup.tasks.get(task).agent == "box"
    counts = d.sup.parts.refusals.counts
    assert (counts[("box", "connect")], counts[("box", "send")]) == (8, 4)


@pytest.mark.deadline(240)
async def test_gateways_reach_corral_and_nothing_else(tmp_path: Path,
                                                      upstream: StandIn) -> None:
    host = upstream.url.rpartition(":")[2]
    async with in_process(tmp_path, fleet(tmp_path, upstream.url, "gateways")) as d:
        bus = d.sup.events.follow(TOPIC)
        with planted(tmp_path) as p:
            udp = p.pop("udp")
            seen = await run(d, {"do": "attack", "upstream_port": int(host), **p})
            held = os.geteuid() == 0
            attacks_refused(seen["self"], p["control"], held)
            assert seen["child"] is not None, seen["child_err"]
            attacks_refused(seen["child"], p["control"], held)
            # sendto on loopback queues the datagram before it returns: none came here
            with pytest.raises(BlockingIOError):
                udp.recvfrom(100)
        if held:  # (the namespace the daemon holds is seen: egresswatch.py)
            await each_refusal_recorded(d, bus, p, int(host))
        d.sup.events.unfollow(bus)
        # its benign work, meanwhile, through both gateways at its environment's
        # addresses (TCP, as outside a sandbox), with the clients unchanged
        out = await run(d, {"do": "gateways", "title": "otters", "say": "hello"})
        assert out["tool"] == "stored otters"
        assert out["model"] == "echo: hello"
        assert out["env"]["CORRAL_MCP_SOCKET"] is None
        assert out["env"]["CORRAL_MCP_URL"].startswith("http://127.0.0.1:")
        assert [r["key"] for r in upstream.requests] == [KEY]
        # as root the daemon holds the sandbox's network namespace and listens in it
        # itself: nothing runs in the sandbox but bwrap's init and the agent; otherwise
        # the relay's forwarder is a third
        assert await run(d, {"do": "processes"}) == (
            ["1", "2"] if os.geteuid() == 0 else ["1", "2", "3"])
        # and `corral status` names the layer
        assert await boundary(d) == "egress gateways: " + (
            "bubblewrap, in a network namespace corral holds: its gateways alone"
            if os.geteuid() == 0 else
            "bubblewrap, a network namespace of its own: its gateways alone, relayed")


@pytest.mark.deadline(240)
async def test_none_reaches_not_even_the_gateways(tmp_path: Path, upstream: StandIn) -> None:
    async with in_process(tmp_path, fleet(tmp_path, upstream.url, "none")) as d:
        out = await run(d, {"do": "gateways", "title": "otters", "say": "hello"})
        assert out["tool"].startswith("error: ")
        assert out["model"] == "error: APIConnectionError"
        assert upstream.requests == []
        held = os.geteuid() == 0  # (as root, an empty namespace the daemon holds)
        assert await boundary(d) == "egress none: bubblewrap, an empty network namespace" + (
            " corral holds" if held else "")
        bus = d.sup.events.follow(TOPIC)
        with planted(tmp_path) as p:
            p.pop("udp")
            upstream_port = free_port()
            seen = await run(d, {"do": "attack", "upstream_port": upstream_port, **p})
            attacks_refused(seen["self"], p["control"], held)
        if held:  # each of the attack's ways out a refusal of its task, seen
            want = {("connect", f"127.0.0.1:{p['tcp_port']}"), ("connect", "192.0.2.1:443"),
                    ("connect", f"unix:{p['control']}"),
                    ("connect", f"127.0.0.1:{upstream_port}"),
                    ("send", f"127.0.0.1:{p['udp_port']}"), ("send", "192.0.2.1:53")}
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 30
            got: set[tuple[str, str]] = set()
            while not want <= got:
                assert loop.time() < deadline, f"refusals seen: {got}"
                while bus.queue:
                    data = msgspec.json.decode(bus.pop())["data"]
                    assert data["agent"] == "box" and data["task"] is not None
                    got.add((data["kind"], data["target"]))
                await asyncio.sleep(0.05)
        d.sup.events.unfollow(bus)


@pytest.mark.skipif(os.geteuid() != 0, reason="refusals are seen in a namespace the "
                    "daemon holds, as root")
@pytest.mark.deadline(240)
async def test_a_flood_of_refused_connects_is_counted_whole_and_said_within_its_rate(
        tmp_path: Path, upstream: StandIn) -> None:
    """An agent refused in a loop: /metrics counts every refusal, the bus and the audit
    carry a minute's burst of them (refusals.py), nothing grows with the flood."""
    async with in_process(tmp_path, fleet(tmp_path, upstream.url, "none")) as d:
        bus = d.sup.events.follow(TOPIC)
        loop = asyncio.get_running_loop()
        began = loop.time()
        assert await run(d, {"do": "flood", "n": 3000}) == 3000
        refusals = d.sup.parts.refusals
        deadline = loop.time() + 30
        while refusals.counts.get(("box", "connect"), 0) < 3000:
            assert loop.time() < deadline, f"counted: {refusals.counts}"
            await asyncio.sleep(0.05)
        took = loop.time() - began
        assert refusals.counts == {("box", "connect"): 3000}
        said = [msgspec.json.decode(bus.pop())["data"] for _ in range(len(bus.queue))]
        d.sup.events.unfollow(bus)
        # a minute's burst, and what its bucket refilled (one a second) while the flood
        # lasted: on busy cores it lasts over a second
        assert PER_MINUTE <= len(said) <= PER_MINUTE + math.ceil(took * PER_MINUTE / 60), (
            len(said), took)
        assert refusals.unsaid == 3000 - len(said)
        rows = [r for r in await d.services.store.audit_log_now(10_000) if r[3] == TOPIC]
        assert len(rows) == len(said)
        # its namespace (and what watched it) goes with the agent
        assert "box#0" in d.sup.egress_doors.doors
        await d.dispatcher.call(SOCKET, "agents.remove", msgspec.json.encode(
            {"names": ["box"]}))
        assert "box#0" not in d.sup.egress_doors.doors


@pytest.mark.deadline(240)
async def test_read_and_write_paths_are_all_it_has_of_the_host(tmp_path: Path,
                                                               upstream: StandIn) -> None:
    shared, out = tmp_path / "shared", tmp_path / "out"
    shared.mkdir()
    out.mkdir()
    (shared / "data.txt").write_text("shared data")
    (tmp_path / "other.txt").write_text("not shared")
    extra = f'read_paths = ["{shared}"]\nwrite_paths = ["{out}"]'
    async with in_process(tmp_path, fleet(tmp_path, upstream.url, "gateways", extra)) as d:
        seen = await run(d, {"do": "files",
                             "read": [str(shared / "data.txt"), str(tmp_path / "other.txt"),
                                      str(Path.home() / ".bashrc")],
                             "write": [str(out / "made.txt"), str(shared / "made.txt")]})
    assert seen["read"] == {
        str(shared / "data.txt"): {"ok": "shared data"},
        str(tmp_path / "other.txt"): {
            "error": f"{NO_FILE}: '{tmp_path / 'other.txt'}'"},
        str(Path.home() / ".bashrc"): {
            "error": f"{NO_FILE}: '{Path.home() / '.bashrc'}'"}}
    assert seen["write"] == {
        str(out / "made.txt"): {"ok": str(out / "made.txt")},
        str(shared / "made.txt"): {
            "error": f"OSError: [Errno 30] Read-only file system: '{shared / 'made.txt'}'"}}
    assert (out / "made.txt").read_text() == "written from the sandbox"
    assert not (shared / "made.txt").exists()


def write_config(tmp_path: Path, agents: str, rest: str = "", supervisor: str = "") -> Path:
    config = tmp_path / "corral.toml"
    config.write_text(config_text(agents, tmp_path / "corral.sock", tmp_path / "state",
                                  supervisor) + rest)
    return config


def test_an_egress_this_host_cannot_enforce_is_refused_unless_warned(
        tmp_path: Path) -> None:
    """No layer here can enforce it (bubblewrap absent: the one layer corral has for
    egress): the agent does not start, with the reason; with egress_fallback = "warn"
    the config stands."""
    base = f'[agents.a]\ncommand = ["{PY}"]\ncwd = "{tmp_path}/a"\negress = "gateways"\n'
    gw = '[gateway]\nlisten = "127.0.0.1:8765"\n'
    cfg = write_config(tmp_path, base, gw, supervisor=f'bwrap = "{tmp_path}/no/bwrap"')
    with pytest.raises(Exception) as err:
        check_commands(load_config(cfg), str(cfg))
    assert str(err.value) == (
        f'{cfg}: agents.a.egress: egress = "gateways" cannot be enforced on this host: '
        f"bubblewrap is not installed ({tmp_path}/no/bwrap not found; Debian's package is "
        f'bubblewrap) (egress_fallback = "warn" runs it unenforced)')
    cfg = write_config(tmp_path, base + 'egress_fallback = "warn"\n', gw,
                       supervisor=f'bwrap = "{tmp_path}/no/bwrap"')
    check_commands(load_config(cfg), str(cfg))


@pytest.mark.deadline(120)
async def test_warned_it_starts_unenforced_saying_why(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    agents = textwrap.dedent(f"""
        [agents.box]
        command = ["{PY}", "{HERE}/egress_agent.py"]
        env = {{ PYTHONPATH = "{ROOT}" }}
        cwd = "{home}"
        egress = "none"
        egress_fallback = "warn"
    """)
    async with in_process(tmp_path, agents, supervisor=f'bwrap = "{tmp_path}/no/bwrap"') as d:
        with planted(tmp_path) as p:
            p.pop("udp")
            seen = await run(d, {"do": "attack", "upstream_port": free_port(), **p})
        assert seen["self"]["tcp"] == {"ok": "connected"}  # unenforced: the host's network
        assert await boundary(d) == 'egress none: not enforced (egress_fallback = "warn")'
        logs = (tmp_path / "state" / "logs" / "box.log").read_text()
        assert (f'egress = "none" is not enforced (egress_fallback = "warn"): bubblewrap is '
                f"not installed ({tmp_path}/no/bwrap not found; Debian's package is "
                "bubblewrap)") in logs


def test_egress_config_errors_are_exact(tmp_path: Path) -> None:
    base = f'[agents.a]\ncommand = ["{PY}"]\ncwd = "{tmp_path}/a"\negress = "gateways"\n'
    for gateway, why in (
            ("", 'egress = "gateways" needs [gateway] listen on a loopback address or '
                 '"unix:PATH" (the gateways are relayed into the sandbox\'s empty network '
                 "namespace from there)"),
            ('[gateway]\nlisten = "0.0.0.0:8765"\nallow_remote = true\n',
             'egress = "gateways" needs [gateway] listen on a loopback address or '
             '"unix:PATH" (the gateways are relayed into the sandbox\'s empty network '
             "namespace from there)"),
            ('[gateway]\nlisten = "127.0.0.1:8765"\nagent_tokens = false\n',
             'egress = "gateways" needs [gateway] agent_tokens = true (the agent reaches '
             "the gateways with its own token)")):
        with pytest.raises(Exception) as err:
            load_config(write_config(tmp_path, base, gateway))
        assert str(err.value) == f"{tmp_path / 'corral.toml'}: agents.a.egress: {why}"
    with pytest.raises(Exception) as err:
        load_config(write_config(tmp_path, base.replace('"gateways"', '"open"')))
    assert "agents.a.egress: Invalid enum value 'open'" in str(err.value)


def test_a_tenants_egress_is_a_floor_its_agents_cannot_lower(tmp_path: Path) -> None:
    agents = "".join(f'[agents.{n}]\ncommand = ["{PY}"]\ncwd = "{tmp_path}/{n}"\n'
                     f'tenant = "t"\n{e}\n'
                     for n, e in (("plain", ""), ("lower", 'egress = "any"'),
                                  ("stricter", 'egress = "none"'),
                                  ("hostnet", 'sandbox = "none"\nnetwork = "host"')))
    cfg = load_config(write_config(tmp_path, agents, '[tenants.t]\negress = "gateways"\n'
                                   '[gateway]\nlisten = "127.0.0.1:8765"\n'))
    tenant = cfg.tenants["t"]
    got = {n: tuple(isolation(cfg.agents[n], tenant)) for n in cfg.agents}
    assert got == {"plain": ("bwrap", "gateways", "gateways"),
                   "lower": ("bwrap", "gateways", "gateways"),
                   "stricter": ("bwrap", "none", "none"),
                   "hostnet": ("bwrap", "gateways", "gateways")}


def test_the_relay_passes_a_connection_to_the_gateways_socket(tmp_path: Path) -> None:
    """Without root (no namespace of the daemon's: egressdoors.py), the sandbox's first
    program is the relay (egressrelay.py): a client inside reaches the address its
    environment names, and what it sends arrives at the gateways' unix socket and back."""
    from corral.supervisor.sandbox import GatewayRelay, sandboxed

    port = free_port()
    path = tmp_path / "gw.sock"
    client = textwrap.dedent(f"""
        import socket
        with socket.create_connection(("127.0.0.1", {port}), timeout=10) as s:
            s.sendall(b"ping")
            s.shutdown(socket.SHUT_WR)
            print(s.recv(100).decode())
    """)
    home = tmp_path / "home"
    home.mkdir()
    with socket.socket(socket.AF_UNIX) as gateways:
        gateways.bind(str(path))
        gateways.listen(1)
        gateways.settimeout(30)
        argv = sandboxed([PY, "-c", client], program="bwrap", cwd=str(home), env={},
                         network="gateways", root=os.geteuid() == 0,
                         read_only=[str(ROOT)],
                         relay=GatewayRelay(f"http://127.0.0.1:{port}/mcp", str(path), PY))
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
        try:
            conn, _ = gateways.accept()
            with conn:
                assert conn.recv(100) == b"ping"
                conn.sendall(b"pong")
            out, _ = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert (proc.returncode, out) == (0, "pong\n")


def test_a_tenants_caller_may_tighten_egress_never_loosen_it(tmp_path: Path) -> None:
    """What a tenant's caller may name (daemon/privilege.py): a stricter egress than its
    tenant's stands (the stricter holds either way); a looser one is no loosening; but
    no paths of the host, and no `egress_fallback = "warn"`, which would run the
    tenant's floor unenforced."""
    from corral.daemon.privilege import refusal
    from corral.supervisor.config import AgentSpec, TenantSpec

    tenant = TenantSpec(egress="gateways")

    def asked(**keys: Any) -> tuple[str, str] | None:
        spec = AgentSpec(name="a", command="true", tenant="t", cwd=str(tmp_path), **keys)
        return refusal(spec, "t", tenant, str(tmp_path))

    assert asked(egress="none") is None
    assert asked(egress="any") is None
    assert isolation(AgentSpec(name="a", command="true", egress="any"), tenant) == (
        "bwrap", "gateways", "gateways")
    assert asked(egress_fallback="warn") == (
        "egress_fallback", "\"warn\" differs from tenant t's (\"refuse\")")
    assert asked(read_paths=["/etc"]) == (
        "read_paths", "[\"/etc\"] differs from tenant t's (none)")
    assert asked(write_paths=["/srv"]) == (
        "write_paths", "[\"/srv\"] differs from tenant t's (none)")


@pytest.mark.deadline(240)
def test_its_gateways_are_there_after_an_upgrade() -> None:
    """`corral upgrade` keeps the agent's process; the gateways' listener in its network
    namespace (the old image's, as root) is made again by the new one in the same
    namespace, so the gateway answers it at the same address (the gateway's own page:
    an agent's token across an upgrade is another matter)."""
    from .daemon_harness import Daemon, shared_tmpdir

    tmp = shared_tmpdir()
    config = fleet(tmp, "http://127.0.0.1:9", "gateways")
    d = Daemon(tmp, config[:config.index("[models.")])
    try:
        d.start()

        def metadata() -> Any:
            done = d.ask("tasks.run", {"agent": "box", "input": {"do": "metadata"}})
            assert done["status"] == "succeeded", done
            return done["output"]

        assert metadata() == {"ok": 200}
        pid = d.status()["box#0"]["pid"]
        upgraded = d.cli("upgrade")
        assert upgraded.returncode == 0, upgraded.stderr + upgraded.stdout
        assert d.status()["box#0"]["pid"] == pid  # the same process, kept
        assert metadata() == {"ok": 200}
        assert d.stop() == 0
    finally:
        d.close()


# -- an MCP server's own egress (issue 88) ------------------------------------------------
@contextlib.contextmanager
def answering() -> Iterator[socket.socket]:
    """A host listener on loopback answering each connection "pong" (a thread)."""
    import threading

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                conn.recv(100)
                conn.sendall(b"pong\n")

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield listener
    finally:
        listener.close()


def reach_server(tmp: Path, egress: str) -> str:
    home = tmp / "server-home"
    home.mkdir(exist_ok=True)
    return textwrap.dedent(f"""
        [mcp_servers.reach]
        command = ["{PY}", "{HERE}/servers/reach_mcp.py"]
        cwd = "{home}"
        {egress}
    """)


async def reach(d: Any, host: str, port: int) -> str:
    res = await d.dispatcher.call(SOCKET, "tools.call", msgspec.json.encode(
        {"name": "reach__reach", "arguments": {"host": host, "port": port}}))
    return str(msgspec.json.decode(msgspec.json.encode(res))["content"][0]["text"])


@pytest.mark.skipif(os.geteuid() != 0, reason="egress_allow: the daemon holds the "
                    "server's network namespace as root")
@pytest.mark.deadline(120)
async def test_an_mcp_server_reaches_its_egress_allow_and_nothing_else(
        tmp_path: Path) -> None:
    with answering() as allowed, answering() as other:
        a, b = allowed.getsockname()[1], other.getsockname()[1]
        server = reach_server(tmp_path, f'egress = "none"\negress_allow = ["127.0.0.1:{a}"]')
        async with in_process(tmp_path, "", server) as d:
            bus = d.sup.events.follow(TOPIC)
            # its allowed address, passed on by the daemon to the host's
            assert await reach(d, "127.0.0.1", a) == "connected: pong"
            # anything else, on the host or off it: refused, each seen as its refusal
            assert await reach(d, "127.0.0.1", b) == (
                "ConnectionRefusedError: [Errno 111] Connection refused")
            assert await reach(d, "192.0.2.1", 443) == (
                "ConnectionRefusedError: [Errno 111] Connection refused")
            # corral's control socket's path: its trip, saying whose refusal (egresstrip)
            control = str(tmp_path / "corral.sock")
            res = await d.dispatcher.call(SOCKET, "tools.call", msgspec.json.encode(
                {"name": "reach__reach", "arguments": {"unix": control}}))
            assert msgspec.json.decode(msgspec.json.encode(res))["content"][0]["text"] == (
                f"connected: {refusal_line('reach', control).decode().strip()}")
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 30
            while len(bus.queue) < 3:
                assert loop.time() < deadline, "its refusals were never told"
                await asyncio.sleep(0.05)
            got = [msgspec.json.decode(bus.pop())["data"] for _ in range(len(bus.queue))]
            d.sup.events.unfollow(bus)
            assert [(g["agent"], g["task"], g["kind"], g["target"]) for g in got] == [
                ("reach", None, "connect", f"127.0.0.1:{b}"),
                ("reach", None, "connect", "192.0.2.1:443"),
                ("reach", None, "connect", f"unix:{control}")]
    # and without egress: the host's network as before
    with answering() as other:
        port = other.getsockname()[1]
        async with in_process(tmp_path, "", reach_server(tmp_path, "")) as d:
            assert await reach(d, "127.0.0.1", port) == "connected: pong"


def test_an_mcp_servers_egress_config_errors_are_exact(tmp_path: Path) -> None:
    def said(table: str) -> str:
        p = tmp_path / "c.toml"
        p.write_text(f'[mcp_servers.s]\ncommand = "true"\n{table}')
        with pytest.raises(ConfigError) as err:
            load_config(p)
        return str(err.value)

    assert said('egress = "gateways"') == (
        f'{tmp_path}/c.toml: mcp_servers.s: egress "gateways" is an agent\'s: an MCP '
        'server is given no gateway (egress = "none", with egress_allow)')
    assert said('egress_allow = ["127.0.0.1:80"]') == (
        f'{tmp_path}/c.toml: mcp_servers.s: egress_allow needs egress = "none": it names '
        "what the server may reach besides nothing")
    for entry in ("api.example.com:443", "127.0.0.1", "127.0.0.1:0", "::1:80"):
        assert said(f'egress = "none"\negress_allow = ["{entry}"]') == (
            f"{tmp_path}/c.toml: mcp_servers.s: egress_allow: {entry!r} is not IP:PORT (an "
            "address, not a name: the sandbox has no resolver; [IPv6]:PORT)"), entry


@pytest.mark.skipif(os.geteuid() != 0, reason="egress_allow: the daemon holds the "
                    "server's network namespace as root")
@pytest.mark.deadline(240)
async def test_an_agent_and_an_mcp_server_of_one_name_each_keep_their_own_boundary(
        tmp_path: Path, upstream: StandIn) -> None:
    """An agent and an MCP server may share a name (`box#0` each): the namespace the
    daemon holds for one, and its trips, were the other's by that label, so the second
    to start closed the first's listener (the agent's gateways gone); and a server
    removed let go of neither."""
    with answering() as allowed:
        a = allowed.getsockname()[1]
        server = textwrap.dedent(f"""
            [mcp_servers.box]
            command = ["{PY}", "{HERE}/servers/reach_mcp.py"]
            cwd = "{tmp_path / 'server-home'}"
            egress = "none"
            egress_allow = ["127.0.0.1:{a}"]
        """)
        (tmp_path / "server-home").mkdir()
        async with in_process(tmp_path, fleet(tmp_path, upstream.url, "gateways"),
                              server) as d:
            res = await d.dispatcher.call(SOCKET, "tools.call", msgspec.json.encode(
                {"name": "box__reach", "arguments": {"host": "127.0.0.1", "port": a}}))
            assert msgspec.json.decode(msgspec.json.encode(res))["content"][0]["text"] == (
                "connected: pong")
            out = await run(d, {"do": "gateways", "title": "otters", "say": "hello"})
            assert (out["tool"], out["model"]) == ("stored otters", "echo: hello")
            # the server removed: what the daemon held for its egress goes with it (it
            # stayed), the agent's kept
            doors = d.sup.egress_doors
            assert {"box#0", "mcp:box#0"} <= set(doors.doors) & set(doors.trips.trips)
            await d.sup.mcp.remove("box")
            assert "mcp:box#0" not in doors.doors and "mcp:box#0" not in doors.trips.trips
            assert "box#0" in doors.doors and "box#0" in doors.trips.trips
            assert not os.path.exists(tmp_path / "corral.sock.trip" / "mcp:box#0")
