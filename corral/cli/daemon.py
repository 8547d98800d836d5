"""The daemon itself: run it, check a config, reload, shut down, ask its version and
info, and open the dashboard."""

from __future__ import annotations

import re
import sys
import time
from typing import TYPE_CHECKING, Any

import click
import msgspec

from .. import methods as m
from ..text import iso_time, plural
from .app import Ctx, cli, command, complete_agents, fail, json_option, pass_ctx, shows
from .client import EXIT_FAILED, EXIT_UNREACHABLE, CallFailed, Unreachable
from .durations import duration
from .render import human_time, print_json, table

if TYPE_CHECKING:
    from pathlib import Path

    from ..supervisor.config import Config


@cli.command()
@click.option("--config", "-c", "config", metavar="PATH", default=None,
              help="Config file (default: /etc/corral/corral.toml for root, else "
                   "~/.config/corral/corral.toml).")
@pass_ctx
def daemon(obj: Ctx, config: str | None) -> None:
    """Run the supervisor daemon in the foreground (systemd runs it this way too)."""
    from pathlib import Path

    from ..paths import default_config
    from .entry import long_lived_imports

    with long_lived_imports():  # the daemon's modules, as the CLI's
        from ..daemon.daemon import run_daemon
    path = Path(config or default_config())
    if not path.exists():
        fail(f"no config file at {path} (give one with --config)")
    sys.exit(run_daemon(path, obj.socket))


@cli.command("check-config")
@click.argument("path", required=False, metavar="[PATH]")
@click.option("--config", "-c", "config", metavar="PATH", default=None,
              help="Config file to check (default: as for `corral daemon`).")
@click.option("--no-check", is_flag=True,
              help="Do not check that each command is an executable (one that will exist "
                   "later).")
@pass_ctx
def check_config(obj: Ctx, path: str | None, config: str | None, no_check: bool) -> None:
    """Validate a config file (and its includes) without starting anything: every key, and
    that every agent's and MCP server's command is an executable on the daemon's PATH (the
    running daemon's, else the installed unit's, else yours) or a file."""
    from pathlib import Path

    from ..paths import default_config

    if path and config and path != config:
        raise click.UsageError("give the config file once: PATH or --config")
    where = Path(path or config or default_config())
    if _is_manifest(where):
        _check_manifest(where)
        return
    cfg, errors = _judged(obj, where, not no_check)
    if cfg is None or errors:
        _say_invalid(where, errors)
        sys.exit(EXIT_FAILED)
    click.echo(f"{where}: ok ({plural(len(cfg.agents), 'agent')}, "
               f"{plural(len(cfg.mcp_servers), 'MCP server')})")
    for line in _keys_unset(cfg):
        click.echo(line, err=True)


def _keys_unset(cfg: Config) -> list[str]:
    """Each model's key_env this shell lacks, said but not refused: the daemon reads its
    own environment (a unit's, say), and refuses to start without the key there."""
    import os

    return [f"corral: models.{name}.key_env: {spec.key_env} is not set here; the daemon "
            "refuses to start unless its own environment has it"
            for name, spec in cfg.models.items()
            if spec.key_env is not None and not os.environ.get(spec.key_env, "").strip()]


def _judged(obj: Ctx, where: Path, commands: bool) -> tuple[Config | None, list[str]]:
    """The config at `where` as check-config judges it (None if it cannot be read), and
    its errors, one a line; with `commands`, each command looked up as the daemon would."""
    import os

    from ..supervisor.config import ConfigError
    from ..supervisor.configload import check_commands, load_config

    if commands:
        theirs = _daemons_path(obj)
        if theirs is not None and theirs[0] != os.environ.get("PATH"):
            # a command is run by the daemon, with its PATH: looked up on the caller's, a
            # plain shell's said `uvx: not an executable` of what the daemon finds
            click.echo(f"corral: commands looked up on {theirs[1]} PATH ({theirs[0]}), "
                       f"not yours", err=True)
            os.environ["PATH"] = theirs[0]
    try:
        cfg = load_config(where, commands=commands)
    except ConfigError as exc:
        return None, str(exc).splitlines()
    if cfg.gateway.skills_dir:  # read as the daemon reads it, at start and reload
        from ..daemon.ownskills import OwnSkills

        try:
            OwnSkills.load(where.parent / cfg.gateway.skills_dir)
        except ConfigError as exc:
            return cfg, [f"{where}: {exc}"]
    if commands:
        try:
            check_commands(cfg, str(where))
        except ConfigError as exc:
            return cfg, str(exc).splitlines()
    return cfg, []


