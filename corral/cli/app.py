"""The `corral` click group and what every command module shares: the caller of the
daemon (`Ctx`), the aliases and the guard against guessing a destructive command,
the common options and the completion of agent names."""

from __future__ import annotations

import contextlib
import functools
import inspect
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

from .. import methods as m
from .client import EXIT_FAILED, EXIT_UNREACHABLE, CallFailed, Client, Unreachable, default_timeout
from .render import print_json
from .terminal import raw_option

if TYPE_CHECKING:
    from pathlib import Path


def doc(declared: type[m.Params]) -> str:
    # cleandoc: a docstring's continuation lines are indented, and click would keep that
    # indent inside the wrapped paragraph ("restart.     Unless ...")
    return inspect.cleandoc(declared.declared.doc)


def _parent(declared: type[m.Params]) -> tuple[click.Group, str]:
    """The group a method's command is in, and its name (its declaration's `cli`)."""
    spec = declared.declared
    if spec.cli is None:  # pragma: no cover - a programming error
        raise RuntimeError(f"{spec.name} declares no CLI command")
    *groups, name = spec.cli.split()
    parent: click.Group = cli
    for word in groups:
        sub = parent.commands[word]
        assert isinstance(sub, click.Group)
        parent = sub
    return parent, name


def command(declared: type[m.Params], *, more: str = "", **kw: Any
            ) -> Callable[[Callable[..., Any]], click.Command]:
    """The CLI command that is a method's front: named as its declaration says (`cli`:
    "run", or "workflows run" in a group), its help the method's own (and `more`); it
    calls the daemon, so its callback is given the caller first (`pass_ctx`)."""
    parent, name = _parent(declared)

    def make(front: Callable[..., Any]) -> click.Command:
        return parent.command(name, help=doc(declared) + more, **kw)(pass_ctx(front))

    return make


def command_group(declared: type[m.Params], **kw: Any
                  ) -> Callable[[Callable[..., Any]], click.Group]:
    """`command`'s group: the method's front, and its commands' group (`corral tenants`
    lists them, `corral tenants add` adds one): the front runs when no command is given."""
    parent, name = _parent(declared)
    group = parent.group(name, help=doc(declared), invoke_without_command=True, **kw)

    def make(front: Callable[..., Any]) -> click.Group:
        called = pass_ctx(front)

        @functools.wraps(called)
        def unless_a_command(*args: Any, **kwargs: Any) -> None:
            if click.get_current_context().invoked_subcommand is None:
                called(*args, **kwargs)

        return group(unless_a_command)

    return make


Shows = TypeVar("Shows", bound=Callable[[Any], None])


def shows(declared: type[m.Params], *, group: bool = False, more: str = "", **kw: Any
          ) -> Callable[[Shows], Shows]:
    """The command that is a method's front and shows its answer: as JSON with --json,
    else as `show` says it (`show` stays a function of the answer). Its arguments and
    options (`show`'s click decorators) are named as the method's params and given to it
    as they come (a `callback` makes one's value); with `group`, the front of
    `command_group`'s group."""

    def make(show: Shows) -> Shows:
        @functools.wraps(show)
        def front(obj: Ctx, as_json: bool, **given: Any) -> None:
            show(obj.call_json(declared(**given), as_json))

        # --json last, as it is where a command declares it itself
        vars(front)["__click_params__"] = []
        json_option(front)
        vars(front)["__click_params__"] += getattr(show, "__click_params__", [])
        (command_group(declared, **kw) if group else command(declared, more=more, **kw))(front)
        return show

    return make


def said(declared: type[m.Params], arg: str, say: Callable[[Any], str], **argument: Any
         ) -> None:
    """The command that is a method's front where it takes ARG (NAMES..., with nargs=-1)
    and answers one line: `say` of the result. The command is the module's whose `say`
    it is."""

    def front(obj: Ctx, **given: Any) -> None:
        click.echo(say(obj.call(declared(**given))))

    front.__module__ = say.__module__
    command(declared)(click.argument(arg, **argument)(front))


