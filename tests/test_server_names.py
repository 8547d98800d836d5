"""A server name no SERVER__TOOL can be misread by (issue 88): a server named `a_` beside
`a` had its tool `x` at `a___x`, which the gateway reads as server `a`'s tool `_x`: `a_`'s
`x` unreachable, and `a`'s `_x` taken by whichever came later. A server name ending with
`_` is refused at config load, by check-config and by `corral mcp add`
(tests/test_mcp_add.py), in the same words."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.supervisor.config import ConfigError
from corral.supervisor.configload import load_config

from .daemon_harness import corral_run

SAID = "a server name may not end with '_' (a___TOOL reads as server a's tool)"


def test_a_server_named_a_underscore_beside_a_is_refused_at_load(tmp_path: Path) -> None:
    """The attack's config: `a` and `a_` both declared, in the file and in its MCP
    servers file."""
    path = tmp_path / "corral.toml"
    path.write_text('[mcp_servers.a]\ncommand = "true"\n\n[mcp_servers.a_]\ncommand = "true"\n')
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value) == f"{path}: mcp_servers.a_: {SAID}"
    (tmp_path / "mcp.json").write_text('{"mcpServers": {"a_": {"command": "true"}}}')
    path.write_text('[supervisor]\nmcp_servers_file = "mcp.json"\n\n'
                    '[mcp_servers.a]\ncommand = "true"\n')
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value) == f"{tmp_path}/mcp.json: mcpServers.a_: {SAID}"
    r = corral_run(["check-config", "--no-check", str(path)])
    assert r.returncode == 1 and f"mcpServers.a_: {SAID}" in r.stderr, r.stderr
