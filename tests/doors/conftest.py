"""The door suite's fixtures (DESIGN 28): `daemon`, the suite's home, once for each
kind of home (the contract suite's: a node's daemon on SQLite, two cluster nodes on a
real redis-server), its agents of tests/doors/door_agent.py, shared by the suite's tests;
and `door`, each door a call enters by (`with a task`: made by the agent's task; `no
task`: made by the test with the replica's own token while it runs none).

A test marked `differs(where, reason)` is a strict xfail at that door, or on that kind of
home: the door (the home) is not yet what the contract says, and once it is, the strict
xfail fails the run so that its mark is taken off."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ..cluster.harness import STEADY_TTL
from ..conftest import ROOT
from ..contract.home import KINDS, Home, made
from ..daemon_harness import PY

HERE = Path(__file__).parent
SERVERS = HERE.parent / "servers"
TRUSTED = "Fetch a URL and return its text."

# a task's doors: the agent's task makes the call
TASK_DOORS = ("worker", "worker-no-task", "/mcp", "/mcp/NAME", "/mcp/corral")
# a call of no task: the test makes it with the replica's token while it runs none
IDLE_DOORS = ("/mcp idle", "/mcp/NAME idle", "/mcp/corral idle")
# `corral mcp serve --token` with the replica's token, as a host runs it: its stdio
# bridged to /mcp on the daemon's local socket (decision 1580)
DOORS = TASK_DOORS + IDLE_DOORS + ("stdio idle",)
# the worker link naming no task where its replica runs no sole task: a task's call by
# `tools/call` naming none, of caller's twin of two slots (chain.py `sole_task`: beside a
# free slot, a call of no task is its replica's)
WORKER_IDLE = "worker idle"
# a gateway client that is no agent's replica, a token's holder of the tokens file, at the
# doors it has: /mcp, /mcp/NAME, and `corral mcp serve --token` on the local socket; and
# the operator, `corral mcp serve` as the socket's peer, every tool its allowlist (the
# policy rules bind their calls as an agent's, taint and budgets do not: decision 1641)
TOKEN_DOORS = ("/mcp client", "/mcp/NAME client", "stdio client")
CLIENT_DOORS = (*TOKEN_DOORS, "stdio operator")
CLIENT, CLIENT_TOKEN = "plain", "door-suite-token-of-a-client-that-is-no-agents"
CLIENT_TOOLS = ["pol__http_get", "drift__*", "corral__denied", "corral__target",
                "sk__deploy-check"]
# the client's call of an agent at /mcp/corral: a Call of the chain whose dispatch is the
# door's submission of its task (decision 1645)
AGENTS_CLIENT = "/mcp/corral client"


# a client of one call in flight (its max_concurrent), test_doors.py's limits
ONE, ONE_TOKEN = "one", "door-suite-token-of-a-client-of-one-call-at-once"
# clients of one call a minute (their rate_per_minute), by the door test_doors.py reads
# a skill at: each door's token its own, as a rate is its client's
RATED = {"/mcp client": ("rated-mcp", "door-suite-token-of-a-client-of-one-call-a-minute"),
         "/mcp/NAME client": ("rated-name", "door-suite-token-of-one-call-a-minute-by-name")}


def tokens_file(tmp: Path, tools: list[str] = CLIENT_TOOLS) -> Path:
    """The tokens file naming CLIENT, its allowlist `tools`, ONE and the RATED."""
    digest = hashlib.sha256(CLIENT_TOKEN.encode()).hexdigest()
    one = hashlib.sha256(ONE_TOKEN.encode()).hexdigest()
    path = tmp / "tokens.toml"
    path.write_text(f'[clients.{CLIENT}]\ntoken_sha256 = "{digest}"\n'
                    f"tools = {json.dumps(tools)}\n\n"
                    f'[clients.{ONE}]\ntoken_sha256 = "{one}"\nmax_concurrent = 1\n'
                    'tools = ["pol__http_get", "corral__target"]\n' + "".join(
                        f'\n[clients.{name}]\n'
                        f'token_sha256 = "{hashlib.sha256(token.encode()).hexdigest()}"\n'
                        'rate_per_minute = 1\ntools = ["sk__deploy-check"]\n'
                        for name, token in RATED.values()))
    return path


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "differs(where, reason): a door, or a kind of home, "
                            "that differs today")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    del config
    here = Path(__file__).parent  # (every conftest's hook is handed the session's items)
    for item in items:
        if not item.path.is_relative_to(here):
            continue
        callspec = getattr(item, "callspec", None)
        for mark in item.iter_markers("differs"):
            if callspec is not None and mark.args[0] in (callspec.params.get("door"),
                                                         callspec.params.get("daemon")):
                item.add_marker(pytest.mark.xfail(strict=True, reason=mark.args[1]))


def agents(tmp: Path) -> str:
    agent = textwrap.dedent(f"""
        command = ["{PY}", "{HERE}/door_agent.py"]
        env = {{ PYTHONPATH = "{ROOT}" }}
        stop_timeout = 10.0
        # (its allowlist names corral__caller, its spawns do not: test_doors.py's view)
        spawns = ["target", "denied", "mailer", "queued"]
        tools = ["pol__*", "drift__*", "corral__target", "corral__denied", "corral__mailer",
                 "corral__queued", "corral__caller", "sk__deploy-check"]
    """)
    # the agent submissions start (test_submissions.py): its sensitive mail waits for a
    # person, who is told why (a label, or its `approve`)
    mailer = textwrap.dedent(f"""
        command = ["{PY}", "{HERE}/door_agent.py"]
        env = {{ PYTHONPATH = "{ROOT}" }}
        stop_timeout = 10.0
        max_concurrent_tasks = 4
        tools = ["pol__*"]
        approve = ["pol__send_mail"]
    """)
    return (f"[agents.caller]{agent}\n"
            f"[agents.caller-idle]{agent}max_concurrent_tasks = 2\n\n"
            f"[agents.budgeted]{agent}max_tool_calls_per_task = 2\n\n"
            f"[agents.mailer]{mailer}\n"
            f'[agents.target]\ncommand = ["{PY}", "{ROOT}/examples/misbehave.py"]\n'
            f'env = {{ PYTHONPATH = "{ROOT}" }}\n\n'
            f'[agents.denied]\ncommand = ["{PY}", "{ROOT}/examples/misbehave.py"]\n'
            f'env = {{ PYTHONPATH = "{ROOT}" }}\n\n'
            # (test_submissions.py: the budget a submission meets, its agent's queue)
            f'[agents.queued]\ncommand = ["{PY}", "{ROOT}/examples/misbehave.py"]\n'
            f'env = {{ PYTHONPATH = "{ROOT}" }}\nmax_queue = 1\nstop_timeout = 5.0\n\n'
            # (shared: tenant acme's clients see it, test_doors.py's default_deny)
            f'[mcp_servers.pol]\ncommand = ["{PY}", "{SERVERS}/policy_mcp.py"]\n'
            'tools_untrusted = ["fetch"]\ntools_sensitive = ["send_mail"]\nshared = true\n\n'
            f'[mcp_servers.drift]\ncommand = ["{PY}", "{SERVERS}/drifting_mcp.py", '
            f'"{tmp}/description"]\n\n'
            # skills (SEP-2640): a skill read is a call (test_doors.py, decision 1691)
            f'[mcp_servers.sk]\ncommand = ["{PY}", "{SERVERS}/skills_mcp.py"]\n'
            'start_timeout = 30.0\n\n'
            '[[policy]]\nname = "no pay"\nmatch = { tool = "pol__pay" }\neffect = "deny"\n\n'
            '[[policy]]\nname = "no denied agent"\nmatch = { tool = "corral__denied" }\n'
            'effect = "deny"\n\n'
            # a client's tool (CLIENT_TOOLS) denied, and held for a person, by its argument
            '[[policy]]\nname = "no pay host"\nmatch = { tool = "pol__http_get" }\n'
            'when = { "arguments.host" = { in = ["pay.example"] } }\neffect = "deny"\n\n'
            '[[policy]]\nname = "ask host"\nmatch = { tool = "pol__http_get" }\n'
            'when = { "arguments.host" = { in = ["ask.example"] } }\neffect = "approve"\n\n'
            # a client's call of an agent held for a person (test_doors.py's handle)
            '[[policy]]\nname = "ask target"\nmatch = { tool = "corral__target" }\n'
            'when = { "arguments.say" = { in = ["ask"] } }\neffect = "approve"\n\n'
            '[tenants.acme]\ndefault_deny = true\n\n'
            # a tenant's agent of every tool (test_doors.py's tenant's view): its agents
            # are its tenant's alone; it sees pol, not drift or sk (the default tenant's)
            '[tenants.beta]\n\n'
            f'[agents.beta-caller]\ncommand = ["{PY}", "{HERE}/door_agent.py"]\n'
            f'env = {{ PYTHONPATH = "{ROOT}" }}\nstop_timeout = 10.0\ntenant = "beta"\n'
            'tools = ["*"]\nspawns = ["*"]\n\n'
            f'[agents.beta-target]\ncommand = ["{PY}", "{ROOT}/examples/misbehave.py"]\n'
            f'env = {{ PYTHONPATH = "{ROOT}" }}\ntenant = "beta"\n\n'
            f'[gateway]\nlisten = "127.0.0.1:0"\ntokens_file = "{tokens_file(tmp)}"\n\n'
            '[a2a]\nanonymous = ["mailer", "queued"]\n')


class Entry:
    """The suite's home as its tests drive it: control calls and the CLI at its first
    entry, and `each`, a control call at every entry (a cluster's two nodes, a node's one)."""

    def __init__(self, home: Home) -> None:
        self.home = home
        self.dir = home.dir

    def ask(self, method: str, params: dict[str, Any] | None = None) -> Any:
        return self.home.call(method, params)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.home.cli(*args)

    def each(self, method: str, params: dict[str, Any] | None = None) -> None:
        for at in range(len(self.home.entries)):
            self.home.call(method, params, at=at)


@pytest.fixture(scope="module", params=KINDS)
def daemon(request: pytest.FixtureRequest) -> Iterator[Entry]:
    tmp = Path(tempfile.mkdtemp(prefix="doors-"))  # short: the daemon's sockets are in it
    (tmp / "description").write_text(TRUSTED)
    try:
        # a cluster's nodes on the steady TTL: no door test waits on a node's lapse, and a
        # loaded host's node that missed the short one was fenced, its running tasks lost
        # and retried, so the budget test's queue held one more (or one fewer) than it set
        with made(request.param, tmp, agents(tmp), ttl=STEADY_TTL) as home:
            yield Entry(home)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(params=DOORS)
def door(request: pytest.FixtureRequest) -> str:
    door: str = request.param
    return door
