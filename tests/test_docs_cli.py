"""The `corral` commands the README and docs/ show take the options they are shown with: a
reader who pastes one is not told `No such option` (docs/a2a.md once said `--scopes`)."""

from __future__ import annotations

import re

import click

from corral.cli.app import cli

from .conftest import ROOT

# a command as the docs write it: to a line's end or a shell operator, a `\` continuing it
COMMAND = re.compile(r"(?:^|[\s`(])(?:\.venv/bin/)?corral ((?:\\\n|[^`\n|;&#])+)")
OPTION = re.compile(r"--[a-z][a-z-]*")


def _resolve(words: list[str]) -> tuple[click.Command | None, int]:
    """The command the words name, and how many words its name took."""
    command: click.Command = cli
    taken = 0
    while isinstance(command, click.Group) and taken < len(words):
        sub = command.get_command(click.Context(command), words[taken])
        if sub is None:
            return None, taken
        command, taken = sub, taken + 1
    return command, taken


def unknown_options(text: str) -> list[str]:
    """Each `corral CMD --option` of a text whose command has no such option."""
    found = []
    for match in COMMAND.finditer(text):
        words = match.group(1).replace("\\\n", " ").split()
        command, taken = _resolve(words)
        if command is None or taken == 0:
            continue
        known = {"-h", "--help"}
        for param in [*command.params, *cli.params]:
            known.update(param.opts, param.secondary_opts)
        for word in words[taken:]:
            if word == "--":
                break  # what follows is another program's (`corral mcp add NAME -- CMD`)
            option = word.split("=")[0].rstrip(".,:)'\"`")
            if OPTION.fullmatch(option) and option not in known:
                found.append(f"corral {' '.join(words[:taken])} {option}")
    return found


def test_every_option_the_docs_give_a_corral_command_is_one_of_its_options() -> None:
    wrong = {
        str(path.relative_to(ROOT)): unknown_options(path.read_text())
        for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]}
    assert {name: found for name, found in wrong.items() if found} == {}


def test_a_misspelt_option_in_the_docs_is_caught() -> None:
    """The check above can fail: an option one letter off, before or after a line's break,
    is reported with its command; a real one, an argument and what follows `--` are not."""
    assert unknown_options("`corral token create ci --scope tasks:run --json`") == []
    assert unknown_options("`corral token create NAME --scopes\ntasks:run`") == [
        "corral token create --scopes"]
    assert unknown_options("```sh\n.venv/bin/corral run hello \\\n  --inptu '{}'\n```") == [
        "corral run --inptu"]
    assert unknown_options("`corral mcp add fs -- npx server --root /tmp`") == []
    assert unknown_options("`corral nosuchcommand --whatever`") == []
