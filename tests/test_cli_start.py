"""A `corral` command's start imports what that command needs, not every command's
module (app.COMMANDS): the suite runs the CLI ~1,700 times and an operator waits on each
start (bench/RESULTS.md, "The CLI's start")."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import click
import pytest

from corral.cli.app import ALIASES, COMMANDS
from corral.cli.main import cli

ROOT = Path(__file__).resolve().parent.parent

# what a command's start needs nothing of before its first call on the socket
HEAVY = ("asyncio", "difflib", "shutil", "shlex", "pathlib", "urllib", "lzma", "bz2",
         "tomllib", "corral.othernames", "corral.supervisor", "corral.daemon")


def _registered() -> dict[str, str]:
    """Each top-level command, by the module that defines it, once every module in the
    table is imported."""
    for module in COMMANDS:
        importlib.import_module(f"corral.cli.{module}")
    return {name: (c.callback.__module__ if c.callback else "").removeprefix("corral.cli.")
            for name, c in cli.commands.items()}


def test_the_table_is_what_the_modules_define() -> None:
    registered = _registered()
    table = {name: module for module, names in COMMANDS.items() for name in names}
    # the group's own (app.py) is defined with it, not looked up
    assert registered == {**table, "completion": "app"}
    assert not set(ALIASES) & set(registered), "an alias is a command's name"
    # no module in the table is one that defines no command (cli/*.py helpers are not)
    assert all(COMMANDS.values())


def test_each_command_in_the_table_resolves() -> None:
    ctx = click.Context(cli)
    listed = cli.list_commands(ctx)
    assert listed == sorted({*listed}) and set(listed) >= {
        n for names in COMMANDS.values() for n in names}
    for name in listed:
        found = cli.get_command(ctx, name)
        assert found is not None and found.name == name, name
    for alias, name in ALIASES.items():
        assert cli.get_command(ctx, alias) is cli.get_command(ctx, name)
    assert cli.get_command(ctx, "no-such-command") is None


def _modules_after(*args: str) -> tuple[int, list[str], str]:
    """The exit code, the modules imported once the command is done, and its stderr: the
    console script's own start (corral.cli.entry), in a new interpreter."""
    probe = ("import atexit, sys\n"
             "atexit.register(lambda: print(*sorted(sys.modules), file=sys.__stdout__))\n"
             f"sys.argv = ['corral', *{list(args)!r}]\n"
             "from corral.cli.entry import main\n"
             "main()\n")
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                       timeout=60, cwd=ROOT)
    return r.returncode, r.stdout.split(), r.stderr


@pytest.mark.parametrize(("args", "module"), [
    (("status",), "status"), (("run", "echo", "--input", "{}"), "tasks"),
    (("task", "t-1"), "tasks"), (("tasks",), "tasks"), (("reload",), "daemon"),
    (("logs", "echo"), "logs")])
def test_a_commands_start_imports_only_its_module(tmp_path: Path, args: tuple[str, ...],
                                                  module: str) -> None:
    """A command with no daemon to ask (its refusal: the path of its start up to the
    socket) imports its own module, none of the other commands', and none of what no
    command needs before its call."""
    sock = tmp_path / "no.sock"
    code, modules, err = _modules_after("--socket", str(sock), *args)
    assert (code, err) == (3, f"corral: cannot reach the corral daemon at {sock}: no "
                              "socket there\nstart it with `corral daemon --config PATH` "
                              "(or `systemctl start corral`), or point at it with --socket "
                              "/ CORRAL_SOCKET\n")
    commands = {f"corral.cli.{m}" for m in COMMANDS}
    assert sorted(commands & set(modules)) == [f"corral.cli.{module}"]
    assert sorted(m for m in modules if m.startswith(HEAVY)) == []


def test_help_lists_every_command() -> None:
    """`--help` imports each command's module for its help (the help is written once, in
    the methods' declarations and the commands' docstrings)."""
    got = subprocess.run([sys.executable, "-m", "corral", "--help"], capture_output=True,
                         text=True, timeout=60, cwd=ROOT)
    assert got.returncode == 0, got.stderr
    listed = got.stdout.split("Commands:", 1)[1].split("Aliases:", 1)[0]
    # a command's line, not its help's continuation (indented further)
    names = [line.split()[0] for line in listed.splitlines() if line[2:3].isalpha()]
    assert names == cli.list_commands(click.Context(cli))
