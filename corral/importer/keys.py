"""Every key each reader knows, by tool: those it carries and those it says it does not
(with why). docs/migrating.md is held to it (each of these keys is in its tool's
section), and `corral help import` lists it with the table check-config reads."""

from __future__ import annotations

from ..supervisor.configload import CARRIED, CLIENT_KEYS
from . import pm2, supervisord, systemd

# supervisord's sections, besides [program:x]'s keys
SUPERVISORD_SECTIONS = ("[group:]", "[include]", "[eventlistener:]", "[fcgi-program:]",
                        "[supervisord]")


def known() -> dict[str, list[str]]:
    """Tool -> the keys its reader knows, as that tool spells them (systemd's in the
    case its documentation writes them is not kept: compared without case)."""
    return {
        "supervisord": sorted({*supervisord.PROGRAM_KEYS_CARRIED, *supervisord.NOT_CARRIED,
                               *SUPERVISORD_SECTIONS}),
        "PM2": sorted({*pm2.CARRIED, *pm2.NOT_CARRIED, "env_*"}),
        "systemd": sorted({*systemd.CARRIED, *systemd.ORDER, *systemd.NOT_CARRIED,
                           *systemd.QUIET}),
        "MCP clients": sorted({*CARRIED, *CLIENT_KEYS, "mcpServers",
                               "servers", "inputs"}),
    }
