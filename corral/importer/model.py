"""What a file becomes: agent tables in the file's order, and what was not carried."""

from __future__ import annotations

import errno
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from ..statefiles import kind
from ..supervisor.config import RUN_AS_ROOT as RUN_AS_ROOT  # the importers' refusal too
from ..supervisor.config import ConfigError
from ..supervisor.names import NAME_RE, RESERVED

# a user's or group's name (useradd's, with Samba's trailing $) or number
USER_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*\$?")
MAX_BYTES = 4 << 20  # a config file: a file larger is not one (nor is /dev/zero)


def text_of(path: Path) -> str:
    """A file's text as its tool would make it out: UTF-8, less a byte-order mark; UTF-16
    where its mark says so (a file saved on Windows); a byte that is no character is
    U+FFFD. A regular file or a pipe (`corral import <(...)`), at most MAX_BYTES: a
    device is not read (/dev/zero would be read to exhaustion, a tty would wait). Raises
    OSError."""
    fd = os.open(path, os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        mode = os.fstat(fd).st_mode
        if not (stat.S_ISREG(mode) or stat.S_ISFIFO(mode)):
            raise OSError(errno.EINVAL, f"not a regular file ({kind(mode)}): not read")
        os.set_blocking(fd, True)  # a pipe's writer may be slower than its reader
        data = f.read(MAX_BYTES + 1)
    if len(data) > MAX_BYTES:
        raise OSError(errno.EFBIG, f"larger than {MAX_BYTES >> 20} MiB: not a config "
                                   "file corral import reads")
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return data.decode("utf-16", errors="replace")
    return data.decode("utf-8-sig", errors="replace")


def config_text(path: Path) -> str:
    """`text_of`, or ConfigError saying why the file cannot be read."""
    try:
        return text_of(path)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None


def json_data(path: Path, text: str) -> Any:
    """A `.json` file's data, JSON5 at most, read by json5 (as data: pm2 evaluates a
    `.json` as JavaScript, corral import never runs one: anything past JSON5, a call, a
    variable, `process.env`, is refused where it stands); ConfigError saying where."""
    import json5  # (only where such a file is read)

    try:
        return _whole(json5.loads(text))
    except (ValueError, RecursionError) as exc:
        where = "nested too deep" if isinstance(exc, RecursionError) else re.sub(
            r"^<string>:(\d+) (.*) at column (\d+)$", r"line \1 column \3: \2", str(exc))
        raise ConfigError(f"{path}: not JSON (nor JSON5; a .json file is data, never run): "
                          f"{where}") from None


def _whole(value: Any) -> Any:
    """Strings whose `\\u` escapes of a pair of surrogates are the one character they
    name (json5 keeps the two halves)."""
    if isinstance(value, str):
        return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    if isinstance(value, list):
        return [_whole(v) for v in value]
    if isinstance(value, dict):
        return {_whole(k): _whole(v) for k, v in value.items()}
    return value


def whole(text: str, where: str, key: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise ConfigError(f"{where}: {key}: {text!r} is not a whole number") from None


def named_text(path: Path, by: str) -> str:
    """The text of a file another file names (a supervisord include, a systemd unit's
    drop-in), read only when it is a regular file in the directory it is named in: a
    link out of that directory is not followed (it may name any file of the host, read
    as whoever runs the import, root often). Raises ConfigError, saying which and why."""
    try:
        real = path.resolve(strict=True)
        if real.parent != path.parent.resolve():
            raise ConfigError(f"{by}: {path}: a link to {real}, outside its directory: "
                              "not read (move or copy the file there)")
        if not real.is_file():
            raise ConfigError(f"{by}: {path}: not a regular file: not read")
        return text_of(real)
    except OSError as exc:
        raise ConfigError(f"{by}: {path}: cannot read: {exc.strerror}") from None


class How(NamedTuple):
    """What an import reads its files with: the environment `%(ENV_X)s` and the like
    read, the PM2 profile (`--env NAME`: an app's `env_NAME` over its `env`), and a
    template unit's instance (`--instance NAME`: `systemctl enable UNIT@NAME`'s)."""

    env: dict[str, str]
    profile: str | None = None
    instance: str | None = None  # a systemd template unit's (`--instance NAME`)


@dataclass
class Conversion:
    """One file (with what it includes) as corral's agents; `notes` are what stderr says:
    each setting not carried over, or carried with a change, and why."""

    source: str
    kind: str  # "supervisord", "pm2", "procfile", "systemd", "mcp"
    agents: dict[str, dict[str, Any]] = field(default_factory=dict)
    servers: dict[str, dict[str, Any]] = field(default_factory=dict)  # [mcp_servers.*]
    notes: list[str] = field(default_factory=list)
    # by agent: the units it is ordered after, as (where, directive, unit): an order
    # between files is known once every file is read (link)
    ordered: dict[str, list[tuple[str, str, str]]] = field(default_factory=dict)

    def note(self, where: str, key: str, why: str) -> None:
        self.notes.append(f"{self.source}: {where}: {key}: {why}")

    def add(self, where: str, wanted: str, table: dict[str, Any]) -> str:
        """Add an agent named as near `wanted` as corral's names allow (said when it
        differs); its name."""
        name = agent_name(wanted, self.agents)
        if name != wanted:
            self.note(where, "name", f"{wanted!r} is agent {name} (corral's names: "
                                     "1-64 of [A-Za-z0-9_-], starting with a letter or "
                                     "digit, unique)")
        self.agents[name] = table
        return name


def agent_name(wanted: str, taken: dict[str, Any] | set[str]) -> str:
    """`wanted` as a valid agent name not in `taken`."""
    name = re.sub(r"[^A-Za-z0-9_-]+", "-", wanted).lstrip("_-")[:64] or "agent"
    if name == RESERVED:
        name = f"{name}-agent"
    base, n = name, 2
    while name in taken or not NAME_RE.fullmatch(name):
        suffix = f"-{n}"
        name = base[:64 - len(suffix)] + suffix
        n += 1
    return name


def link(imports: list[Conversion]) -> None:
    """Each unit's `After=`/`Requires=` on a unit imported with it, as its agent's
    `after`/`requires`; on any other (a target, a unit not imported), said and not carried."""
    units = {Path(imp.source).name: name for imp in imports if imp.kind == "systemd"
             for name in imp.agents}
    for imp in imports:
        for agent, wanted in imp.ordered.items():
            for where, key, unit in wanted:
                other = units.get(unit) or units.get(f"{unit}.service")
                if other is None or other == agent:
                    imp.note(where, key, f"{unit}: not carried: not a unit imported with "
                                         "it (corral orders its own agents only)")
                    continue
                key_to = "after" if key.lower() == "after" else "requires"
                names = imp.agents[agent].setdefault(key_to, [])
                if other not in names:
                    names.append(other)
                if key_to == "requires":
                    imp.note(where, key, f"{unit}: requires = [{other}] (started once it "
                                         "serves, stopped if it fails for good)")


def unique(imports: list[Conversion]) -> None:
    """Agent names unique across the files imported together: a later file's agent of a
    name an earlier one took is renamed (its own file's `after`/`requires` following),
    said."""
    taken: set[str] = set()
    servers: set[str] = set()
    for imp in imports:
        for name in [n for n in imp.servers if n in servers]:
            other = agent_name(name, servers | set(imp.servers))
            imp.servers[other] = imp.servers.pop(name)
            imp.note("(file)", "name", f"{name!r} is server {other} (a file imported "
                                       "before it has a server of that name)")
        servers |= set(imp.servers)
        renamed: dict[str, str] = {}
        for name in list(imp.agents):
            if name in taken:
                renamed[name] = agent_name(name, taken | set(imp.agents))
                imp.note("(file)", "name", f"{name!r} is agent {renamed[name]} (a file "
                                           "imported before it has an agent of that name)")
            taken.add(renamed.get(name, name))
        if renamed:
            imp.agents = {renamed.get(n, n): t for n, t in imp.agents.items()}
            imp.ordered = {renamed.get(n, n): o for n, o in imp.ordered.items()}
            for table in imp.agents.values():
                for key in ("after", "requires"):
                    if key in table:
                        table[key] = [renamed.get(n, n) for n in table[key]]