def _answering_socket() -> Path | None:
    """The control socket of a daemon of this user's or root's that accepts a connection,
    looked for from the current directory up: a config's `.corral/corral.sock` (the
    example config's place) or the Quick start's `examples/.corral/corral.sock`."""
    import os
    import socket
    import struct
    from pathlib import Path

    try:
        here = Path.cwd()
    except OSError:  # the directory was removed
        return None
    for d in (here, *here.parents):
        for path in (d / ".corral" / "corral.sock", d / "examples" / ".corral" / "corral.sock"):
            with socket.socket(socket.AF_UNIX) as probe:
                probe.settimeout(1.0)
                try:
                    probe.connect(str(path))
                    _pid, uid, _gid = struct.unpack(
                        "3i", probe.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
                except OSError:  # none there, a stale one, or one we may not use
                    continue
                # another user's listener (in /tmp, sticky, any user's may be) would be
                # sent the commands and their secrets: never offered
                if uid in (os.getuid(), 0):
                    return path
    return None


class Ctx:
    def __init__(self, socket: str | None) -> None:
        self.socket = socket

    def client(self, wait_forever: bool = False) -> Client:
        path: str | Path = self.socket or ""
        if not path:  # no --socket, no CORRAL_SOCKET: the standard places
            from ..paths import client_socket

            path = client_socket(None)
        try:
            return Client(path, timeout=None) if wait_forever else Client(path)
        except Unreachable as exc:
            near = None if self.socket else _answering_socket()
            if near is None:
                raise
            import shlex

            # a daemon of the user's own answers nearby (./run.sh's): name it rather
            # than "start it", but never use it unasked (decision 2380)
            raise Unreachable(
                f"{str(exc).partition(chr(10))[0]}\na daemon answers at {near}, found from "
                f"this directory: export CORRAL_SOCKET={shlex.quote(str(near))} "
                "(or pass --socket)") from None

    def info(self) -> m.DaemonInfoResult | None:
        """The daemon's answer to a ping now (None: it does not answer)."""
        try:
            with self.client() as c:
                info: m.DaemonInfoResult = c.ask(m.DaemonInfo())
            return info
        except (Unreachable, CallFailed, TimeoutError, OSError):
            return None

    def call(self, params: m.Params, *, reachable: bool = True, wait_forever: bool = False,
             **kw: Any) -> Any:
        """Call the method whose params these are and answer the result; exit with the
        reason on failure. With `reachable=False` an unreachable daemon raises Unreachable
        for the caller; `wait_forever` drops the client's timeout (for a call the daemon
        bounds itself)."""
        method = params.declared.name
        try:
            with self.client(wait_forever) as c:
                # the Struct itself: msgspec encodes it (and a Raw input in it) as it is
                return c.ask(params, **kw)
        except Unreachable as exc:
            if not reachable:
                raise
            fail(str(exc), EXIT_UNREACHABLE)
        except CallFailed as exc:
            fail(exc.message)
        except TimeoutError:
            fail(f"the daemon did not answer {method} within {default_timeout():g} s")

    def call_json(self, params: m.Params, as_json: bool, **kw: Any) -> Any:
        """`call`; with `as_json` the result printed as JSON is the command's whole
        output: it ends there (exit 0)."""
        res = self.call(params, **kw)
        if as_json:
            print_json(res)
            sys.exit(0)
        return res


def fail(message: str, status: int = EXIT_FAILED) -> NoReturn:
    """`corral: MESSAGE` on stderr, and the command exits with `status`."""
    click.echo(f"corral: {message}", err=True)
    sys.exit(status)


def read_tables(path: str, section: str) -> dict[str, Any]:
    """The [section.NAME] tables of a TOML file (or a JSON file's `section` object) a
    command adds; else the command fails, saying why."""
    import json
    import tomllib

    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        fail(f"cannot read {path}: {exc.strerror}")
    try:
        data = json.loads(raw) if path.endswith(".json") else tomllib.loads(raw.decode())
    except (UnicodeDecodeError, ValueError) as exc:
        fail(f"{path}: syntax error: {exc}")
    tables = data.get(section) if isinstance(data, dict) else None
    if not isinstance(tables, dict) or not tables:
        fail(f"{path}: no [{section}.NAME] tables")
    return tables


pass_ctx = click.make_pass_decorator(Ctx)
socket_option = click.option(
    "--socket", "socket_", envvar="CORRAL_SOCKET", metavar="PATH",
    help="The daemon's control socket (default: CORRAL_SOCKET, else the standard place).")


# the names users of supervisord, PM2, docker and kubectl type first, for ours
ALIASES = {"ls": "status", "list": "status", "ps": "status", "delete": "remove",
           "rm": "remove", "show": "describe", "monit": "top"}
# their words that name no command of ours: what corral does instead (a guess among our
# names sent a PM2 user's `save` to `scale`)
HABITS = {"save": "corral keeps the agents added and scaled at runtime across restarts "
                  "by itself: there is nothing to save",
          "startup": "`corral systemd install` writes the unit that starts corral at boot",
          "kill": "`corral shutdown` drains and stops the daemon and its agents",
          "jlist": "`corral status --json`",
          "reread": "`corral reload` reads the config again and applies its difference"}
# never offered as a guess: a typo must not be one Enter away from losing work
DESTRUCTIVE = frozenset({"shutdown", "remove", "stop", "restart", "cancel", "drain",
                         "rollback", "signal", "scale", "pause", "deploy", "reload"})


class _TakesRaw:
    """A command or group of corral's: it takes `--raw` (terminal.py), whichever one the
    operator puts it on (`corral --raw logs`, `corral logs --raw`)."""

    params: list[click.Parameter]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.params.append(raw_option())


class _Command(_TakesRaw, click.Command):
    pass


class _Subgroup(_TakesRaw, click.Group):
    command_class = _Command
    group_class = type


# each command module (corral/cli/NAME.py) and the commands it defines, the one place
# they are listed: a command's module is imported when the command is asked for, so
# `corral status` imports the status module and what it needs, not every other command's
# (`--help` lists them all, and imports them all for their help: one source of the help,
# the methods' declarations). tests/test_cli_start.py holds it to what the modules define.
COMMANDS: dict[str, tuple[str, ...]] = {
    "approvals": ("approvals",),
    "cluster": ("drain", "nodes"),
    "daemon": ("check-config", "clock", "daemon", "doctor", "info", "reload", "shutdown",
               "ui", "version"),
    "events": ("events",),
    "fleet": ("pause", "pid", "remove", "restart", "resume", "scale", "signal", "start",
              "stop"),
    "helping": ("help",),
    "history": ("audit", "history", "rollback"),
    "importing": ("import",),
    "logs": ("logs", "tail"),
    "mcp": ("mcp",),
    "packages": ("deploy", "releases"),
    "schedules": ("schedules",),
    "sessions": ("sessions",),
    "specs": ("add", "describe", "update"),
    "status": ("stats", "status"),
    "systemd": ("systemd",),
    "tasks": ("cancel", "run", "submit", "task", "tasks"),
    "teams": ("teams",),
    "tenants": ("tenants",),
    "tokens": ("token",),
    "tools": ("prompts", "resources", "tools"),
    "top": ("top",),
    "trace": ("trace",),
    "upgrading": ("upgrade",),
    "workflows": ("run-cancel", "run-status", "runs", "workflows"),
}
_MODULE_OF = {name: module for module, names in COMMANDS.items() for name in names}


class _Group(_TakesRaw, click.Group):
    command_class = _Command
    group_class = _Subgroup

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *_MODULE_OF})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        name = ALIASES.get(cmd_name, cmd_name)
        if name not in self.commands and name in _MODULE_OF:
            # the module registers its commands on this group as it is imported
            import importlib

            importlib.import_module(f"{__package__}.{_MODULE_OF[name]}")
        return super().get_command(ctx, name)

    def resolve_command(self, ctx: click.Context, args: list[str]
                        ) -> tuple[str | None, click.Command | None, list[str]]:
        name = args[0] if args else ""
        if (name and not name.startswith("-") and not ctx.resilient_parsing
                and self.get_command(ctx, name) is None):
            if name in HABITS:
                ctx.fail(f"No such command {name!r}: {HABITS[name]}.")
            import difflib

            def likeness(c: str) -> tuple[bool, float]:
                # the same letters in another order (`stauts`) is the likeliest typo
                return (sorted(c) == sorted(name),
                        difflib.SequenceMatcher(None, name, c).ratio())

            safe = [c for c in (*self.list_commands(ctx), *ALIASES) if c not in DESTRUCTIVE]
            near = sorted(difflib.get_close_matches(name, safe, n=3), key=likeness,
                          reverse=True)
            hint = f" Did you mean {' or '.join(repr(c) for c in near)}?" if near else ""
            risky = difflib.get_close_matches(name, sorted(DESTRUCTIVE), n=1)
            if risky and (not near or likeness(risky[0]) >= likeness(near[0])):
                # said only where it is what was likely meant
                hint += f" (`{risky[0]}` is never guessed: type it whole.)"
            ctx.fail(f"No such command {name!r}.{hint} (`corral --help` lists them.)")
        return super().resolve_command(ctx, args)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """Each command's whole first sentence, not cut to the width click chooses."""
        rows = [(name, cmd.get_short_help_str(limit=1000)) for name in self.list_commands(ctx)
                if (cmd := self.get_command(ctx, name)) is not None and not cmd.hidden]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)
        by = {name: [a for a, n in ALIASES.items() if n == name] for name in ALIASES.values()}
        with formatter.section("Aliases"):
            formatter.write_dl([(name, ", ".join(a)) for name, a in sorted(by.items())])

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            # Ctrl-C ends a follow or top: exit 130 as shells expect, with no "Aborted!",
            # no traceback, and no second interrupt raised while the interpreter shuts
            # down ("Exception ignored ... KeyboardInterrupt")
            import signal as signals

            signals.signal(signals.SIGINT, signals.SIG_IGN)
            with contextlib.suppress(Exception):
                sys.stdout.flush()
            sys.exit(130)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@socket_option
