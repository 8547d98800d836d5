"""The providers' keys (docs/models.md, "Keys"), read by the daemon from its environment or
a file when [models] is applied, held in its memory alone. A key read from the daemon's
environment is taken out of it, since every process corral starts inherits that
environment; a reload finds it where it was taken to.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from ...redact import MASK
from ...supervisor.config import ConfigError, ModelSpec

MAX_KEY_BYTES = 16 * 1024  # a key file larger than this is refused, not read


def read_key(name: str, spec: ModelSpec, base: Path, taken: dict[str, str]) -> str | None:
    """The key of model `name` (None: its upstream takes none), or ConfigError. A variable
    read is moved from the environment into `taken` (variable -> key)."""
    if spec.key_env is not None:
        key = os.environ.pop(spec.key_env, "").strip() or taken.get(spec.key_env, "")
        if not key:
            raise ConfigError(f"models.{name}.key_env: the daemon's environment variable "
                              f"{spec.key_env} is not set")
        taken[spec.key_env] = key
        return key
    if spec.key_file is None:
        return None
    path = Path(spec.key_file)
    path = path if path.is_absolute() else base / path
    try:
        with path.open("rb") as f:
            data = f.read(MAX_KEY_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"models.{name}.key_file: cannot read {path}: "
                          f"{exc.strerror}") from None
    if len(data) > MAX_KEY_BYTES:
        raise ConfigError(f"models.{name}.key_file: {path} is over MAX_KEY_BYTES "
                          f"({MAX_KEY_BYTES}): not a key")
    lines = data.decode(errors="replace").strip().splitlines()
    if not lines or not lines[0].strip():
        raise ConfigError(f"models.{name}.key_file: {path} is empty")
    return lines[0].strip()


def read_keys(models: Mapping[str, ModelSpec], base: Path, taken: dict[str, str]
              ) -> dict[str, str | None]:
    return {name: read_key(name, spec, base, taken) for name, spec in models.items()}


def hidden(body: bytes, key: str | None) -> bytes:
    """`body` with every occurrence of `key` hidden (an upstream's 401 that quotes what
    it was sent)."""
    if not key:
        return body
    return body.replace(key.encode(), MASK.encode())


def hidden_headers(headers: dict[str, str], key: str | None) -> dict[str, str]:
    if not key:
        return headers
    return {k: v.replace(key, MASK) for k, v in headers.items()}