def _say_invalid(where: Path, errors: list[str]) -> None:
    for line in errors:  # every error of the file, one a line
        click.echo(f"corral: invalid config: {line}", err=True)
    if len(errors) > 1:
        click.echo(f"corral: {plural(len(errors), 'error')} in {where}", err=True)


@cli.command("doctor")
@click.option("--config", "-c", "config", metavar="PATH", default=None,
              help="Config file whose agents to judge (default: as for `corral daemon`).")
@json_option
@pass_ctx
def doctor(obj: Ctx, config: str | None, as_json: bool) -> None:
    """What this host offers to enforce an agent's boundary (user namespaces, Landlock,
    seccomp, cgroup delegation), each probed now and saying why where it is missing, and
    which layer each agent of the config runs under (its egress), or why it cannot start.
    With no config at the default place, the host alone. Exits 1 when an agent could not
    start or the config is one check-config refuses (its errors said)."""
    from pathlib import Path

    from ..daemon import doctor as probes
    from ..paths import default_config
    from ..supervisor.config import SupervisorSettings

    where = Path(config or default_config())
    cfg: Config | None = None
    errors: list[str] = []
    if config is not None or where.exists():
        cfg, errors = _judged(obj, where, True)
    # with no config at the default place, what the host offers is still worth showing
    found = probes.host((cfg.supervisor if cfg is not None else SupervisorSettings()).bwrap)
    agents = probes.agents(cfg) if cfg is not None else []
    if as_json:
        print_json({"host": [p._asdict() for p in found], "agents": agents,
                    "config_errors": errors})
    else:
        table([[p.name, "yes" if p.ok else "no", p.said] for p in found],
              ["HOST", "OK", "WHAT IT SAID"])
        if agents:
            click.echo()
            table([[a["agent"], a["egress"], a["layer"]] for a in agents],
                  ["AGENT", "EGRESS", "LAYER"])
    if cfg is None and not errors:
        click.echo(f"corral: no config at {where}: no agent judged (give one with "
                   "--config)", err=True)
    if errors:  # as check-config refuses it: the daemon would not start with it
        _say_invalid(where, errors)
    if errors or not all(a["runs"] for a in agents):
        sys.exit(EXIT_FAILED)


def _daemons_path(obj: Ctx) -> tuple[str, str] | None:
    """The PATH the daemon runs commands with, and whose it is: the running daemon's (if
    one answers), else the installed unit's `Environment=PATH=`, else None."""
    import pathlib

    from .install import UNIT_DIRS

    info = obj.info()
    if info is not None and info.path is not None:
        return info.path, f"the running daemon's (pid {info.pid})"
    for unit in (f"{d}/corral.service" for d in UNIT_DIRS):
        try:
            text = pathlib.Path(unit).read_text(encoding="utf-8")
        except OSError:
            continue
        found = re.findall(r"(?m)^\s*Environment=\"?PATH=([^\"\s]+)", text)
        if found:
            return found[-1], f"the installed unit's ({unit})"
    return None


def _is_manifest(path: Path) -> bool:
    """An agent package (its directory, pyproject.toml, or a TOML file with an [agent]
    table) rather than a daemon's config file."""
    if path.is_dir() or path.name == "pyproject.toml":
        return True
    try:
        return bool(re.search(rb"(?m)^\s*\[agent\]", path.read_bytes()))
    except OSError:
        return False


def _check_manifest(path: Path) -> None:
    from ..daemon.packages.manifest import read_manifest
    from ..supervisor.config import ConfigError

    try:
        manifest = read_manifest(path.resolve())
    except ConfigError as exc:
        fail(f"invalid manifest: {exc}")
    lock = f"lock {manifest.lock.name}" if manifest.lock else "no dependencies"
    click.echo(f"{manifest.file}: ok (package {manifest.name}, version "
               f"{manifest.version or '-'}, {lock})")


@cli.command(help="Print the version of this corral (and of the daemon, when it runs).")
@pass_ctx
def version(obj: Ctx) -> None:
    from .. import __version__

    click.echo(f"corral {__version__}")
    try:
        with obj.client() as c:
            info: m.DaemonInfoResult = c.ask(m.DaemonInfo())
        click.echo(f"daemon {info.version} (pid {info.pid}, {info.socket})")
    except Unreachable:
        click.echo("daemon: not reachable")
        sys.exit(EXIT_UNREACHABLE)  # as every command that needs the daemon


@shows(m.ConfigReload, more="\n\nPrints each agent, MCP server, workflow, team and schedule "
      "added, removed or changed, then how many are unchanged; an agent whose rollout "
      "stopped is named on stderr with the reason.")
