"""Where things live: the rules of DESIGN.md section 7, in one place."""

from __future__ import annotations

import os
from pathlib import Path


def default_config() -> Path:
    if os.geteuid() == 0:
        return Path("/etc/corral/corral.toml")
    return Path.home() / ".config" / "corral" / "corral.toml"


SYSTEM_SOCKET = Path("/run/corral/corral.sock")  # the system service's (systemd unit)


def runtime_directory() -> Path | None:
    """systemd's RuntimeDirectory for this service, if it gave one."""
    value = os.environ.get("RUNTIME_DIRECTORY")
    return Path(value.split(":")[0]) if value else None


def default_socket() -> Path:
    """$RUNTIME_DIRECTORY (systemd) > $XDG_RUNTIME_DIR/corral > /run/corral for root >
    ~/.local/state/corral (a user without a runtime dir)."""
    runtime = runtime_directory()
    if runtime is not None:
        return runtime / "corral.sock"
    if os.environ.get("XDG_RUNTIME_DIR"):
        return Path(os.environ["XDG_RUNTIME_DIR"]) / "corral" / "corral.sock"
    if os.geteuid() == 0:
        return SYSTEM_SOCKET
    return Path.home() / ".local" / "state" / "corral" / "corral.sock"


def client_socket(explicit: str | None) -> Path:
    """What a client uses: --socket, else CORRAL_SOCKET, else the daemon's default rules —
    and for a user whose own daemon is not running, the system service's socket, so a
    member of the corral group reaches it without --socket."""
    if explicit:
        return Path(explicit)
    if os.environ.get("CORRAL_SOCKET"):
        return Path(os.environ["CORRAL_SOCKET"])
    own = default_socket()
    if own != SYSTEM_SOCKET and not _exists(own) and _exists(SYSTEM_SOCKET.parent):
        return SYSTEM_SOCKET
    return own


def _exists(p: Path) -> bool:
    try:
        return p.exists()
    except OSError:  # a directory we may not enter
        return False


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