@click.version_option(package_name="corral")
@click.pass_context
def cli(ctx: click.Context, socket_: str | None) -> None:
    """corral: a supervisor for AI-agent processes."""
    ctx.obj = Ctx(socket_)


def complete_agents(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[str]:
    try:
        root = ctx.find_root().obj or Ctx(None)
        with root.client() as c:
            st: m.AgentsStatusResult = c.ask(m.AgentsStatus())
        return sorted({a.name for a in st.agents if a.name.startswith(incomplete)})
    except Exception:
        return []


def env_pairs(given: tuple[str, ...]) -> dict[str, str]:
    """`--env KEY=VALUE`, repeated, as the variables it sets."""
    bad = next((e for e in given if "=" not in e), None)
    if bad is not None:
        raise click.BadParameter(f"{bad!r} is not KEY=VALUE", param_hint="--env")
    return dict(e.split("=", 1) for e in given)


def set_pairs(given: tuple[str, ...], hint: str) -> dict[str, Any]:
    """`KEY=VALUE`s as the keys they set: a value is JSON (a bare word is a string, as a
    person means it), a dotted key a key of a table (limits.memory_mb=512)."""
    import json

    out: dict[str, Any] = {}
    for item in given:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint=hint)
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        *tables, last = key.split(".")
        at = out
        for t in tables:
            at = at.setdefault(t, {})
            if not isinstance(at, dict):
                raise click.BadParameter(f"{key}: {t} is set to a value above",
                                         param_hint=hint)
        at[last] = value
    return out


names_arg = click.argument("names", nargs=-1, shell_complete=complete_agents)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")


@cli.command()
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion(shell: str) -> None:
    """Print the shell completion script: eval "$(corral completion bash)"."""
    from click.shell_completion import get_completion_class

    comp_cls = get_completion_class(shell)
    assert comp_cls is not None
    click.echo(comp_cls(cli, {}, "corral", "_CORRAL_COMPLETE").source())
