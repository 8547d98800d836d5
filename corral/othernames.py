"""What other supervisors call corral's agent keys (supervisord's, PM2's, systemd's), each
beside the agent table's key that does what it does (a nested key as `limits.rss_mb`).
One table for two readers: check-config names corral's key when a file uses another
tool's (a spelling guess would propose `autostart` for supervisord's `autorestart`, a key
that means something else), and `corral import` says which key a setting went to; and the
names corral's own keys had before a rename, for the same hint."""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple


class OtherName(NamedTuple):
    key: str  # corral's key in an agent table
    tools: tuple[str, ...]  # whose name it is
    spelling: str  # as they write it

    @property
    def whose(self) -> str:
        """`supervisord's and PM2's`."""
        return " and ".join(f"{t}'s" for t in self.tools)


_S, _P, _D = "supervisord", "PM2", "systemd"
_TABLE = [
    # (their name, corral's key, whose)
    ("autorestart", "restart", (_S, _P)), ("directory", "cwd", (_S,)),
    ("environment", "env", (_S,)), ("Environment", "env", (_D,)),
    ("numprocs", "replicas", (_S,)), ("startsecs", "start_secs", (_S,)),
    ("startretries", "start_retries", (_S,)), ("exitcodes", "exit_codes", (_S,)),
    ("stopsignal", "stop_signal", (_S,)), ("stopwaitsecs", "stop_timeout", (_S,)),
    ("priority", "after", (_S,)), ("stdout_logfile", "log_file", (_S,)),
    ("stdout_logfile_maxbytes", "log_max_bytes", (_S,)),
    ("stdout_logfile_backups", "log_backups", (_S,)), ("out_file", "log_file", (_P,)),
    ("script", "command", (_P,)), ("instances", "replicas", (_P,)),
    ("kill_timeout", "stop_timeout", (_P,)), ("min_uptime", "start_secs", (_P,)),
    ("stop_exit_codes", "exit_codes", (_P,)), ("restart_delay", "backoff_initial", (_P,)),
    ("exp_backoff_restart_delay", "backoff_initial", (_P,)),
    ("max_memory_restart", "limits.rss_mb", (_P,)),
    ("listen_timeout", "start_timeout", (_P,)),
    ("cron_restart", "restart_cron", (_P,)), ("depends_on", "after", (_S,)),
    ("ExecStart", "command", (_D,)), ("WorkingDirectory", "cwd", (_D,)),
    ("RestartSec", "backoff_initial", (_D,)), ("TimeoutStopSec", "stop_timeout", (_D,)),
    ("TimeoutStartSec", "start_timeout", (_D,)),
    ("StartLimitBurst", "max_restarts", (_D,)),
    ("StartLimitIntervalSec", "restart_window", (_D,)),
    ("StartLimitInterval", "restart_window", (_D,)),
    ("SuccessExitStatus", "exit_codes", (_D,)), ("KillSignal", "stop_signal", (_D,)),
    ("LimitNOFILE", "limits.open_files", (_D,)), ("WatchdogSec", "watchdog_sec", (_D,)),
    ("Nice", "limits.nice", (_D,)), ("After", "after", (_D,)),
    ("Requires", "requires", (_D,)), ("EnvironmentFile", "env_file", (_D,)),
]
# keyed by the other tool's spelling folded to lower case (systemd's directives are
# CamelCase, and a person who types one into a TOML file may not keep the case); a name
# two tools share (environment) is one entry, both tools named
OTHER_NAMES: dict[str, OtherName] = {}
for _name, _key, _tools in _TABLE:
    _had = OTHER_NAMES.get(_name.lower())
    OTHER_NAMES[_name.lower()] = OtherName(
        _key, (_had.tools if _had else ()) + _tools, _had.spelling if _had else _name)


# corral's own keys that were renamed, by the old name: the new one and the decision
# (docs/decisions.md) that renamed it; an old key is refused, naming its new one
RENAMED: dict[str, tuple[str, int]] = {
    "tasks_kept": ("keep_tasks", 1089), "tasks_kept_for": ("keep_tasks_for", 1089),
    "tasks_kept_mb": ("keep_tasks_mb", 1089), "revisions_kept": ("keep_revisions", 1089),
    "revisions_kept_mb": ("keep_revisions_mb", 1089),
}


def listing() -> list[str]:
    """The table as lines for people (`corral import --help`): corral's key, then the
    other tools' names for it."""
    by = {key: [f"{o.spelling} ({', '.join(o.tools)})" for o in OTHER_NAMES.values()
                if o.key == key] for key in {o.key for o in OTHER_NAMES.values()}}
    return [f"{key:<18} {', '.join(names)}" for key, names in sorted(by.items())]


def target(key: str) -> str:
    """corral's key for another tool's `key`, which must be in the table (an importer's
    own key names)."""
    return OTHER_NAMES[key.lower()].key


def hint(key: str, choices: Iterable[str]) -> str | None:
    """What to say of an unknown `key` that is another tool's name: ` (`KEY` is TOOL's
    name: corral's is `K`)` when the table it was found in (its keys: `choices`) has that
    key, else nothing ("": a spelling guess would name a key that does what `key` does
    not); None when `key` is no other tool's. A key corral renamed (RENAMED) is named with
    its new name, where the table has it."""
    renamed = RENAMED.get(key)
    if renamed is not None and renamed[0] in set(choices):
        return f" (renamed `{renamed[0]}` by decision {renamed[1]})"
    other = OTHER_NAMES.get(key.lower())
    if other is None:
        return None
    if other.key.split(".")[0] not in set(choices):
        return ""
    return f" (`{key}` is {other.whose} name: corral's is `{other.key}`)"
