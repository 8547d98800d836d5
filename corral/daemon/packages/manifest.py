"""An agent package's manifest: `[agent]` in the package directory's corral.toml, or
`[tool.corral.agent]` in its pyproject.toml (docs/packages.md).

Besides the package's own keys (name, version, python, lock, exclude), the table takes
every key of an `[agents.NAME]` table, checked by the same schema (AgentSpec), so a key
means one thing in a config file and in a manifest. What the manifest cannot say is where
the release is: `release` is corral's, and `cwd` is relative to the package's source.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath
from typing import Any

import msgspec

from ...supervisor.config import AgentSpec, ConfigError, convert, read_toml, validate_name

MANIFEST = "corral.toml"
PYPROJECT = "pyproject.toml"
# lock files, in the order they are looked for beside the manifest
LOCKS = ("uv.lock", "pylock.toml", "requirements.txt")
PACKAGE_KEYS = ("name", "version", "python", "lock", "exclude")
NOT_IN_MANIFEST = ("release",)


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
        given = given.resolve()
        is_file, is_dir = given.is_file(), given.is_dir()
    except (OSError, ValueError) as exc:  # a name too long, a NUL in it
        raise ConfigError(f"{str(given)[:200]!r}: not a path here ({exc})") from None
    if is_file:
        directory, files = given.parent, [given]
    elif is_dir:
        directory, files = given, [given / MANIFEST, given / PYPROJECT]
    else:
        raise ConfigError(f"{given}: no such file or directory")
    table: dict[str, Any] | None = None
    project: dict[str, Any] = {}
    where = files[0]
    for f in files:
        if not f.is_file():
            continue
        data = read_toml(f)
        if f.name == PYPROJECT:
            project = data.get("project", {}) if isinstance(data.get("project"), dict) else {}
            found = data.get("tool", {}).get("corral", {}).get("agent")
            key = "tool.corral.agent"
        else:
            found, key = data.get("agent"), "agent"
        if found is not None:
            if not isinstance(found, dict):
                raise ConfigError(f"{f}: {key}: expected a table")
            table, where = dict(found), f
            break
    if table is None:
        raise ConfigError(f"{given}: no package manifest: an [agent] table in {MANIFEST} or "
                          f"[tool.corral.agent] in {PYPROJECT}")
    if where.name != PYPROJECT and (directory / PYPROJECT).is_file():
        data = read_toml(directory / PYPROJECT)
        project = data.get("project", {}) if isinstance(data.get("project"), dict) else {}
    prefix = "tool.corral.agent" if where.name == PYPROJECT else "agent"
    return _manifest(directory, where, prefix, table, project, name)


def _manifest(directory: Path, where: Path, prefix: str, table: dict[str, Any],
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
    lock = _lock(directory, own.get("lock"), bad)
    if lock is not None and lock.name == "uv.lock" and not (directory / PYPROJECT).is_file():
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


def _lock(directory: Path, given: Any, bad: Any) -> Path | None:
    if given is not None:
        if not isinstance(given, str) or not given:
            raise bad("lock", "expected a file name")
        path = (directory / given).resolve()
        if directory not in path.parents:
            raise bad("lock", f"{given}: not inside the package")
        if not path.is_file():
            raise bad("lock", f"{given}: no such file ({path})")
        return path
    for candidate in LOCKS:
        if (directory / candidate).is_file():
            return directory / candidate
    return None
