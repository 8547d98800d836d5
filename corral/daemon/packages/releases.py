"""Releases on disk (docs/packages.md, "Releases": the layout): PACKAGES/NAME/RELEASE, a
release only once its READY marker is there, read-only from then on; beside them the worker
SDK every release imports, the ROLLOUT markers, and the clean-up of interrupted builds.
Blocking file work: callers run it in a thread.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec

from ...statefiles import make_dir, replace_file
from ...supervisor.release import READY

INFO = "release.json"
SDK = ".sdk"
CACHE = ".cache"
ROLLOUT = "ROLLOUT"
BUILD_LOCK = ".build.lock"


class ReleaseInfo(msgspec.Struct, kw_only=True):
    """release.json: what a release is, written by its build."""

    name: str
    release: str
    version: str | None
    python: str  # the interpreter the venv was made from
    python_version: str
    lock: str | None  # the lock file's name in the source, or None: no dependencies
    built_at: float
    build_seconds: float
    size_bytes: int
    who: str
    source: str | None = None  # the package's directory it was built from


class Rollout(msgspec.Struct, kw_only=True):
    """NAME/ROLLOUT: a switch to `release` is under way; `previous` is the agent's table
    before it, put back at start-up (None: the agent did not exist)."""

    release: str
    previous: dict[str, Any] | None
    time: float
    who: str


class Releases:
    def __init__(self, root: Path) -> None:
        self.root = root

    def ready(self, path: Path) -> bool:
        return (path / READY).is_file()

    def info(self, path: Path) -> ReleaseInfo | None:
        try:
            return msgspec.json.decode((path / INFO).read_bytes(), type=ReleaseInfo)
        except (OSError, msgspec.DecodeError):
            return None

    def of(self, name: str) -> list[tuple[Path, ReleaseInfo | None, bool]]:
        """The agent's release directories: (path, its info, ready), oldest first."""
        base = self.root / name
        try:
            entries = [e for e in os.scandir(base) if e.is_dir() and not e.name.startswith(".")]
        except OSError:
            return []
        return sorted(((Path(e.path), self.info(Path(e.path)), self.ready(Path(e.path)))
                       for e in entries), key=lambda x: (x[1].built_at if x[1] else 0.0,
                                                         x[0].name))

    # -- start-up ----------------------------------------------------------------------
    def prepare(self) -> None:
        """The root exists, other users may pass through it (an agent running as another
        user reaches its release), and nothing of it is listed to them."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o711)

    def incomplete(self) -> Iterator[Path]:
        try:
            names = [e for e in os.scandir(self.root) if e.is_dir()
                     and not e.name.startswith(".")]
        except OSError:
            return
        for agent in names:
            with contextlib.suppress(OSError):
                for e in os.scandir(agent.path):
                    if e.is_dir() and not (Path(e.path) / READY).is_file():
                        yield Path(e.path)

    def rollouts(self) -> dict[str, Rollout]:
        out: dict[str, Rollout] = {}
        with contextlib.suppress(OSError):
            for e in os.scandir(self.root):
                marker = Path(e.path) / ROLLOUT
                if e.is_dir() and marker.is_file():
                    try:
                        out[e.name] = msgspec.json.decode(marker.read_bytes(), type=Rollout)
                    except (OSError, msgspec.DecodeError):
                        out[e.name] = Rollout(release="?", previous=None, time=0.0, who="?")
        return out

    # -- the rollout marker ------------------------------------------------------------
    def begin_rollout(self, name: str, rollout: Rollout) -> None:
        """Durably, before the switch is recorded anywhere else."""
        base = self.root / name
        make_dir(base, 0o755)
        replace_file(base / ROLLOUT, msgspec.json.encode(rollout), sync=True)
        fsync_dir(base)

    def end_rollout(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.root / name / ROLLOUT).unlink()
            fsync_dir(self.root / name)

    # -- the SDK -----------------------------------------------------------------------
    def install_sdk(self, package: Path) -> Path:
        """A read-only copy of the running corral's worker SDK, the directory to put on
        PYTHONPATH; other versions' copies are removed."""
        files = [package / "__init__.py", *sorted((package / "worker").glob("*.py"))]
        digest = hashlib.sha256()
        for f in files:
            digest.update(f.relative_to(package).as_posix().encode() + b"\0")
            digest.update(f.read_bytes() + b"\0")
        base = self.root / SDK
        make_dir(base, 0o755)  # a link here would have its target's entries removed
        base.chmod(0o755)
        target = base / digest.hexdigest()[:16]
        for old in base.iterdir():
            if old != target:
                remove_tree(old)
        if (target / READY).is_file():
            return target
        remove_tree(target)
        for f in files:
            dest = target / "corral" / f.relative_to(package)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, dest)
        (target / READY).touch()
        make_read_only(target)
        return target


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_read_only(path: Path) -> None:
    """No write bit on anything under `path`, itself included; everything readable (and
    directories and executables passable) by every user."""
    for dirpath, dirnames, filenames in os.walk(path, topdown=False):
        for n in filenames:
            p = os.path.join(dirpath, n)
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                continue
            os.chmod(p, 0o444 | (0o111 if st.st_mode & stat.S_IXUSR else 0))
        for n in dirnames:
            p = os.path.join(dirpath, n)
            if not os.path.islink(p):
                os.chmod(p, 0o555)
    os.chmod(path, 0o555)


def remove_tree(path: Path) -> None:
    """Remove a (read-only) release or a part-built one; nothing there is fine."""
    if not os.path.lexists(path):
        return
    if os.path.islink(path) or not os.path.isdir(path):
        os.unlink(path)
        return
    for dirpath, dirnames, _ in os.walk(path):
        with contextlib.suppress(OSError):
            os.chmod(dirpath, 0o700)
        for n in dirnames:
            p = os.path.join(dirpath, n)
            if not os.path.islink(p):
                with contextlib.suppress(OSError):
                    os.chmod(p, 0o700)
    shutil.rmtree(path)


def tree_size(path: Path) -> int:
    total = 0
    for dirpath, _, filenames in os.walk(path):
        for n in filenames:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, n)).st_blocks * 512
    return total
