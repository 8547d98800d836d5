"""Unprivileged unless told (issue 88, DESIGN section 10): under a daemon running as root,
an agent that names no `user` (nor has its tenant's) runs as a uid of its own from
`[supervisor] dynamic_uids` (systemd's `DynamicUser=` range, 61184-65519), never as root;
only `user = "root"` written out runs it as root.

A uid is the agent's for the daemon's life: picked from its held name's hash, the next
free one where that is taken (by another agent, or by an account of the host), as systemd
picks them. The held name is the agent's name and, for another tenant's agent than the
default tenant's, its tenant's (`NAME.TENANT`): a name one tenant frees gives another
tenant's agent neither its uid nor its directory (decision 2170). The uid's group is the
uid. Its state directory, `STATE_DIR-agents/` and the held name (mode 0700,
the uid's; the parent 0711 root's: corral's own state directory is 0700 and no agent of
its own user may pass through it), is its HOME and $STATE_DIRECTORY, writable in its
sandbox; another agent's, `/etc/shadow` and corral's state are out of its reach. A uid
given another agent after a restart finds its earlier holder's directory root's, and
an agent given another uid than before finds all in its own made the new one's.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

from .config import DEFAULT_TENANT, ConfigError, passwd_of

DEFAULT_RANGE = (61184, 65519)
UID_MAX = 2**31 - 2


def uid_range(given: list[int]) -> range | None:
    """`[supervisor] dynamic_uids` as a range; None for `[]` (agents with no user run as
    the daemon's user, as before); ConfigError for anything else but two uids, low first."""
    if not given:
        return None
    if len(given) != 2 or not 0 < given[0] <= given[1] <= UID_MAX:
        raise ConfigError(f"supervisor.dynamic_uids: {given} is not [FIRST, LAST] of uids "
                          f"between 1 and {UID_MAX} (systemd's range: "
                          f"{list(DEFAULT_RANGE)}; [] for none)")
    return range(given[0], given[1] + 1)


def held_name(name: str, tenant: str) -> str:
    """What agent `name` of `tenant` holds its uid and state directory by (no agent nor
    tenant name holds a '.': names.py)."""
    return name if tenant == DEFAULT_TENANT else f"{name}.{tenant}"


def homes_of(state_dir: Path) -> Path:
    """Where the dynamic users' state directories are: beside corral's own."""
    return state_dir.with_name(f"{state_dir.name}-agents")


class DynamicUsers:
    """The uids handed to agents (`uid_of`) and their state directories (`home_of`)."""

    def __init__(self, uids: range, homes: Path) -> None:
        self.uids = uids
        self.homes = homes
        self._by_name: dict[str, int] = {}
        self._taken: set[int] = set()

    def uid_of(self, name: str, tenant: str) -> int:
        """The uid of tenant `tenant`'s agent `name`, the same for the daemon's life;
        ConfigError when every uid of the range is taken."""
        held = held_name(name, tenant)
        uid = self._by_name.get(held)
        if uid is not None:
            return uid
        size = len(self.uids)
        start = int.from_bytes(hashlib.sha256(held.encode()).digest()[:8], "big") % size
        for i in range(size):
            uid = self.uids[(start + i) % size]
            if uid not in self._taken and passwd_of(str(uid)) is None:
                self._by_name[held] = uid
                self._taken.add(uid)
                return uid
        raise ConfigError(f"agents.{name}: every uid of [supervisor] dynamic_uids "
                          f"({self.uids.start}-{self.uids.stop - 1}) is taken")

    def home_of(self, name: str, tenant: str, uid: int) -> Path:
        """The state directory of tenant `tenant`'s agent `name`, made (or handed over) to
        `uid`, 0700."""
        name = held_name(name, tenant)
        self.homes.mkdir(mode=0o711, parents=True, exist_ok=True)
        st = os.lstat(self.homes)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
            raise OSError(f"{self.homes} is not a directory of corral's own")
        os.chmod(self.homes, 0o711)
        self._taken_from_others(name, uid)
        home = self.homes / name
        try:
            home.mkdir(mode=0o700)
        except FileExistsError:
            if not stat.S_ISDIR(os.lstat(home).st_mode):  # a link planted: never followed
                raise OSError(f"{home} is not a directory") from None
        fd = os.open(home, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            if os.fstat(fd).st_uid != uid:  # another uid's before this daemon: all in it
                _own_all(fd, uid)           # made this one's
            os.fchown(fd, uid, uid)
            os.fchmod(fd, 0o700)
        finally:
            os.close(fd)
        return home

    def _taken_from_others(self, name: str, uid: int) -> None:
        """The state directories `uid` owns of other names (their agents given it before
        a restart, removed since or given another) made root's, 0700: the uid's new
        holder reads nothing its earlier holder left (it read them by their names)."""
        for entry in os.scandir(self.homes):
            if entry.name == name or not entry.is_dir(follow_symlinks=False) \
                    or entry.stat(follow_symlinks=False).st_uid != uid:
                continue
            fd = os.open(entry.path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
            try:
                os.fchown(fd, 0, 0)
                os.fchmod(fd, 0o700)
            finally:
                os.close(fd)


def _own_all(fd: int, uid: int) -> None:
    """Everything under the directory `fd` made uid's (links themselves, never what they
    name: fwalk opens each directory without following a link)."""
    for _, dirs, files, at in os.fwalk(".", dir_fd=fd, follow_symlinks=False):
        for entry in dirs + files:
            os.chown(entry, uid, uid, dir_fd=at, follow_symlinks=False)
