"""Procfiles (Heroku, foreman, honcho): `TYPE: command` a line, `#` comments. A command
is a shell's: it runs under `sh -c`. A process type whose command reads $PORT is given one
as foreman gives it: 5000 for the first type, 100 more for each type after it."""

from __future__ import annotations

import re
from pathlib import Path

from ..supervisor.config import ConfigError
from .model import Conversion, How, config_text

BASE_PORT = 5000  # foreman's and honcho's
_LINE = re.compile(r"^([A-Za-z0-9_-]+):\s*(.*)$")


def read(path: Path, how: How) -> Conversion:
    lines = config_text(path).splitlines()
    imp = Conversion(str(path), "procfile")
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        m = _LINE.match(line.strip())
        if m is None or not m[2].strip():
            # foreman and honcho pass over a line that is not one: so does corral, saying so
            imp.note(f"line {number}", "(line)", f"{line.strip()[:60]!r}: not carried: not "
                                                 "`TYPE: command` (foreman and honcho "
                                                 "pass over it too)")
            continue
        kind, command = m[1], m[2].strip()
        table: dict[str, object] = {"command": ["sh", "-c", f"exec {command}"],
                                    "protocol": "none"}
        where = f"line {number} ({kind})"
        if re.search(r"\$\{?PORT\b", command):
            port = BASE_PORT + 100 * len(imp.agents)
            table["env"] = {"PORT": str(port)}
            imp.note(where, "$PORT", f"set to {port} (foreman's port for this process "
                                     "type); with replicas, each would need its own")
        imp.add(where, kind, table)
    if not imp.agents:
        raise ConfigError(f"{path}: no process types (`TYPE: command` lines)")
    return imp
