"""Each tenant's log directory (docs/tenants.md): `LOG_DIR/tenants/T/`, owned by the
tenant's user, mode 0700. It is made (and its owner set) when a source's file is opened,
from the specs as they are then, so a tenant whose user changes has it handed over.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..supervisor.config import ConfigError
from ..supervisor.process import resolve_user
from ..supervisor.runas import run_as, tenant_of
from .logfiles import LogPlace, Rotation
from .logs import log_file_name

if TYPE_CHECKING:
    from ..supervisor.config import ProcessSpec
    from ..supervisor.parts import Parts
    from ..supervisor.process_replica import ProcessReplica
    from .logs import LogHub

TENANTS = "tenants"


def own_rotation(spec: ProcessSpec, default: Rotation) -> Rotation:
    """A process's log rotation: its own keys, else [supervisor]'s (`default`)."""
    return Rotation(
        spec.log_max_bytes or default.max_bytes,
        default.backups if spec.log_backups is None else spec.log_backups,
        default.every if spec.log_rotate_every is None else spec.log_rotate_every,
        default.compress if spec.log_compress is None else spec.log_compress)


def _directory(path: str, mode: int) -> None:
    """`path` made a directory, or one already (as pathlib's mkdir with exist_ok)."""
    try:
        os.mkdir(path, mode)
    except FileExistsError:
        if not os.path.isdir(path):
            raise


class TenantDirs:
    def __init__(self, parts: Parts, hub: LogHub, report: Callable[..., None]) -> None:
        self.agents = parts.agents
        self.tools = parts.tools
        self.quotas = parts.quotas
        self.hub = hub
        self.report = report
        self._made: dict[str, tuple[int, int]] = {}  # tenant -> the owner its dir has
        hub.place_by(self.locate)

    def _spec(self, source: str) -> ProcessSpec | None:
        a = self.agents.get(source)
        if a is not None:
            return a.spec
        e = self.tools.servers.get(source)
        return e.spec if e is not None else None

    def locate(self, source: str) -> LogPlace | None:
        """Where a source's log file is: its own `log_file`, else in its tenant's
        directory when it runs as the tenant's user, else in the log directory; rotated
        as its spec says, else as [supervisor] does. None: not a process's."""
        spec = self._spec(source)
        if spec is None or self.hub.log_dir is None:
            return None
        rotation = own_rotation(spec, self.hub.rotation)
        # the places as str, joined, not Paths: pathlib would intern each agent's file
        # name at each open (LogPlace)
        if spec.log_file is not None:
            return LogPlace(spec.log_file, rotation)
        tenant = tenant_of(spec)
        run = run_as(spec, self.quotas.specs.get(tenant))
        where = self._ensure(tenant, run.user, run.group) if run.tenant_user else None
        return LogPlace(os.path.join(where or self.hub.log_dir, log_file_name(source)),
                        rotation)

    def starting(self, r: ProcessReplica) -> dict[str, str]:
        """A replica's process is about to start: a file open where it no longer belongs
        (its tenant or user changed) is reopened where it does."""
        f = self.hub.files.get(r.name)
        if f is not None and f.path != self.hub.path_of(r.name):
            self.hub.reopen(r.name)
        return {}

    def _ensure(self, tenant: str, user: str | None, group: str | None) -> str | None:
        assert self.hub.log_dir is not None
        d = os.path.join(self.hub.log_dir, TENANTS, tenant)
        try:
            uid, gid = resolve_user(user, group)
        except ConfigError:
            return None  # the spawn itself fails with this error, and says so
        owner = (uid if uid is not None else os.geteuid(),
                 gid if gid is not None else os.getegid())
        if self._made.get(tenant) == owner:
            return d
        try:
            _directory(os.path.dirname(d), 0o755)
            _directory(d, 0o700)
            os.chown(d, *owner)
            os.chmod(d, 0o700)
        except OSError as exc:
            self.report(f"tenant {tenant}: cannot make its log directory {d} "
                        f"({exc.strerror}); its processes log to {self.hub.log_dir}",
                        priority=4)
            return None
        self._made[tenant] = owner
        return d
