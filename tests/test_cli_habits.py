"""The CLI answers to the names users of supervisord, PM2 and docker type first, and a
typo is never one Enter away from a destructive command (issue 36, "Habits")."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from corral.cli.app import ALIASES, DESTRUCTIVE
from corral.cli.main import cli


@pytest.mark.parametrize(("alias", "name"), sorted(ALIASES.items()))
def test_each_alias_is_its_command(alias: str, name: str) -> None:
    got = CliRunner().invoke(cli, [alias, "--help"])
    want = CliRunner().invoke(cli, [name, "--help"])
    assert got.exit_code == 0, got.output
    assert got.output.replace(f"cli {alias} ", f"cli {name} ") == want.output


@pytest.mark.parametrize("typo", ["shutdwn", "shut", "remov", "stpo", "canel", "drian",
                                  "sho", "restrat", "sigal"])
def test_a_typo_is_never_offered_a_destructive_command(typo: str) -> None:
    got = CliRunner().invoke(cli, [typo])
    assert got.exit_code == 2
    assert f"No such command '{typo}'." in got.output
    offered = got.output.split("Did you mean", 1)[1] if "Did you mean" in got.output else ""
    assert not any(f"'{d}'" in offered for d in DESTRUCTIVE), got.output


def test_show_is_describe_not_shutdown() -> None:
    got = CliRunner().invoke(cli, ["shw"])
    assert "Did you mean 'show'?" in got.output, got.output


def test_help_shows_whole_descriptions_and_the_aliases() -> None:
    got = CliRunner(env={"COLUMNS": "100"}).invoke(cli, ["--help"])
    assert got.exit_code == 0
    commands = got.output.split("Commands:", 1)[1]
    assert "..." not in commands
    text = " ".join(got.output.split())
    assert ("check-config Validate a config file (and its includes) without starting "
            "anything: every key, and that every agent's and MCP server's command is an "
            "executable on the daemon's PATH (the running daemon's, else the installed "
            "unit's, else yours) or a file.") in text
    assert "status ls, list, ps" in text and "remove delete, rm" in text


def test_an_attempt_says_where_it_ran_as_far_as_it_is_known() -> None:
    from corral import methods as m
    from corral.cli.tasks import where

    assert where(m.Attempt(2, 41, 0.0, outcome="succeeded")) == "replica 2 pid 41 "
    assert where(m.Attempt(0, 41, 0.0, node="a")) == "node a replica 0 pid 41 "
    # a cluster attempt lost with its node before a replica took it: no -1, no None
    assert where(m.Attempt(-1, None, 0.0, outcome="lost", node="b")) == (
        "node b (claimed, never on a replica) ")
    assert where(m.Attempt(-1, None, 0.0, node="b")) == (
        "node b (claimed, waiting for a replica) ")


def test_a_typo_near_a_destructive_command_says_it_is_never_guessed() -> None:
    got = CliRunner().invoke(cli, ["shutdow"])
    assert got.exit_code == 2
    assert "(`shutdown` is never guessed: type it whole.)" in got.output, got.output
    assert "Did you mean 'shutdown'" not in got.output


def test_a_transposed_typo_is_guessed_first_and_no_unrelated_command_is_named() -> None:
    got = CliRunner().invoke(cli, ["stauts"])
    assert got.exit_code == 2
    assert "Did you mean 'status' or " in got.output, got.output  # the same letters: first
    assert "never guessed" not in got.output  # `restart` is no likelier than `status`


def test_version_without_a_daemon_exits_as_every_command_that_needs_one(
        tmp_path: Path) -> None:
    got = CliRunner().invoke(cli, ["--socket", str(tmp_path / "none.sock"), "version"])
    assert got.exit_code == 3, got.output
    assert got.output.splitlines()[1] == "daemon: not reachable"


@pytest.mark.parametrize(("word", "said"), [
    ("save", "corral keeps the agents added and scaled at runtime across restarts by "
             "itself: there is nothing to save."),
    ("startup", "`corral systemd install` writes the unit that starts corral at boot."),
    ("kill", "`corral shutdown` drains and stops the daemon and its agents."),
    ("jlist", "`corral status --json`."),
    ("reread", "`corral reload` reads the config again and applies its difference.")])
def test_another_tools_word_is_told_what_corral_does_instead(word: str, said: str) -> None:
    """PM2's `save` was offered nothing and told `scale` is never guessed."""
    got = CliRunner().invoke(cli, [word])
    assert got.exit_code == 2
    assert got.output.endswith(f"Error: No such command {word!r}: {said}\n"), got.output
