"""What other supervisors call corral's agent keys: supervisord's `[program:x]` keys,
PM2's ecosystem-file keys and systemd's `[Service]`/`[Unit]` directives, each beside the
key of an agent table that does what it does (a nested key as `limits.rss_mb`).

One table for two readers: check-config names corral's key when a file uses another
tool's (a spelling guess would propose `autostart` for supervisord's `autorestart`, a key
that means something else), and `corral import` says which key a program's setting went to.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple


class OtherName(NamedTuple):
    key: str  # corral's key in an agent table
    tools: str  # whose name it is, for the message


# keyed by the other tool's spelling folded to lower case (systemd's directives are
# CamelCase, and a person who types one into a TOML file may not keep the case)
OTHER_NAMES: dict[str, OtherName] = {
    # supervisord
    "autorestart": OtherName("restart", "supervisord's and PM2's"),
    "directory": OtherName("cwd", "supervisord's"),
    "environment": OtherName("env", "supervisord's and systemd's"),
    "numprocs": OtherName("replicas", "supervisord's"),
    "startsecs": OtherName("start_secs", "supervisord's"),
    "startretries": OtherName("start_retries", "supervisord's"),
    "exitcodes": OtherName("exit_codes", "supervisord's"),
    "stopsignal": OtherName("stop_signal", "supervisord's"),
    "stopwaitsecs": OtherName("stop_timeout", "supervisord's"),
    # PM2
    "script": OtherName("command", "PM2's"),
    "instances": OtherName("replicas", "PM2's"),
    "kill_timeout": OtherName("stop_timeout", "PM2's"),
    "min_uptime": OtherName("start_secs", "PM2's"),
    "stop_exit_codes": OtherName("exit_codes", "PM2's"),
    "restart_delay": OtherName("backoff_initial", "PM2's"),
    "exp_backoff_restart_delay": OtherName("backoff_initial", "PM2's"),
    "max_memory_restart": OtherName("limits.rss_mb", "PM2's"),
    "listen_timeout": OtherName("start_timeout", "PM2's"),
    # systemd
    "execstart": OtherName("command", "systemd's"),
    "workingdirectory": OtherName("cwd", "systemd's"),
    "restartsec": OtherName("backoff_initial", "systemd's"),
    "timeoutstopsec": OtherName("stop_timeout", "systemd's"),
    "timeoutstartsec": OtherName("start_timeout", "systemd's"),
    "startlimitburst": OtherName("max_restarts", "systemd's"),
    "startlimitintervalsec": OtherName("restart_window", "systemd's"),
    "startlimitinterval": OtherName("restart_window", "systemd's"),
    "successexitstatus": OtherName("exit_codes", "systemd's"),
    "killsignal": OtherName("stop_signal", "systemd's"),
    "memorymax": OtherName("limits.memory_mb", "systemd's"),
    "limitnofile": OtherName("limits.open_files", "systemd's"),
    "watchdogsec": OtherName("watchdog_sec", "systemd's"),
    "nice": OtherName("limits.nice", "systemd's"),
}


def corral_key(key: str) -> OtherName | None:
    """corral's key for another tool's `key`, or None."""
    return OTHER_NAMES.get(key.lower())


def target(key: str) -> str:
    """corral's key for another tool's `key`, which must be in the table (an importer's
    own key names)."""
    return OTHER_NAMES[key.lower()].key


def hint(key: str, choices: Iterable[str]) -> str | None:
    """What to say of an unknown `key` that is another tool's name: ` (`KEY` is TOOL's
    name: corral's is `K`)` when the table it was found in (its keys: `choices`) has that
    key, else nothing ("": a spelling guess would name a key that does what `key` does
    not); None when `key` is no other tool's."""
    other = corral_key(key)
    if other is None:
        return None
    if other.key.split(".")[0] not in set(choices):
        return ""
    return f" (`{key}` is {other.tools} name: corral's is `{other.key}`)"
