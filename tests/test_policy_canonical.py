"""Policy rules judge canonical forms (issue 88; decision 1130): a path spelled otherwise
than its rule (`//etc/passwd`, `../../etc/passwd`) and a host spelled otherwise than its
deny list (`evil.example.`, `2852039166`, `0xa9fea9fe`) reached the server. The rules are
compiled from a real config file and judged as every door judges a call."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from corral.supervisor.canonical import canonical_host, canonical_path
from corral.supervisor.config import ConfigError
from corral.supervisor.configload import load_config
from corral.supervisor.policy import RuleBook

RULES = textwrap.dedent("""
    [[policy]]
    name = "nothing of /etc"
    match = { tool = "fs__read_file" }
    when = { "arguments.path" = { under = "/etc" } }
    effect = "deny"

    [[policy]]
    name = "writes stay in the workspace"
    match = { tool = "fs__write_file" }
    when = { "arguments.path" = { under = "/workspace" } }
    effect = "allow"

    [[policy]]
    name = "no write elsewhere"
    match = { tool = "fs__write_file" }
    effect = "deny"

    [[policy]]
    name = "no metadata or evil hosts"
    match = { tool = "web__fetch" }
    when = { "arguments.host" = { in = ["evil.example", "169.254.169.254"] } }
    effect = "deny"
""")


def book(tmp_path: Path) -> RuleBook:
    path = tmp_path / "corral.toml"
    path.write_text(RULES)
    return RuleBook(load_config(path))


def verdict(rules: RuleBook, tool: str, **arguments: str) -> tuple[str, str]:
    said = rules.judge(None, None, "worker", "tool", tool, {"arguments": arguments})
    return said.effect, said.rule


def test_a_path_deny_holds_on_a_double_slash_and_a_climb_out_of_a_relative_path(
        tmp_path: Path) -> None:
    """The attack: `under = "/etc"` denied `/etc/passwd` and let `//etc/passwd` and
    `../../../../../../../../etc/passwd` through to the server. Paths are made absolute
    and normalized first; a relative one, whose place is the server's cwd, is taken to be
    under a deny's prefix and outside an allow's."""
    rules = book(tmp_path)
    denied = ("deny", "nothing of /etc")
    for path in ("/etc/passwd", "//etc/passwd", "///etc//passwd", "/tmp/../etc/passwd",
                 "../../../../../../../../etc/passwd", "etc/passwd", "passwd", "./x"):
        assert verdict(rules, "fs__read_file", path=path) == denied, path
    assert verdict(rules, "fs__read_file", path="/etcetera/x") == ("allow", "")
    assert verdict(rules, "fs__read_file", path="//srv/etc/passwd") == ("allow", "")
    # an allow is not opened by a path it cannot place: the next rule denies
    for path in ("notes.txt", "../workspace/notes.txt", "/workspace/../etc/x"):
        assert verdict(rules, "fs__write_file", path=path) == (
            "deny", "no write elsewhere"), path
    for path in ("/workspace/a.txt", "//workspace/a.txt", "/workspace/./b/../a.txt"):
        assert verdict(rules, "fs__write_file", path=path) == (
            "allow", "writes stay in the workspace"), path


def test_a_host_deny_holds_on_a_trailing_dot_and_an_integer_or_hex_address(
        tmp_path: Path) -> None:
    """The attack: a deny list naming `evil.example` and `169.254.169.254` let
    `evil.example.`, `2852039166` and `0xa9fea9fe` through. Hosts are matched on the
    form a resolver reads."""
    rules = book(tmp_path)
    denied = ("deny", "no metadata or evil hosts")
    for host in ("evil.example", "EVIL.example", "evil.example.", "169.254.169.254",
                 "2852039166", "0xa9fea9fe", "0251.0376.0251.0376", "169.254.43518",
                 "::ffff:169.254.169.254", "[::ffff:a9fe:a9fe]"):
        assert verdict(rules, "web__fetch", host=host) == denied, host
    for host in ("good.example", "evil.example.com", "169.254.169.253", "deadbeef"):
        assert verdict(rules, "web__fetch", host=host) == ("allow", ""), host


def test_the_canonical_forms() -> None:
    assert canonical_path("//etc/passwd") == "/etc/passwd"
    assert canonical_path("/") == "/" and canonical_path("//") == "/"
    assert canonical_path("etc/passwd") is None
    assert canonical_host("::1") == "::1" and canonical_host("[0:0::1]") == "::1"
    assert canonical_host("gpt-4o") == "gpt-4o" and canonical_host(".") == "."
    # an IPv6 scope is any text, past the characters an address is written with
    assert canonical_host("FE80:0::1%Eth0") == "fe80::1%eth0"
    assert canonical_host("hi 3.") == "hi 3" and canonical_host("") == ""


def test_a_relative_prefix_is_refused_at_load(tmp_path: Path) -> None:
    path = tmp_path / "corral.toml"
    path.write_text('[[policy]]\nwhen = { "arguments.path" = { under = "workspace" } }\n'
                    'effect = "deny"\n')
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value) == (f"{path}: policy[0]: a when test's under is an absolute path "
                              "(given: 'workspace')")


def test_a_list_naming_no_address_reads_no_value_as_one(tmp_path: Path) -> None:
    """A list of words alone (`in = ["secret", "password"]`) judges a value by its text,
    no address parsed (digits as text each tried as an inet_aton spelling at every call):
    its spellings still match, an address matches none; a list naming an address beside a
    word reads a value's address as before."""
    path = tmp_path / "corral.toml"
    path.write_text(textwrap.dedent("""
        [[policy]]
        name = "no secret"
        match = { tool = "min__echo" }
        when = { "arguments.text" = { in = ["secret", "Password."] } }
        effect = "deny"

        [[policy]]
        name = "no loopback"
        match = { tool = "web__fetch" }
        when = { "arguments.host" = { in = ["secret", "127.0.0.1"] } }
        effect = "deny"
    """))
    rules = RuleBook(load_config(path))
    for text in ("secret", "SECRET", "secret.", "[password]", "PASSWORD."):
        assert verdict(rules, "min__echo", text=text) == ("deny", "no secret"), text
    for text in ("12", "2130706433", "0x7f000001", "::1", "fe80::1%secret", "secrets"):
        assert verdict(rules, "min__echo", text=text) == ("allow", ""), text
    for host in ("2130706433", "0x7f000001", "127.1", "[::ffff:127.0.0.1]", "Secret."):
        assert verdict(rules, "web__fetch", host=host) == ("deny", "no loopback"), host
    assert verdict(rules, "web__fetch", host="127.0.0.2") == ("allow", "")
