"""The operator's own skills (`[gateway] skills_dir`): a directory of SEP-2640 skills,
each `NAME/SKILL.md` and the files beside it, read when the config is (at start and on
each reload), their digests computed by corral then. It answers the three requests the
gateway's skills make of a server (gatewayskills.py), so that its skills are served at
/mcp as a server's are, as `skill://corral/NAME/…`, each file checked against the digest
taken at load: one changed on disk since is refused until the next reload."""

from __future__ import annotations

import base64
import hashlib
import mimetypes
import os
import re
from pathlib import Path
from typing import Any

import msgspec

from .. import jsonrpc
from ..jsonrpc import RpcError
from ..supervisor.config import ConfigError

SKILL_FILE = "SKILL.md"
# the Agent Skills naming rules SEP-2640 holds a skill's name to
NAME = re.compile(r"^(?!.*--)[a-z0-9]([a-z0-9-]{0,62}[a-z0-9])?$")
MAX_FILES = 512  # SEP-2640's bounds on one skill
MAX_BYTES = 16 * 1024 * 1024
FRONTMATTER = re.compile(r"\A\ufeff?---\r?\n(.*?)\r?\n---[ \t]*(?:\r?\n|\Z)", re.S)


class OwnFile(msgspec.Struct, frozen=True):
    path: Path
    digest: str  # sha256:HEX of its bytes at load
    size: int


class OwnSkill(msgspec.Struct, frozen=True):
    name: str
    frontmatter: dict[str, Any]
    files: dict[str, OwnFile]  # by its URI, skill://NAME/…

    @property
    def uri(self) -> str:
        return f"skill://{self.name}/{SKILL_FILE}"

    def entry(self) -> dict[str, Any]:
        return {"uri": self.uri, "frontmatter": self.frontmatter,
                "resources": [{"uri": u, "digest": f.digest, "size": f.size}
                              for u, f in self.files.items()]}


class OwnSkills:
    """The skills of a directory, as a skills server's client answers the gateway."""

    def __init__(self, skills: list[OwnSkill]) -> None:
        self.skills = {s.uri: s for s in skills}
        self.files = {u: f for s in skills for u, f in s.files.items()}

    @classmethod
    def load(cls, directory: Path) -> OwnSkills:
        """Each skill of `directory`; raises ConfigError naming the first one refused."""
        if not directory.is_dir():
            raise ConfigError(f"[gateway] skills_dir {directory}: not a directory")
        return cls([_skill(sub) for sub in sorted(directory.iterdir())
                    if sub.is_dir() and not sub.is_symlink()])

    def resources(self) -> list[dict[str, Any]]:
        """Each SKILL.md as resources/list shows it (SEP-2640: named as its frontmatter)."""
        return [{"uri": s.uri, "name": s.name, "mimeType": "text/markdown",
                 **({"description": s.frontmatter["description"]}
                    if isinstance(s.frontmatter.get("description"), str) else {})}
                for s in self.skills.values()]

    def entries(self) -> list[dict[str, Any]]:
        return [s.entry() for s in self.skills.values()]

    # -- what the gateway asks of a skills server ------------------------------------------
    async def list_all(self, method: str, key: str, timeout: float
                       ) -> list[dict[str, Any]]:
        return self.entries()

    async def request(self, method: str, params: dict[str, Any] | None = None, *,
                      timeout: float | None) -> Any:
        uri = (params or {}).get("uri")
        skill = self.skills.get(uri) if isinstance(uri, str) else None
        if skill is None:
            raise RpcError(jsonrpc.INVALID_PARAMS, f"invalid params: no skill {uri}")
        return {"skill": skill.entry()}

    async def read_resource(self, uri: str, timeout: float) -> Any:
        found = self.files.get(uri)
        if found is None:
            raise RpcError(jsonrpc.INVALID_PARAMS, f"Resource not found: {uri}")
        try:  # not followed if a link was put in its place since
            fd = os.open(found.path, os.O_RDONLY | os.O_NOFOLLOW)
            with open(fd, "rb") as f:
                data = f.read(MAX_BYTES + 1)
        except OSError as exc:
            raise RpcError(jsonrpc.SERVER_ERROR,
                           f"{uri}: {exc.strerror or exc}") from None
        mime = "text/markdown" if found.path.suffix == ".md" else \
            mimetypes.guess_type(found.path.name)[0] or "application/octet-stream"
        try:
            return {"contents": [{"uri": uri, "mimeType": mime, "text": data.decode()}]}
        except UnicodeDecodeError:
            return {"contents": [{"uri": uri, "mimeType": mime,
                                  "blob": base64.b64encode(data).decode()}]}


