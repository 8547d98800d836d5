"""An agent package's manifest (docs/packages.md, "The manifest"): `[agent]` in the
package's corral.toml, or `[tool.corral.agent]` in its pyproject.toml. Besides the
package's own keys, it takes every key of an `[agents.NAME]` table, checked by the same
schema (AgentSpec), so a key means one thing in a config file and in a manifest.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tomllib
from pathlib import Path, PurePosixPath
from typing import Any

import msgspec

from ...supervisor.config import AgentSpec, ConfigError
from ...supervisor.configload import convert, validate_name
from . import checked

MANIFEST = "corral.toml"
PYPROJECT = "pyproject.toml"
# lock files, in the order they are looked for beside the manifest
LOCKS = ("uv.lock", "pylock.toml", "requirements.txt")
PACKAGE_KEYS = ("name", "version", "python", "lock", "exclude")
NOT_IN_MANIFEST = ("release",)
MAX_MANIFEST = 1 << 20  # bytes of a manifest or a pyproject.toml corral reads


class Manifest(msgspec.Struct, kw_only=True):
    directory: Path  # the package's directory (absolute)
    file: Path  # where the table is
    name: str
    version: str | None
    python: str | None  # a version ("3.12") or an interpreter's path; None: the daemon's
    lock: Path | None  # the lock file (absolute, inside the directory), None: no deps
    exclude: list[str]  # globs (relative to the directory) left out of the source
    table: dict[str, Any]  # the [agents.NAME] table the rest of the manifest is

    @property
    def lock_kind(self) -> str | None:
        if self.lock is None:
            return None
        return "uv.lock" if self.lock.name == "uv.lock" else (
            "pylock" if self.lock.name.startswith("pylock") and self.lock.suffix == ".toml"
            else "requirements")


def read_manifest(path: str | os.PathLike[str], name: str | None = None) -> Manifest:
    """The manifest of the package at `path` (its directory, or the manifest file);
    `name` overrides the manifest's. ConfigError names the file and the key."""
    given = Path(path)
    if not given.is_absolute():
        raise ConfigError(f"{given}: the package's path must be absolute")
    try:
        is_dir = given.is_dir()  # the operator's path: a link to the package is followed
        directory = (given if is_dir else given.parent).resolve()
        names = [MANIFEST, PYPROJECT] if is_dir else [given.name]
        if not is_dir and not os.path.lexists(given):
            raise ConfigError(f"{given}: no such file or directory")
        root = checked.open_root(str(directory))
    except (OSError, ValueError) as exc:  # a name too long, a NUL in it
        raise ConfigError(f"{str(given)[:200]!r}: not a path here "
                          f"({getattr(exc, 'strerror', None) or exc})") from None
    try:
        return _read(directory, root, names, name)
    finally:
        os.close(root)


def _read(directory: Path, root: int, names: list[str], name: str | None) -> Manifest:
    table: dict[str, Any] | None = None
    project: dict[str, Any] = {}
    where = directory / names[0]
    for n in names:
        if not _present(directory, root, n):
            continue
        f = directory / n
        data = _toml(directory, root, n)
        if n == PYPROJECT:
            project = data.get("project", {}) if isinstance(data.get("project"), dict) else {}
            tool = data.get("tool", {})
            corral = tool.get("corral", {}) if isinstance(tool, dict) else {}
            found = corral.get("agent") if isinstance(corral, dict) else None
            prefix = "tool.corral.agent"
        else:
            found, prefix = data.get("agent"), "agent"
        if found is not None:
            if not isinstance(found, dict):
                raise ConfigError(f"{f}: {prefix}: expected a table")
            table, where = dict(found), f
            break
    if table is None:
        raise ConfigError(f"{directory / names[0] if len(names) == 1 else directory}: no "
                          f"package manifest: an [agent] table in {MANIFEST} or "
                          f"[tool.corral.agent] in {PYPROJECT}")
    if where.name != PYPROJECT and _present(directory, root, PYPROJECT):
        data = _toml(directory, root, PYPROJECT)
        project = data.get("project", {}) if isinstance(data.get("project"), dict) else {}
    return _manifest(directory, root, where, prefix, table, project, name)


def _present(directory: Path, root: int, rel: str) -> bool:
    """Whether the package has the file `rel` (a regular file: anything else there by
    that name is refused, not read)."""
    try:
        st = os.stat(rel, dir_fd=root, follow_symlinks=False)
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise ConfigError(f"{directory / rel}: cannot read: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"{directory / rel}: {checked.kind(st.st_mode)}, not a regular "
                          "file (corral reads a package's manifest, pyproject.toml and lock file "
                          "from regular files only)")
    return True


