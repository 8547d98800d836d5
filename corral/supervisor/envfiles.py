"""Environment files (`env_file`, systemd's EnvironmentFile=; syntax in docs/config.md),
read as each process starts, so an edit reaches the next start. The agent's own `env` is
set over them (docker compose's order)."""

from __future__ import annotations

import re
from collections.abc import Iterable

from .config import ConfigError

ENV_FILE_BYTES = 1024 * 1024  # one file at most: it is read at every start
_LINE = re.compile(r"(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*)")


def read_env_files(paths: Iterable[str]) -> dict[str, str]:
    """The variables of the files, in order (a later file's over an earlier's)."""
    out: dict[str, str] = {}
    for given in paths:
        optional = given.startswith("-")
        path = given[1:] if optional else given
        try:
            with open(path, "rb") as f:
                data = f.read(ENV_FILE_BYTES + 1)
        except OSError as exc:
            if optional and isinstance(exc, FileNotFoundError):
                continue
            raise ConfigError(f"env_file {path}: cannot read: {exc.strerror}") from None
        if len(data) > ENV_FILE_BYTES:
            raise ConfigError(f"env_file {path}: larger than {ENV_FILE_BYTES} bytes "
                              "(ENV_FILE_BYTES)")
        out.update(parse(data.decode("utf-8", "replace"), path))
    return out


def parse(text: str, path: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        m = _LINE.fullmatch(line)
        if m is None:
            raise ConfigError(f"env_file {path}: line {number}: not KEY=VALUE")
        value = m[2]
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        out[m[1]] = value
    return out