def _skill(root: Path) -> OwnSkill:
    """The skill of the directory `root`, its files' digests taken now."""
    where = f"[gateway] skills_dir: skill {root.name}"
    manifest = root / SKILL_FILE
    if not manifest.is_file() or manifest.is_symlink():
        raise ConfigError(f"{where}: no {SKILL_FILE} (a skill is a directory with one)")
    files: dict[str, OwnFile] = {}
    total = 0
    for path in sorted(_regular_files(root, where)):
        data = path.read_bytes()
        total += len(data)
        rel = path.relative_to(root).as_posix()
        files[f"skill://{root.name}/{rel}"] = OwnFile(
            path, "sha256:" + hashlib.sha256(data).hexdigest(), len(data))
    if len(files) > MAX_FILES or total > MAX_BYTES:
        raise ConfigError(f"{where}: {len(files)} files of {total} bytes, past SEP-2640's "
                          f"bounds ({MAX_FILES} files, {MAX_BYTES} bytes)")
    frontmatter = _frontmatter(manifest.read_bytes(), where)
    if frontmatter.get("name") != root.name:
        raise ConfigError(f"{where}: its {SKILL_FILE}'s frontmatter names it "
                          f"{frontmatter.get('name')!r}, not its directory's name")
    if not NAME.match(root.name):
        raise ConfigError(f"{where}: a skill's name is 1-64 of a-z, 0-9 and '-', with no "
                          f"'-' first, last or twice in a row")
    return OwnSkill(root.name, frontmatter, files)


def _regular_files(root: Path, where: str) -> list[Path]:
    """The skill's files; a link is refused (a skill serves what its directory holds)."""
    out: list[Path] = []
    for base, dirs, names in os.walk(root):
        for name in dirs + names:
            path = Path(base, name)
            if path.is_symlink():
                raise ConfigError(f"{where}: {path.relative_to(root)} is a symbolic link "
                                  "(a skill serves the files its directory holds)")
            if name in names and path.is_file():
                out.append(path)
    return out


def _frontmatter(data: bytes, where: str) -> dict[str, Any]:
    """The YAML frontmatter of a SKILL.md, as JSON values (SEP-2640: the entry's
    frontmatter is the file's, in content)."""
    import yaml  # only where [gateway] skills_dir is set

    found = FRONTMATTER.match(data.decode(errors="replace"))
    if found is None:
        raise ConfigError(f"{where}: its {SKILL_FILE} does not begin with a '---' "
                          "frontmatter block")
    try:
        parsed = yaml.safe_load(found.group(1))
        # dates and the like as JSON has them (strings), as a client reading the file sees
        value = msgspec.json.decode(msgspec.json.encode(parsed))
    except (yaml.YAMLError, msgspec.MsgspecError) as exc:
        raise ConfigError(f"{where}: its {SKILL_FILE}'s frontmatter is not YAML a client "
                          f"can read: {str(exc).splitlines()[0]}") from None
    if not isinstance(value, dict) or not all(isinstance(value.get(k), str) and value[k]
                                              for k in ("name", "description")):
        raise ConfigError(f"{where}: its {SKILL_FILE}'s frontmatter needs a name and a "
                          "description")
    return value
