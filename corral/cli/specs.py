"""Agents' specs: add agents, update one, describe one as it is in effect."""

from __future__ import annotations

import os
from typing import Any

import click

from .. import methods as m
from .app import Ctx, command, complete_agents, env_pairs, read_tables, set_pairs, shows
from .render import dumps

_POLICY = ("restart", "max_restarts", "restart_window", "backoff_initial", "backoff_max",
           "stable_after", "start_timeout", "stop_timeout")
_TASKS = ("max_concurrent_tasks", "max_queue", "task_timeout", "cancel_grace", "retries",
          "rate_per_minute", "max_tool_calls_per_task")
_DESCRIBED = {"name", "command", "release", "version", "cwd", "user", "group", "env",
              "replicas", "autostart", "limits", "tools", *_POLICY, *_TASKS}


def _spec_value(v: Any) -> str:
    """A spec's value on one line: a table as its keys' `k = v`, a list joined."""
    if v is None or v == [] or v == {}:
        return "-"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, dict):
        return ", ".join(f"{k} = {_spec_value(x) if isinstance(x, dict) else dumps(x)}"
                         for k, x in v.items())
    if isinstance(v, list):
        return ", ".join(x if isinstance(x, str) else dumps(x) for x in v)
    return str(v)


@shows(m.AgentsDescribe)
@click.argument("name", shell_complete=complete_agents)
def describe(res: m.DescribeResult) -> None:
    spec = res.spec
    click.echo(f"name: {res.name}")
    click.echo(f"origin: {res.origin}")
    click.echo(f"revision: {res.revision if res.revision is not None else '-'}")
    import shlex

    click.echo(f"command: {' '.join(shlex.quote(a) for a in res.argv)}")
    if spec.get("release"):  # an agent package's
        click.echo(f"release: {os.path.basename(spec['release'])} (version "
                   f"{spec.get('version') or '-'}, {spec['release']})")
    click.echo(f"cwd: {spec['cwd']}")
    click.echo(f"user: {spec['user'] or '-'}" + (f" group: {spec['group']}"
                                                   if spec["group"] else ""))
    click.echo(f"env keys: {', '.join(spec['env']) or '-'}")
    click.echo(f"replicas: {spec['replicas']}  autostart: {str(spec['autostart']).lower()}")
    click.echo("policy: " + ", ".join(f"{k} = {spec[k]}" for k in _POLICY))
    if spec.get("protocol") == "none":  # its task keys are inert: not shown as if used
        click.echo('tasks: none (protocol = "none": a plain program takes no tasks)')
    else:
        click.echo("tasks: " + ", ".join(f"{k} = {spec[k]}" for k in _TASKS))
    limits = {k: v for k, v in spec["limits"].items() if v}
    click.echo("limits: " + (", ".join(f"{k} = {v}" for k, v in limits.items()) or "none"))
    click.echo(f"tools: {', '.join(spec['tools']) or '-'}")
    # every other key the daemon gave, as it is in effect: none hidden behind --json
    for key in sorted(set(spec) - _DESCRIBED):
        click.echo(f"{key}: {_spec_value(spec[key])}")
    for r in res.replicas:
        click.echo(f"{res.name}#{r.replica}: {r.state}"
                   + (f" (pid {r.pid})" if r.pid else ""))


def _read_agents_file(path: str) -> dict[str, dict[str, Any]]:
    """The file's agents, a cwd each: the file's directory, or a relative one in it."""
    from pathlib import Path

    agents = read_tables(path, "agents")
    base = Path(path).resolve().parent
    for table in agents.values():
        if isinstance(table, dict):
            cwd = table.get("cwd")
            if cwd is None:
                table["cwd"] = str(base)
            elif isinstance(cwd, str) and not os.path.isabs(cwd):
                table["cwd"] = str((base / cwd).resolve())
    return agents


@command(m.AgentsAdd, more="\n\nFILE holds [agents.NAME] tables as in the config file.",
         short_help="Add agents at runtime from a TOML file or flags.")
