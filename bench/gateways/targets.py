"""The targets of bench/gateways: how each is started, reached and stopped, its cold start
(its first process started to its first right answer, asked again every 50 ms: none of
them is ours to tell us it is ready), and its process tree's RSS.

Every process is started in a session of its own and ended by its id (its group: the
servers a gateway started with it go too); loopback only.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import signal
import subprocess
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import psutil

from . import loadgen
from .peers import pins

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
PY = str(ROOT / ".venv" / "bin" / "python")
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
MIN_SERVER = ROOT / "bench" / "min_mcp_server.py"
BENCH_TOKEN = "bench-client-token-of-no-agent"  # (CORRAL_BENCH_TOKEN's client)
LITELLM_KEY = "sk-bench-litellm-master"  # its proxy refuses to start without one
# ContextForge refuses to start on its placeholders; these are a bench's, on loopback
CF_SECRET = "bench-jwt-secret-0123456789abcdef0123456789"
CF_ENV = {
    "JWT_SECRET_KEY": CF_SECRET,
    "AUTH_ENCRYPTION_SECRET": "bench-enc-secret-0123456789abcdef0123456789",
    "PLATFORM_ADMIN_PASSWORD": "Bench-Admin-Pass-123!",
    "BASIC_AUTH_PASSWORD": "Bench-Basic-Pass-123!",
    "CACHE_TYPE": "memory", "MCPGATEWAY_UI_ENABLED": "false",
    "MCPGATEWAY_ADMIN_API_ENABLED": "true", "LOG_LEVEL": "ERROR",
    "PLUGINS_ENABLED": "false", "OBSERVABILITY_ENABLED": "false",
    "SSRF_ALLOW_LOCALHOST": "true",  # its translate bridge is on loopback
    # its per-user rate limits (100 tool calls a minute, then a lockout of 15 minutes)
    # would measure the limit, not the gateway: corral's are off (unset) likewise
    "RATE_LIMITING_ENABLED": "false", "RATE_LIMIT_LOCKOUT_ENABLED": "false",
    "TOOL_RATE_LIMIT": "100000000",
}


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tree_rss(pids: list[int]) -> int:
    """The RSS of these processes and all their descendants, in bytes (shared pages
    counted in each process, as `ps` does)."""
    total = 0
    for pid in pids:
        try:
            root = psutil.Process(pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
        for p in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                total += p.memory_info().rss
    return total


class RssPeak:
    """The peak of a target's tree RSS, sampled every 100 ms in a thread while open."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.peak = tree_rss(pids)
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._done.wait(0.1):
            self.peak = max(self.peak, tree_rss(self.pids))

    def __enter__(self) -> RssPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()
        self.peak = max(self.peak, tree_rss(self.pids))


def _answers(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=5):
            return True
    except OSError:
        return False


async def _probe(spec: dict[str, Any]) -> bool:
    """One right answer from the target, or False."""
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as s:
            call = loadgen.model_call(s, {"stream": False, **spec}) \
                if spec["kind"] == "model" \
                else await loadgen.mcp_call(s, spec)
            await call(0)
            return True
    except (TimeoutError, loadgen.Wrong, aiohttp.ClientError, OSError):
        return False


