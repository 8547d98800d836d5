"""The engine's settings that a running daemon may change (a reload, a release's SDK):
one object the parts that read them share, so a change reaches each at once."""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec

if TYPE_CHECKING:
    from collections.abc import Callable

    from .dynamicusers import DynamicUsers


class Tuning(msgspec.Struct):
    heartbeat_interval: float = 1.0
    heartbeat_timeout: float = 5.0
    max_replicas: int = 16
    sandbox_program: str = "bwrap"  # [supervisor] bwrap
    # corral's own files (path, what), which no sandboxed agent may write or reach
    protected_paths: list[tuple[str, str]] = msgspec.field(default_factory=list)
    # the worker SDK on every release's PYTHONPATH: its directory, installed at the first
    # ask (a release's start); OSError where it cannot be
    release_sdk: Callable[[], str] | None = None
    # the unix socket the gateways are also served on when they are TCP, relayed into
    # egress = "gateways" sandboxes
    gateway_relay: str | None = None
    # the control socket, whose path an egress sandbox has its replica's trip at
    # (egresstrip.py)
    control_socket: str | None = None
    # agents naming no user run as uids of their own (a daemon running as root's)
    dynamic_users: DynamicUsers | None = None
