"""Where things live: the rules of DESIGN.md section 7, in one place."""

from __future__ import annotations

import os
from pathlib import Path


def default_config() -> Path:
    if os.geteuid() == 0:
        return Path("/etc/corral/corral.toml")
    return Path.home() / ".config" / "corral" / "corral.toml"


def default_socket() -> Path:
    """$RUNTIME_DIRECTORY (systemd) > $XDG_RUNTIME_DIR/corral > /run/corral for root >
    ~/.local/state/corral (a user without a runtime dir)."""
    if os.environ.get("RUNTIME_DIRECTORY"):
        return Path(os.environ["RUNTIME_DIRECTORY"].split(":")[0]) / "corral.sock"
    if os.environ.get("XDG_RUNTIME_DIR"):
        return Path(os.environ["XDG_RUNTIME_DIR"]) / "corral" / "corral.sock"
    if os.geteuid() == 0:
        return Path("/run/corral/corral.sock")
    return Path.home() / ".local" / "state" / "corral" / "corral.sock"


def client_socket(explicit: str | None) -> Path:
    """What a client uses: --socket, else CORRAL_SOCKET, else the daemon's default rules."""
    if explicit:
        return Path(explicit)
    if os.environ.get("CORRAL_SOCKET"):
        return Path(os.environ["CORRAL_SOCKET"])
    return default_socket()


def default_state_dir() -> Path:
    if os.environ.get("STATE_DIRECTORY"):
        return Path(os.environ["STATE_DIRECTORY"].split(":")[0])
    if os.geteuid() == 0:
        return Path("/var/lib/corral")
    return Path.home() / ".local" / "state" / "corral"


def default_log_dir(state_dir: Path) -> Path:
    if os.environ.get("LOGS_DIRECTORY"):
        return Path(os.environ["LOGS_DIRECTORY"].split(":")[0])
    return state_dir / "logs"


def resolve(base: Path, value: str | None) -> Path | None:
    """Relative paths in a config file are relative to the file's directory."""
    if value is None:
        return None
    p = Path(os.path.expanduser(value))
    return p if p.is_absolute() else (base / p).resolve()