def print_reload(res: m.ReloadResult) -> None:
    """What a reload changed (`corral reload`'s, `corral mcp add`'s and `remove`'s)."""
    kinds = (("agent", msgspec.structs.asdict(res)), ("MCP server", res.mcp_servers),
             ("workflow", res.workflows), ("team", res.teams), ("schedule", res.schedules))
    rows = [[kind, name, "failed" if kind == "agent" and name in res.failed else change]
            for kind, changes in kinds
            for change in ("added", "removed", "changed")
            for name in changes.get(change) or []]
    rows += [["gateway", "", change] for change in res.gateway]
    if rows:
        table(rows, ["KIND", "NAME", "CHANGE"])
    else:
        click.echo("nothing changed")
    # agents and MCP servers always counted; the definitions where the file has some
    counts = [plural(len(changes.get("unchanged") or []), kind)
              for i, (kind, changes) in enumerate(kinds) if i < 2 or changes.get("unchanged")]
    click.echo(f"unchanged: {', '.join(counts)}")
    for name, why in res.failed.items():
        click.echo(f"corral: {name}: {why}", err=True)  # (kept or not: `why` says)
    if res.restart_needed:
        click.echo(f"corral: {', '.join(res.restart_needed)} changed in the file: read at "
                   "start, not applied until the daemon restarts (or `corral upgrade`)",
                   err=True)


@command(m.DaemonShutdown, more="\n\nReturns once the daemon is gone, saying "
             "what it drained.")
@click.option("--no-wait", is_flag=True,
              help="Return once the daemon has begun to stop, not once it is gone.")
@click.option("--now", is_flag=True,
              help="No drain: stop the agents at once; running tasks are handed to the "
                   "next daemon. During a drain: cut it short.")
def shutdown(obj: Ctx, no_wait: bool, now: bool) -> None:
    from .stopping import shutdown as stop

    try:
        stop(obj.client(wait_forever=True), now=now, wait=not no_wait)
    except Unreachable as exc:
        fail(str(exc), EXIT_UNREACHABLE)
    except CallFailed as exc:
        fail(exc.message)


@shows(m.DaemonClock)
@click.option("--advance", default=None, metavar="DURATION",
              callback=lambda ctx, param, value: duration(value, "--advance") or 0.0,
              help="Move the manual clock this far ahead: 90s, 10m, 2h, 1d.")
def clock(res: m.ClockTime) -> None:
    kind = f"manual, moved {res.ahead:g} s" if res.manual else "the wall's"
    click.echo(f"{iso_time(res.time)} ({kind})")


@command(m.DaemonInfo, more="\n\nWith NAME, that agent's effective spec "
             "(`corral describe NAME`, as `pm2 info NAME`).")
@click.argument("name", required=False, shell_complete=complete_agents)
@json_option
def info(obj: Ctx, name: str | None, as_json: bool) -> None:
    if name is not None:
        ctx = click.get_current_context()
        describe = cli.get_command(ctx, "describe")
        assert describe is not None
        ctx.invoke(describe, name=name, as_json=as_json)
        return
    res: m.DaemonInfoResult = obj.call_json(m.DaemonInfo(), as_json)
    for k, v in msgspec.to_builtins(res).items():
        if k == "extras":  # one line each: serving, or why not and when it is retried
            click.echo(f"{k}:" + ("" if v else " -"))
            for e in v:
                click.echo(f"  {e['name']} on {e['address']}: " + (
                    "serving" if e["serving"] else
                    f"not serving ({e['error']}); attempt {e['attempts'] + 1} in "
                    f"{e['retry_in'] or 0:.0f} s"))
        elif isinstance(v, dict):  # a section (containment): one indented line per key
            click.echo(f"{k}:")
            for kk, vv in v.items():
                click.echo(f"  {kk}: {_plain(vv)}")
        else:
            click.echo(f"{k}: {human_time(v) if k == 'uptime' else _plain(v)}")


def _plain(value: Any) -> str:
    """A value as a person reads it: lists comma-separated, None as a dash."""
    if value is None:
        return "-"
    if isinstance(value, list):
        return ", ".join(map(str, value)) or "-"
    return str(value)


@shows(m.UiLogin)
def ui_login(res: m.UiLoginResult) -> None:
    # the link alone on stdout, so that `xdg-open "$(corral ui)"` works
    click.echo(res.url)
    left = max(0, round(res.expires - time.time()))
    click.echo(f"corral: open this link in a browser on this machine within {left} s; "
               f"it works once", err=True)