def _toml(directory: Path, root: int, rel: str) -> dict[str, Any]:
    try:
        return tomllib.loads(checked.read_small(root, rel, MAX_MANIFEST).decode())
    except checked.PathRefusal as exc:
        raise ConfigError(f"{directory / exc.rel}: {exc.reason}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{directory / rel}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        # tomllib's message carries "(at line L, column C)", never the text
        raise ConfigError(f"{directory / rel}: syntax error: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{directory / rel}: cannot read: {exc.strerror}") from None


def _manifest(directory: Path, root: int, where: Path, prefix: str, table: dict[str, Any],
              project: dict[str, Any], name: str | None) -> Manifest:
    def bad(key: str, problem: str) -> ConfigError:
        return ConfigError(f"{where}: {prefix}.{key}: {problem}")

    for key in NOT_IN_MANIFEST:
        if key in table:
            raise bad(key, "set by corral deploy, not by the manifest")
    own = {k: table.pop(k) for k in PACKAGE_KEYS if k in table}
    name = name or own.get("name") or project.get("name")
    if not isinstance(name, str) or not name:
        raise bad("name", "missing (or give the agent's name with --name)")
    validate_name("agents", name, str(where))
    version = own.get("version", project.get("version"))
    if version is not None and not isinstance(version, str):
        raise bad("version", "expected a string")
    python = own.get("python")
    if python is not None and (not isinstance(python, str) or not python):
        raise bad("python", "expected a version (\"3.12\") or an interpreter's path")
    exclude = own.get("exclude", [])
    if not isinstance(exclude, list) or not all(isinstance(e, str) for e in exclude):
        raise bad("exclude", "expected a list of globs")
    lock = _lock(directory, root, own.get("lock"), bad)
    if lock is not None and lock.name == "uv.lock" and not checked.is_regular(
            root, str(lock.relative_to(directory).parent / PYPROJECT)):
        raise bad("lock", f"{lock} needs the {PYPROJECT} it locks beside it")
    if lock is None and project.get("dependencies"):
        raise bad("lock", f"{directory / PYPROJECT} names dependencies but there is no "
                          f"lock file ({', '.join(LOCKS)}): run `uv lock` there")
    cwd = table.get("cwd")
    if cwd is not None and (not isinstance(cwd, str) or os.path.isabs(cwd)
                            or ".." in PurePosixPath(cwd).parts):
        raise bad("cwd", "must be a directory inside the package (a relative path)")
    spec = convert(table, AgentSpec, where=str(where), prefix=prefix)
    spec.name = name
    try:
        spec.argv()
    except ConfigError as exc:
        raise bad("command", str(exc)) from None
    try:
        spec.check_health()
    except ConfigError as exc:  # "health.liveness.exec: ..."
        raise ConfigError(f"{where}: {prefix}.{exc}") from None
    if spec.min_healthy_time >= spec.healthy_deadline:
        raise bad("min_healthy_time", f"{spec.min_healthy_time:g} s is not less than "
                                      f"healthy_deadline ({spec.healthy_deadline:g} s)")
    return Manifest(directory=directory, file=where, name=name, version=version,
                    python=python, lock=lock, exclude=list(exclude), table=table)


def _lock(directory: Path, root: int, given: Any, bad: Any) -> Path | None:
    """The lock file: a regular file of the package (uv reads it in the release, as
    copied: never a link out of it)."""
    if given is not None:
        if not isinstance(given, str) or not given:
            raise bad("lock", "expected a file name")
        rel = os.path.normpath(given)
        if os.path.isabs(given) or rel == ".." or rel.startswith("../"):
            raise bad("lock", f"{given}: not inside the package")
        if not checked.is_regular(root, rel):
            what = "no such file"
            with contextlib.suppress(OSError, checked.PathRefusal):
                fd = checked.open_dir(root, os.path.dirname(rel))
                try:
                    mode = os.stat(os.path.basename(rel), dir_fd=fd,
                                   follow_symlinks=False).st_mode
                    what = f"{checked.kind(mode)}, not a regular file"
                finally:
                    os.close(fd)
            raise bad("lock", f"{given}: {what} ({directory / rel})")
        return directory / rel
    for candidate in LOCKS:
        if _present(directory, root, candidate):
            return directory / candidate
    return None
