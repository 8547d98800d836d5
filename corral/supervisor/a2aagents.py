"""`[a2a_agents.NAME]` made the one supervised MCP server `a2a` whose tools they are
(mcp/a2atool.py, the tools `a2a__NAME`): a call of a remote A2A agent is a tool call of the
pool, so it passes what every tool call passes (policy, budget, journal, replay)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .config import A2aAgentSpec, McpServerSpec

A2A_SERVER = "a2a"
CALL_MARGIN = 5.0  # seconds


def a2a_server(agents: dict[str, A2aAgentSpec], base: Path) -> McpServerSpec:
    """The server of `agents`; each `token_file` made absolute against the config's dir."""
    table = {name: {"url": spec.url, "description": spec.description,
                    "timeout": spec.timeout,
                    "token_file": str(base / spec.token_file) if spec.token_file else None}
             for name, spec in sorted(agents.items())}
    # its table is its argv: nothing secret in it (a token is read from its file at a call)
    return McpServerSpec(name=A2A_SERVER, command=[sys.executable, "-m", "corral.mcp.a2atool",
                                                   json.dumps(table, sort_keys=True)],
                         tools_untrusted=sorted(n for n, s in agents.items() if s.untrusted),
                         # the pool's deadline of a call: past the longest agent's own, so
                         # that each call ends by its agent's, with its name said
                         timeout=max(s.timeout for s in agents.values()) + CALL_MARGIN)