@click.argument("file", required=False)
@click.option("--name", help="Agent name (with --command instead of FILE).")
@click.option("--command", "command", help="Command line, split like a shell would.")
@click.option("--replicas", type=click.IntRange(min=0), default=None)
@click.option("--restart", "restart_", type=click.Choice(["always", "on-failure", "never"]),
              default=None)
@click.option("--env", "env", multiple=True, metavar="KEY=VALUE")
@click.option("--cwd", default=None)
@click.option("--tenant", default=None,
              help="The tenant the agent is in, its quotas counted (default: default).")
@click.option("--no-check", is_flag=True,
              help="Add even if the command is not (yet) an executable on PATH or a file.")
@click.option("--cluster", "cluster", is_flag=True,
              help="A cluster agent: its spec kept in the cluster's Redis, its replicas "
                   "placed on live nodes (docs/cluster.md).")
@click.option("--protocol", type=click.Choice(["corral", "none"]), default=None,
              help='"none": any program (a web server, a script), supervised but given no '
                   "tasks; its stdout and stderr are its log (default: corral, a worker).")
def add(obj: Ctx, file: str | None, name: str | None, command: str | None,
        replicas: int | None, restart_: str | None, env: tuple[str, ...],
        cwd: str | None, tenant: str | None, no_check: bool, cluster: bool,
        protocol: str | None) -> None:
    if file and (name or command):
        raise click.UsageError("give a FILE or --name/--command, not both")
    for flag, value, shape in (("tenant", tenant, "NAME"), ("protocol", protocol, "none")):
        if file and value is not None:
            raise click.UsageError(f"--{flag} goes with --name/--command; in a FILE, write "
                                   f'{flag} = "{shape}" in each [agents.NAME] table')
    if file:
        agents = _read_agents_file(file)
    else:
        if not (name and command):
            raise click.UsageError("give a FILE, or both --name and --command")
        given = {"replicas": replicas, "restart": restart_, "tenant": tenant,
                 "protocol": protocol}
        table: dict[str, Any] = {"command": command, "cwd": os.path.abspath(cwd or "."),
                                 **{k: v for k, v in given.items() if v is not None}}
        if env:
            table["env"] = env_pairs(env)
        agents = {name: table}
    res: m.AddResult = obj.call(m.AgentsAdd(agents=agents, check=not no_check, cluster=cluster))
    click.echo(f"added: {', '.join(res.added)}")


@command(m.AgentsUpdate, more="\n\nExample: corral update web --env LEVEL=debug "
             "--unset-env OLD --set limits.memory_mb=512")
@click.argument("name", shell_complete=complete_agents)
@click.option("--command", "command", help="A new command line, split like a shell would.")
@click.option("--replicas", type=click.IntRange(min=0), default=None)
@click.option("--env", "env", multiple=True, metavar="KEY=VALUE", help="Set a variable.")
@click.option("--unset-env", "unset_env", multiple=True, metavar="KEY",
              help="Take a variable away.")
@click.option("--set", "set_", multiple=True, metavar="KEY=JSON",
              help="Any key of the table (dots into tables: limits.memory_mb=512); the "
                   "value is JSON (a bare word is a string); null takes the key away.")
@click.option("--no-check", is_flag=True,
              help="Take a command that is not (yet) an executable on PATH or a file.")
def update(obj: Ctx, name: str, command: str | None, replicas: int | None,
           env: tuple[str, ...], unset_env: tuple[str, ...], set_: tuple[str, ...],
           no_check: bool) -> None:
    patch = set_pairs(set_, "--set")
    patch |= {k: v for k, v in (("command", command), ("replicas", replicas)) if v is not None}
    if env or unset_env:
        patch.setdefault("env", {}).update({**env_pairs(env), **dict.fromkeys(unset_env)})
    if not patch:
        raise click.UsageError("nothing to change: give --command, --replicas, --env, "
                               "--unset-env or --set")
    res: m.UpdateResult = obj.call(m.AgentsUpdate(name=name, set=patch, check=not no_check))
    click.echo(f"{name}: " + (f"revision {res.revision}: {res.change}"
                              if res.revision is not None else res.change))
