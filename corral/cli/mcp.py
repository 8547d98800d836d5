"""The MCP servers corral runs: their status, start/stop/restart, OAuth login, and
all of them served as one over stdio."""

from __future__ import annotations

import sys

import click

from .. import methods as m
from ..text import plural
from .app import Ctx, cli, command, env_pairs, fail, json_option, pass_ctx, said, shows
from .render import table
from .terminal import unguarded


@cli.group("mcp")
def mcp_group() -> None:
    """The MCP tool servers corral runs."""


@shows(m.McpStatus)
def mcp_status(res: m.McpStatusResult) -> None:
    print_mcp(res.mcp_servers)
    print_gateway(res.gateway)


def print_gateway(gw: m.GatewayStats) -> None:
    """Gateway calls per client and per tool, when there were any."""
    for what, stats in (("clients", gw.clients), ("tools", gw.tools)):
        # the percentiles are the calls' own time; a person's wait is WAITED apart
        rows = [[name, str(s.calls), str(s.errors),
                 *(f"{v:.1f}" if v is not None else "-"
                   for v in (s.p50_ms, s.p95_ms, s.p99_ms)),
                 f"{s.waited} ({s.waited_ms / 1000:.1f} s)" if s.waited else "-"]
                for name, s in stats.items()]
        if rows:
            click.echo("")
            table(rows, ["GATEWAY " + what[:-1].upper(), "CALLS", "ERRORS", "P50 MS",
                         "P95 MS", "P99 MS", "WAITED FOR A PERSON"])
    if gw.attributed or gw.unattributed:
        click.echo(f"\nagent replicas' calls: {gw.attributed} a task's step, "
                   f"{gw.unattributed} of no task (docs/gateway.md#calls-of-a-task)")


@mcp_group.command("serve")
@click.option("--agent", metavar="NAME", help="Serve only what this agent's allowlist admits.")
@click.option("--token", envvar="CORRAL_MCP_TOKEN", metavar="TOKEN",
              help="Serve only what this gateway token's allowlist admits "
                   "(default: CORRAL_MCP_TOKEN).")
@click.option("--reconnect", type=float, default=30.0, show_default=True, metavar="SECONDS",
              help="How long to try the daemon again after losing it, then exit 1.")
@pass_ctx
def mcp_serve(obj: Ctx, agent: str | None, token: str | None, reconnect: float) -> None:
    """Serve every MCP server corral runs as one MCP server over stdio (for a host:
    {"command": "corral", "args": ["mcp", "serve"]}); tools, resources and prompts are
    named SERVER__NAME."""
    from ..paths import client_socket
    from .mcp_serve import run_serve

    unguarded()  # its stdout is the MCP protocol, not a terminal (terminal.py)
    sys.exit(run_serve(client_socket(obj.socket), agent, token, reconnect))


def _mcp_verb(declared: type[m.McpSelection], done: str) -> None:
    said(declared, "name", lambda res: f"{done} {res.name} ({plural(res.instances, 'instance')})")


for _declared, _done in ((m.McpStart, "started"), (m.McpStop, "stopped"),
                         (m.McpRestart, "restarted")):
    _mcp_verb(_declared, _done)


@command(m.McpAdd, more="\n\nCOMMAND is the server's, after `--` (`corral mcp add docs -- "
                     "npx -y @acme/docs-mcp`); with --registry ID, the registry's server "
                     "of that name at its latest version, pinned (`corral mcp add "
                     "--registry io.github.acme/docs`; NAME: the last part of ID). Prints "
                     "what the reload changed.",
         context_settings={"ignore_unknown_options": True})
@click.argument("name", required=False, default="")
@click.argument("server_command", metavar="-- COMMAND...", nargs=-1, type=click.UNPROCESSED)
@click.option("--env", "env", metavar="KEY=VALUE", multiple=True,
              help="An environment variable of the server (repeat).")
@click.option("--registry", metavar="ID", default=None,
              help="A server of the MCP registry [supervisor] mcp_registry names "
                   "(io.github.OWNER/NAME), its package pinned at its latest version.")
@json_option
def mcp_add(obj: Ctx, name: str, server_command: tuple[str, ...], env: tuple[str, ...],
            registry: str | None, as_json: bool) -> None:
    variables = env_pairs(env)
    if registry is None and not (name and server_command):
        raise click.UsageError("give NAME -- COMMAND..., or --registry ID")
    from .daemon import print_reload

    print_reload(obj.call_json(m.McpAdd(name=name, command=list(server_command),
                                        env=variables,
                                        registry=registry), as_json))


@shows(m.McpRemove, more="\n\nPrints what the reload changed.")
@click.argument("name")
def mcp_remove(res: m.ReloadResult) -> None:
    from .daemon import print_reload

    print_reload(res)


@mcp_group.command("login")
@click.argument("name")
@click.option("--config", "-c", "config", metavar="PATH", default=None,
              help="Config file (default: as for `corral daemon`).")
@click.option("--port", type=int, default=0, show_default=True,
              help="Loopback port for the redirect (0: any free port).")
def mcp_login(name: str, config: str | None, port: int) -> None:
    """Authorize corral for a remote server with auth = "oauth" (OAuth 2.1, PKCE)."""
    import asyncio
    from pathlib import Path

    from ..paths import default_config
    from .login import LoginError, login

    try:
        path = asyncio.run(login(Path(config or default_config()), name, port,
                                 lambda text: click.echo(text)))
    except LoginError as exc:
        fail(f"login to {name} failed: {exc}")
    click.echo(f"logged in to {name}; tokens in {path}")


ANY_AGENT = "any agent"


def print_mcp(servers: list[m.McpInstanceStatus]) -> None:
    rows = [[f"{s.name}#{s.instance}", s.state, str(s.pid or "-"),
             s.protocol_version or "-", str(s.tools), str(s.calls), str(s.errors),
             s.owner or ANY_AGENT] for s in servers]
    # FOR: the agent a per-agent instance serves; one of the pool serves any agent that
    # may use the server (which tenants may: its `tenant` and `shared`, docs/tenants.md)
    table(rows, ["SERVER", "STATE", "PID", "PROTOCOL", "TOOLS", "CALLS", "ERRORS", "FOR"])