class Target:
    """One target; subclasses say how it starts (`launch`) and is reached (`spec`)."""

    name = ""
    kind = "model"
    version = ""
    start_timeout = 300.0

    def __init__(self, work: Path, upstream: str = "") -> None:
        self.work = work / f"{self.kind}-{self.name.replace(' ', '-')}"
        self.work.mkdir(parents=True)
        self.upstream = upstream
        self.procs: list[subprocess.Popen[bytes]] = []
        self.cold_start_s = 0.0
        self.peak_rss = 0

    def popen(self, cmd: list[str], env: dict[str, str] | None = None,
              cwd: Path | None = None) -> subprocess.Popen[bytes]:
        log = (self.work / f"{len(self.procs)}.log").open("wb")
        p = subprocess.Popen(cmd, env=env or ENV, cwd=cwd or self.work,
                             stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(p)
        return p

    def launch(self) -> None:
        raise NotImplementedError

    def spec(self) -> dict[str, Any]:
        raise NotImplementedError

    def ready_to_probe(self) -> bool:
        """Whether what a probe needs is there yet (corral's token file)."""
        return True

    def after_up(self) -> None:
        """What must be done through the target's own API before it can answer."""

    def wait_for(self, what: str, done: Callable[[], bool]) -> None:
        """Until `done()`, asked every 50 ms; refused when a process of the target exits
        or `start_timeout` passes."""
        deadline = time.monotonic() + self.start_timeout
        while not done():
            for p in self.procs:
                if p.poll() is not None:
                    raise RuntimeError(f"{self.name}: exited ({p.returncode}) before "
                                       f"{what}; see {self.work}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name}: not {what} in {self.start_timeout:g} s")
            time.sleep(0.05)

    def start(self) -> None:
        """Launched, and timed to its first right answer."""
        t0 = time.perf_counter()
        self.launch()
        with RssPeak([p.pid for p in self.procs]) as rss:
            self.after_up()
            self.wait_for("its first right answer",
                          lambda: self.ready_to_probe() and asyncio.run(_probe(self.spec())))
            self.cold_start_s = time.perf_counter() - t0
        self.peak_rss = rss.peak

    def measuring(self) -> RssPeak:
        return RssPeak([p.pid for p in self.procs])

    def stop(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    continue
        for p in self.procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(10)


class Direct(Target):
    """The mock itself: the floor."""

    name = "direct (mock)"

    def launch(self) -> None:
        pass

    def spec(self) -> dict[str, Any]:
        return {"kind": "model", "url": f"{self.upstream}/v1/chat/completions",
                "headers": {"Authorization": "Bearer sk-bench"}, "model": "bench"}


class ProxyFloor(Target):
    """proxy_floor.py before the mock: the least a proxy in Python does a call."""

    name = "proxy floor"

    def launch(self) -> None:
        self.port = free_port()
        self.popen([PY, str(HERE / "proxy_floor.py"), str(self.port), self.upstream])

    def spec(self) -> dict[str, Any]:
        return {"kind": "model", "url": f"http://127.0.0.1:{self.port}/v1/chat/completions",
                "headers": {"Authorization": "Bearer sk-bench"}, "model": "bench"}


def _corral_config(work: Path, body: str) -> Path:
    config = work / "corral.toml"
    config.write_text(textwrap.dedent(f"""
        [supervisor]
        socket = "{work}/corral.sock"
        state_dir = "{work}/state"
        log_dir = "{work}/logs"
        drain_timeout = 0
        dynamic_uids = []  # (as root: the agents the daemon's user, as the peers' are)
    """) + textwrap.dedent(body))
    return config


def _git_head() -> str:
    r = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                       capture_output=True, text=True)
    return f"main@{r.stdout.strip()}"


CORRAL_VERSION = _git_head()  # the run's, once: HEAD may move while it runs


def _corral_version() -> str:
    return CORRAL_VERSION


TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def _links(rules: int) -> str:
    """With CORRAL_BENCH_RULES=N (issue 90's "every link on"): N policy rules the model's
    call is judged by (N - 1 of other models, the last allowing its bounded call) and
    [tracing]; none by default."""
    if not rules:
        return ""
    said = "".join(f'[[policy]]\nname = "rule {i}"\nmatch = {{ model = "other-{i}-*" }}\n'
                   'effect = "deny"\n\n' for i in range(rules - 1))
    return (said + '[[policy]]\nname = "bench bounded"\nmatch = { model = "bench" }\n'
            'when = { "max_tokens" = { below = 100000 } }\neffect = "allow"\n\n'
            "[tracing]\nexport_interval = 1.0\n")


def _mcp_links(rules: int, token_file: Path) -> tuple[str, str]:
    """With CORRAL_BENCH_RULES=N, the MCP call's every link on, as bench_policy's: the
    call an agent replica's (token_agent.py's token: an anonymous client's call is none of
    the chain's), judged by N `[[policy]]` rules (N - 2 of other tools, each testing an
    argument; one testing the echo's text, one allowing it), the echo marked sensitive
    (each call reads its owner's labels) and a tool untrusted, and [tracing]; the server's
    marks and the rest of the config, none by default."""
    if not rules:
        return "", ""
    holder = textwrap.dedent(f"""
        [agents.holder]
        command = ["{PY}", "{HERE / 'token_agent.py'}"]
        tools = ["min__*"]
        max_tool_calls_per_task = 1000000000  # (counted each call: the budget's link)
        env = {{ PYTHONPATH = "{ROOT}", TOKEN_FILE = "{token_file}" }}

    """)
    said = "".join(f'[[policy]]\nname = "other {i}"\nmatch = {{ tool = "other{i}__*" }}\n'
                   'when = { "arguments.path" = { under = "/workspace" } }\n'
                   f'effect = "{"deny" if i % 2 else "approve"}"\n\n'
                   for i in range(max(rules - 2, 0)))
    return ('tools_sensitive = ["echo"]\ntools_untrusted = ["fetch"]\n',
            holder + said + '[[policy]]\nname = "no secret"\nmatch = { tool = "min__echo" }\n'
            'when = { "arguments.text" = { in = ["secret", "password"] } }\n'
            'effect = "deny"\n\n[[policy]]\nname = "echo"\nmatch = { tool = "min__*" }\n'
            'effect = "allow"\n\n[tracing]\nexport_interval = 1.0\n')


class CorralModel(Target):
    """corral's model gateway (`[gateway] listen`, `[models.bench]`), called with the
    token of a replica that runs no task (token_agent.py)."""

    name = "corral"

    def launch(self) -> None:
        self.version = _corral_version()
        self.port = free_port()
        self.token_file = self.work / "token"
        config = _corral_config(self.work, textwrap.dedent(f"""
            [gateway]
            listen = "127.0.0.1:{self.port}"
            max_concurrent = 64

            [models.bench]
            url = "{self.upstream}/v1"
            format = "openai"

            [agents.holder]
            command = ["{PY}", "{HERE / 'token_agent.py'}"]
            env = {{ PYTHONPATH = "{ROOT}", TOKEN_FILE = "{self.token_file}" }}
        """) + _links(int(os.environ.get("CORRAL_BENCH_RULES", "0"))))
        self.popen([str(ROOT / ".venv" / "bin" / "corral"), "daemon", "--config",
                    str(config)])

    def ready_to_probe(self) -> bool:
        return self.token_file.exists()

    def spec(self) -> dict[str, Any]:
        # with CORRAL_BENCH_RULES, each call sends a sampled traceparent: a call of no
        # task makes its GenAI span under its caller's context, so the span's link is on
        traced = {"traceparent": TRACEPARENT} if os.environ.get("CORRAL_BENCH_RULES") \
            not in (None, "", "0") else {}
        return {"kind": "model", "url": f"http://127.0.0.1:{self.port}/v1/chat/completions",
                "headers": {"Authorization": f"Bearer {self.token_file.read_text()}",
                            **traced}, "model": "bench"}


class Portkey(Target):
    """Portkey's gateway (npm), the mock its custom host."""

    name = "portkey"

    def launch(self) -> None:
        pin = pins()["portkey"]
        node = subprocess.run(["node", "--version"], capture_output=True, text=True)
        self.version = f"{pin.version} (node {node.stdout.strip().lstrip('v')})"
        self.port = free_port()
        script = pin.prefix / "node_modules" / "@portkey-ai" / "gateway" / "build" / \
            "start-server.js"
        self.popen(["node", str(script), f"--port={self.port}", "--headless"],
                   env={**os.environ, "NODE_ENV": "production"})

    def spec(self) -> dict[str, Any]:
        return {"kind": "model", "url": f"http://127.0.0.1:{self.port}/v1/chat/completions",
                "headers": {"Authorization": "Bearer sk-bench", "x-portkey-provider": "openai",
                            "x-portkey-custom-host": f"{self.upstream}/v1"},
                "model": "bench"}


class LiteLLM(Target):
    """LiteLLM's proxy, one worker, no database."""

    name = "litellm"

    def launch(self) -> None:
        pin = pins()["litellm"]
        self.version = pin.version
        self.port = free_port()
        config = self.work / "litellm.yaml"
        config.write_text(f"""{{"model_list": [{{"model_name": "bench", "litellm_params": {{
            "model": "openai/bench", "api_base": "{self.upstream}/v1",
            "api_key": "sk-litellm-upstream"}}}}],
          "litellm_settings": {{"telemetry": false, "drop_params": true}},
          "general_settings": {{"master_key": "{LITELLM_KEY}"}}}}""")  # YAML: JSON's superset
        self.popen([str(pin.prefix / "venv" / "bin" / "litellm"), "--config", str(config),
                    "--host", "127.0.0.1", "--port", str(self.port), "--num_workers", "1"],
                   env={**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True",
                        "LITELLM_LOG": "ERROR"})

    def spec(self) -> dict[str, Any]:
        return {"kind": "model", "url": f"http://127.0.0.1:{self.port}/v1/chat/completions",
                "headers": {"Authorization": f"Bearer {LITELLM_KEY}"}, "model": "bench"}


class CorralMcp(Target):
    """corral's MCP gateway: the stdio server in its pool, served over Streamable HTTP."""

    name = "corral"
    kind = "mcp"

    def launch(self) -> None:
        self.version = _corral_version()
        self.port = free_port()
        self.token_file = self.work / "token"
        # CORRAL_BENCH_ANONYMOUS=1 beside CORRAL_BENCH_RULES: the same links and rules,
        # the call an anonymous client's (no agent's: decision 1641's rules link), the
        # holder's token kept where no call sends it
        anonymous = bool(os.environ.get("CORRAL_BENCH_ANONYMOUS"))
        marks, links = _mcp_links(int(os.environ.get("CORRAL_BENCH_RULES", "0")),
                                  self.work / "holder-token" if anonymous
                                  else self.token_file)
        self.as_agent = bool(links) and not anonymous
        # CORRAL_BENCH_TOKEN=1: a tokens file's client calls (no agent's, as anonymous is,
        # with its token looked up): decision 1640's path
        tokens = ""
        if os.environ.get("CORRAL_BENCH_TOKEN") and not self.as_agent:
            self.token_file.write_text(BENCH_TOKEN)
            digest = hashlib.sha256(BENCH_TOKEN.encode()).hexdigest()
            (self.work / "tokens.toml").write_text(
                f'[clients.bench]\ntoken_sha256 = "{digest}"\ntools = ["min__*"]\n')
            tokens = f'tokens_file = "{self.work / "tokens.toml"}"\n'
        config = _corral_config(self.work, textwrap.dedent(f"""
            [mcp_servers.min]
            command = ["{PY}", "{MIN_SERVER}"]
            start = "eager"
        """) + marks + textwrap.dedent(f"""
            [gateway]
            listen = "127.0.0.1:{self.port}"
            anonymous_tools = ["*"]
            max_concurrent = 64
        """) + tokens + links)
        self.popen([str(ROOT / ".venv" / "bin" / "corral"), "daemon", "--config",
                    str(config)])

    def ready_to_probe(self) -> bool:
        return not self.as_agent or self.token_file.exists()

    def spec(self) -> dict[str, Any]:
        return {"kind": "mcp", "url": f"http://127.0.0.1:{self.port}/mcp", "headers": {
            "Authorization": f"Bearer {self.token_file.read_text()}"}
            if self.token_file.exists() else {}}


TRANSLATE_MODE = os.environ.get("BENCH_TRANSLATE_MODE", "--stateless").split()


def _cf_bin() -> Path:
    return pins()["contextforge"].prefix / "venv" / "bin"


def _translate(target: Target, port: int) -> None:
    target.popen([str(_cf_bin() / "python"), "-m", "mcpgateway.translate", "--stdio",
                  f"{PY} {MIN_SERVER}", "--expose-streamable-http", *TRANSLATE_MODE,
                  "--host", "127.0.0.1",
                  "--port", str(port), "--logLevel", "error"],
                 env={**os.environ, **CF_ENV})


class Translate(Target):
    """ContextForge's stdio-to-HTTP bridge alone (`mcpgateway.translate`)."""

    name = "contextforge translate"
    kind = "mcp"

    def launch(self) -> None:
        self.version = pins()["contextforge"].version
        self.port = free_port()
        _translate(self, self.port)

    def spec(self) -> dict[str, Any]:
        return {"kind": "mcp", "url": f"http://127.0.0.1:{self.port}/mcp", "headers": {}}


class ContextForge(Target):
    """ContextForge's gateway (one uvicorn worker, SQLite), reaching the stdio server
    through a translate bridge of its own (it runs no stdio server itself): the server
    registered through its API (`POST /gateways`) as part of its start."""

    name = "contextforge"
    kind = "mcp"

    def __init__(self, work: Path, upstream: str = "") -> None:
        super().__init__(work, upstream)
        self.env = {**os.environ, **CF_ENV,
                    "DATABASE_URL": f"sqlite:///{self.work}/mcp.db"}
        # its admin's token, made before the clock starts (a credential provisioned once)
        r = subprocess.run([str(_cf_bin() / "python"), "-m",
                            "mcpgateway.utils.create_jwt_token", "--username",
                            "admin@example.com", "--exp", "600", "--secret", CF_SECRET],
                           env=self.env, cwd=self.work, capture_output=True, text=True)
        if r.returncode:
            raise RuntimeError(f"contextforge's token: {r.stderr[-500:]}")
        self.token = r.stdout.strip().splitlines()[-1]

    def launch(self) -> None:
        self.version = pins()["contextforge"].version
        self.bridge, self.port = free_port(), free_port()
        _translate(self, self.bridge)
        self.popen([str(_cf_bin() / "mcpgateway"), "--host", "127.0.0.1", "--port",
                    str(self.port)], env=self.env)

    def after_up(self) -> None:
        """The bridge registered (`POST /gateways`) once it and the gateway answer."""
        import json
        import urllib.request

        bridge = {"kind": "mcp", "url": f"http://127.0.0.1:{self.bridge}/mcp", "headers": {}}
        self.wait_for("its bridge", lambda: asyncio.run(_probe(bridge)))
        self.wait_for("its /health", lambda: _answers(f"http://127.0.0.1:{self.port}/health"))
        body = json.dumps({"name": "min", "url": bridge["url"],
                           "transport": "STREAMABLEHTTP"}).encode()
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/gateways", data=body, method="POST",
            headers={"Authorization": f"Bearer {self.token}",
                     "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60):
            pass

    def spec(self) -> dict[str, Any]:
        return {"kind": "mcp", "url": f"http://127.0.0.1:{self.port}/mcp",
                "headers": {"Authorization": f"Bearer {self.token}"}}
