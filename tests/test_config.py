"""Config errors that check-config's end-to-end test does not reach."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.supervisor.config import ConfigError
from corral.supervisor.configload import load_config


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_unknown_top_level_key(tmp_path: Path) -> None:
    c = write(tmp_path / "c.toml", "[agentz.a]\ncommand = 'x'\n")
    with pytest.raises(ConfigError) as err:
        load_config(c)
    assert str(err.value) == f"{c}: agentz: unknown top-level key (did you mean `agents`?)"


def test_an_include_may_not_redefine_an_agent(tmp_path: Path) -> None:
    (tmp_path / "conf.d").mkdir()
    inc = write(tmp_path / "conf.d" / "a.toml", "[agents.a]\ncommand = 'y'\n")
    c = write(tmp_path / "c.toml", '[supervisor]\ninclude = ["conf.d/*.toml"]\n'
                                   "[agents.a]\ncommand = 'x'\n")
    with pytest.raises(ConfigError) as err:
        load_config(c)
    assert str(err.value) == f"{inc}: agents.a: already defined in {c}"


def test_agents_must_be_a_table_and_cannot_be_read_missing(tmp_path: Path) -> None:
    c = write(tmp_path / "c.toml", "agents = 3\n")
    with pytest.raises(ConfigError) as err:
        load_config(c)
    assert str(err.value) == f"{c}: agents: expected a table"
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path / "missing.toml")
    assert str(err.value) == f"{tmp_path}/missing.toml: cannot read: No such file or directory"


def test_cwd_defaults_to_the_declaring_file(tmp_path: Path) -> None:
    c = write(tmp_path / "c.toml", "[agents.a]\ncommand = 'x'\n[agents.b]\ncommand = 'x'\n"
                                   "cwd = 'sub'\n")
    cfg = load_config(c)
    assert cfg.agents["a"].cwd == str(tmp_path.resolve())
    assert cfg.agents["b"].cwd == str((tmp_path / "sub").resolve())


def test_mcp_servers_file_understands_every_desktop_field(tmp_path: Path) -> None:
    (tmp_path / "mcp.json").write_text("""{"mcpServers": {
        "mcp_server_time": {"command": "uvx", "args": ["mcp-server-time"], "env": {"TZ": "UTC"},
                            "cwd": "/tmp", "type": "stdio"},
        "remote": {"url": "https://mcp.example.com/mcp", "headers": {"X-Key": "${KEY}"}},
        "legacy": {"serverUrl": "https://old.example.com/sse", "transport": "sse"},
        "off": {"command": "nothing", "disabled": true}}}""")
    c = write(tmp_path / "c.toml", '[supervisor]\nmcp_servers_file = "mcp.json"\n'
                                   "[mcp_servers.mcp_server_time]\nstart_timeout = 60.0\n")
    servers = load_config(c).mcp_servers
    assert sorted(servers) == ["legacy", "mcp_server_time", "remote"]  # "off" is disabled
    t = servers["mcp_server_time"]
    assert (t.argv(), t.env, t.cwd, t.start_timeout) == (["uvx", "mcp-server-time"],
                                                         {"TZ": "UTC"}, "/tmp", 60.0)
    r = servers["remote"]
    assert (r.url, r.headers, r.remote, r.transport) == (
        "https://mcp.example.com/mcp", {"X-Key": "${KEY}"}, True, None)
    assert (servers["legacy"].url, servers["legacy"].transport) == (
        "https://old.example.com/sse", "sse")


@pytest.mark.parametrize("entry,message", [
    # (a client's own key, autoApprove, is passed over: tests/test_moving_in.py)
    ('{"command": "x", "autoApprove": [], "frobnicate": 1}',
     "mcpServers.s: Object contains unknown field `frobnicate`"),
    ('{"command": "x", "url": "http://h"}', "mcpServers.s: give either command (a local "
                                            "server) or url (a remote one)"),
    ('{"url": "http://h", "args": ["a"]}', "mcpServers.s: args, env, envFile and cwd are "
                                           "for a command, not a url"),
    ('{"command": "x", "headers": {"a": "b"}}', "mcpServers.s.headers: headers are for a url, "
                                                "not a command"),
    # the transports a client may name, listed
    ('{"command": "x", "type": "websocket"}', 'mcpServers.s: type: "websocket" is not one '
                                              "of stdio, http, streamable-http, "
                                              "streamableHttp, sse"),
    ('{"url": "http://h", "type": "stdio"}', "mcpServers.s: transport 'stdio' needs a "
                                             "command, not a url"),
])
def test_mcp_servers_file_refuses_what_it_does_not_understand(
        tmp_path: Path, entry: str, message: str) -> None:
    (tmp_path / "mcp.json").write_text(f'{{"mcpServers": {{"s": {entry}}}}}')
    c = write(tmp_path / "c.toml", '[supervisor]\nmcp_servers_file = "mcp.json"\n')
    with pytest.raises(ConfigError) as err:
        load_config(c)
    assert str(err.value) == f"{tmp_path}/mcp.json: {message}"


@pytest.mark.parametrize("name,ok", [("a_b", True), ("a-b_c9", True), ("_a", False),
                                     ("a__b", False), ("corral", False), ("a" * 65, False)])
def test_names_follow_design_section_10(tmp_path: Path, name: str, ok: bool) -> None:
    c = write(tmp_path / "c.toml", f"[mcp_servers.{name}]\ncommand = 'x'\n"
                                   f"[agents.{name.replace('__', '_')}x]\ncommand = 'x'\n")
    if ok:
        assert list(load_config(c).mcp_servers) == [name]
    else:
        with pytest.raises(ConfigError):
            load_config(c)


def test_a_table_without_command_or_url_must_tune_an_imported_server(tmp_path: Path) -> None:
    c = write(tmp_path / "c.toml", "[mcp_servers.ghost]\nstart_timeout = 5.0\n")
    with pytest.raises(ConfigError) as err:
        load_config(c)
    assert str(err.value) == f"{c}: mcp_servers.ghost: needs a command or a url"


def test_roots_are_relative_to_the_config_file(tmp_path: Path) -> None:
    c = write(tmp_path / "c.toml", "[mcp_servers.fs]\ncommand = 'x'\n"
                                   "roots = ['data', 'file:///srv']\nlog_level = 'debug'\n")
    fs = load_config(c).mcp_servers["fs"]
    assert (fs.roots, fs.log_level) == ([str(tmp_path.resolve() / "data"), "file:///srv"],
                                        "debug")
