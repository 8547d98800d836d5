"""The gateway's tokens file (`[gateway] tokens_file`): its clients, each a token's SHA-256,
an allowlist and limits, read and checked before any is used."""

from __future__ import annotations

import tomllib
from pathlib import Path

import msgspec

from ..supervisor.config import ConfigError, PositiveInt
from ..supervisor.names import NAME_RE, RULE

OPERATOR = "operator"  # the operator's host at the local socket, a gateway client too


class TokenEntry(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """One [clients.NAME] table of the tokens file."""

    token_sha256: str
    tools: list[str] = msgspec.field(default_factory=lambda: ["*"])
    max_concurrent: int | None = None
    rate_per_minute: int | None = None
    max_sessions: PositiveInt | None = None  # its HTTP sessions at once


class TokensFile(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    clients: dict[str, TokenEntry] = {}


def load_tokens(path: Path) -> dict[str, tuple[str, TokenEntry]]:
    """token hash -> (client name, entry); errors name the file and the key."""
    from ..supervisor.configload import convert

    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not TOML: {exc}") from None
    parsed: TokensFile = convert(data, TokensFile, where=str(path))
    out: dict[str, tuple[str, TokenEntry]] = {}
    for name, entry in parsed.clients.items():
        if not NAME_RE.fullmatch(name) or name in ("anonymous", OPERATOR):
            # known by its name alone, as the gateway's other callers are by theirs: one
            # of theirs was that caller (its instance, limits, sessions, keys: 1831)
            raise ConfigError(f"{path}: clients.{name}: a client's name is {RULE}, and "
                              f"neither anonymous nor {OPERATOR} (the gateway's own callers)")
        digest = entry.token_sha256.lower()
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise ConfigError(f"{path}: clients.{name}.token_sha256: not a SHA-256 hex digest")
        out[digest] = (name, entry)
    return out
