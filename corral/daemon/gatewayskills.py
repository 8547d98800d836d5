"""Skills at the gateway (SEP-2640, the extension `io.modelcontextprotocol/skills`): the
skills of the servers a client may use, and at /mcp the operator's own (`[gateway]
skills_dir`, ownskills.py, as the server `corral`), each verified against its digest
before it is served (what a client sees, and why the URIs carry the server:
docs/gateway.md, "Skills").
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from .. import jsonrpc
from ..jsonrpc import RpcError
from ..mcp.pool import SEP
from .caller import GatewayCaller
from .mcptasks import AGENTS_VIEW

if TYPE_CHECKING:
    from ..supervisor.tools import Tools
    from .ownskills import OwnSkills

log = logging.getLogger("corral.gateway")


Identity = TypeVar("Identity", bound=GatewayCaller)

SKILLS = "io.modelcontextprotocol/skills"
METHODS = frozenset({"skills/list", "skills/get", "resources/directory/read"})
SCHEME = "skill://"
SKILL_FILE = "SKILL.md"
DIRECTORY = "inode/directory"  # a directory's mimeType (SEP-2640's directory read)


OWN = AGENTS_VIEW  # the operator's skills' server, a name no server may have
OWN_TIMEOUT = 10.0  # reading a file of the operator's own


class SkillSource(Protocol):
    """What the gateway asks of a skills server (its client; or the operator's own)."""

    async def list_all(self, method: str, key: str, timeout: float
                       ) -> list[dict[str, Any]]: ...

    async def request(self, method: str, params: dict[str, Any] | None = None, *,
                      timeout: float | None) -> Any: ...

    async def read_resource(self, uri: str, timeout: float) -> Any: ...


class DigestMismatch(RpcError):
    """A skill, or a file of one, whose content does not match its digest."""

    def __init__(self, message: str) -> None:
        super().__init__(jsonrpc.SERVER_ERROR, message)


def is_skill(uri: str) -> bool:
    return uri.startswith(SCHEME)


def name_of(uri: str) -> str | None:
    """The name of the skill whose SKILL.md `uri` is (`skill://PATH/NAME/SKILL.md`)."""
    parts = uri[len(SCHEME):].split("/") if is_skill(uri) else []
    return parts[-2] if len(parts) >= 2 and parts[-1] == SKILL_FILE and parts[-2] else None


def pooled(server: str, uri: Any) -> Any:
    """A skill URI of `server` as /mcp names it; any other value as it is."""
    return f"{SCHEME}{server}/{uri[len(SCHEME):]}" if isinstance(uri, str) and \
        is_skill(uri) else uri


def of_skill(entry: dict[str, Any], uri: str) -> bool:
    """Whether `uri` is the SKILL.md of the skill `entry` lists, or a file under it."""
    own = str(entry.get("uri"))
    return uri == own or (name_of(own) is not None
                          and uri.startswith(own[:-len(SKILL_FILE)]))


class GatewaySkills(Generic[Identity]):
    """The door's part of a skill read (decision 1691): what it names, read from its URI
    (the server, the skill of a file), and the read itself, checked against its digest;
    whether the client may make it is the chain's view link's, whose verdict the listing
    reads too."""

    def __init__(self, tools: Tools, sees: Callable[[Identity, str], bool],
                 own: Callable[[], OwnSkills | None],
                 read: Callable[[Identity, str, dict[str, Any], str,
                                 Callable[[], Awaitable[Any]]], Awaitable[Any]],
                 in_view: Callable[[Identity, str], bool]) -> None:
        self.tools = tools
        self.sees = sees  # whether the client's tenant sees a tool's server now
        self.own = own  # the operator's skills as the config last loaded them
        # a read (its method, the request's params, its SERVER__SKILL, the read to make)
        # as a Call of the one chain; and its view link's verdict on one, for the lists
        self.read = read
        self.in_view = in_view

    async def serve(self, ident: Identity, method: str, params: dict[str, Any]) -> Any:
        if method == "skills/list":
            if params.get("cursor") is not None:
                raise RpcError(jsonrpc.INVALID_PARAMS, "invalid params: unknown cursor")
            return {"skills": await self.listed(ident)}
        uri = params.get("uri")
        if not isinstance(uri, str) or not is_skill(uri):
            raise RpcError(jsonrpc.INVALID_PARAMS,
                           f"invalid params: {method} needs a {SCHEME} uri")
        server, src, theirs = await self._route(ident, uri)
        if method == "skills/get":
            return await self.read(ident, method, params, _named(server, name_of(theirs)),
                                   lambda: self._got(ident, server, src, uri, theirs))
        # a file of a skill: checked against the digest its server lists for it
        entries = await src.list_all("skills/list", "skills", self._timeout(server))
        if method == "resources/directory/read":
            return await self._directory(ident, server, src, entries, params, uri, theirs)
        skill = next((e for e in entries if of_skill(e, theirs)), None)
        if skill is None:  # (a file of no skill's: no skill to name, nor a digest)
            raise self._refused(server, uri, "no digest is listed for it to be checked by")
        want = _digest_of(skill, theirs)
        return await self.read(ident, method, params,
                               _named(server, name_of(str(skill.get("uri")))),
                               lambda: self._file(server, src, uri, theirs, want))

    async def _got(self, ident: Identity, server: str, src: SkillSource, uri: str,
                   theirs: str) -> dict[str, Any]:
        """skills/get made: the skill's entry, once its SKILL.md matches its digest."""
        got = await src.request("skills/get", {"uri": theirs}, timeout=self._timeout(server))
        skill = got.get("skill") if isinstance(got, dict) else None
        if not isinstance(skill, dict) or skill.get("uri") != theirs:
            raise RpcError(jsonrpc.SERVER_ERROR, f"skills/get {uri}: MCP server "
                                                 f"{server} answered no entry of it")
        await self._verify(server, src, skill, uri)
        return {"skill": _shown(ident, server, skill)}

    async def _file(self, server: str, src: SkillSource, uri: str, theirs: str,
                    want: str | None) -> dict[str, Any]:
        """A skill's file read, once it matches the digest `want` its skill lists."""
        if want is None:
            raise self._refused(server, uri, "no digest is listed for it to be checked by")
        contents = await self._read(server, src, theirs, want, uri)
        return {"contents": [{**c, "uri": uri} if c.get("uri") == theirs else c
                             for c in contents]}

    async def listed(self, ident: Identity) -> list[dict[str, Any]]:
        """Every skill the client may see, each verified (one that fails: left out, logged)."""
        out: list[dict[str, Any]] = []
        for server, src in await self._servers(ident):
            entries = await src.list_all("skills/list", "skills",
                                                 self._timeout(server))
            for skill in entries:
                name = name_of(str(skill.get("uri")))
                if name is None or not self._admits(ident, server, name):
                    continue  # (one its view does not admit: a read of it is refused)
                shown = _shown(ident, server, skill)
                try:
                    await self._verify(server, src, skill, shown["uri"])
                except DigestMismatch:
                    continue  # logged by _refused
                out.append(shown)
        return out

    # -- internals ------------------------------------------------------------------------
    async def _servers(self, ident: Identity) -> list[tuple[str, SkillSource]]:
        found = await self.tools.extended(SKILLS, ident.owner, ident.allow, ident.server)
        own = self.own() if ident.server is None else None
        return [(n, i.client) for n, i in found if self.sees(ident, f"{n}{SEP}")] + \
            ([(OWN, own)] if own is not None else [])

    def own_resources(self, ident: Identity) -> list[dict[str, Any]]:
        """The operator's SKILL.md files the client may see, as /mcp's resources/list
        shows them."""
        own = self.own() if ident.server is None else None
        return [{**r, "uri": pooled(OWN, r["uri"])} for r in
                (own.resources() if own is not None else [])
                if self._admits(ident, OWN, str(r["name"]))]

    def _admits(self, ident: Identity, server: str, skill: str) -> bool:
        """Whether the chain's view link admits the client's read of the skill (a list
        shows what may be read, no more)."""
        return self.in_view(ident, _named(server, skill))

    async def _route(self, ident: Identity, uri: str
                     ) -> tuple[str, SkillSource, str]:
        """The server of a skill URI the client gave, its instance, and the server's URI."""
        if ident.server is not None:
            server, theirs = ident.server, uri
        else:
            server, sep, path = uri[len(SCHEME):].partition("/")
            theirs = SCHEME + path
            if not sep or not path:
                raise RpcError(jsonrpc.INVALID_PARAMS,
                               f"skill {uri}: at /mcp a skill's URI is skill://SERVER/"
                               f"followed by its server's own", {"uri": uri})
        found = dict(await self._servers(ident))
        if server not in found:
            raise _unknown(uri)
        return server, found[server], theirs

    async def _directory(self, ident: Identity, server: str, src: SkillSource,
                         entries: list[dict[str, Any]], params: dict[str, Any], uri: str,
                         theirs: str) -> Any:
        """A skill's directory, or one within it, as its entry lists its files: served by
        corral, once the skill's SKILL.md matches its digest."""
        prefix = theirs.rstrip("/") + "/"
        skill = next((e for e in entries if of_skill(e, prefix)), None)
        if skill is None:  # (no skill's: none to name)
            raise _no_directory(uri, "no directory of a skill")
        return await self.read(ident, "resources/directory/read", params,
                               _named(server, name_of(str(skill.get("uri")))),
                               lambda: self._listed_below(ident, server, src, skill, uri,
                                                          theirs, prefix))

    async def _listed_below(self, ident: Identity, server: str, src: SkillSource,
                            skill: dict[str, Any], uri: str, theirs: str, prefix: str
                            ) -> dict[str, Any]:
        """A directory read made: its entries, as the skill's entry lists its files."""
        files = skill.get("resources")
        listed = [str(f.get("uri")) for f in files if isinstance(f, dict)] \
            if isinstance(files, list) else []
        below = [u[len(prefix):] for u in listed if u.startswith(prefix)]
        if not below:
            raise _no_directory(uri, "a file, not a directory" if theirs in listed
                                else "no directory of a skill")
        await self._verify(server, src, skill, uri)
        shown = _shown(ident, server, {"uri": prefix})["uri"]
        children: dict[str, dict[str, Any]] = {}
        for rest in below:
            head, sub, _ = rest.partition("/")
            children.setdefault(head, {"uri": shown + head, "name": head,
                                       **({"mimeType": DIRECTORY} if sub else {})})
        return {"resources": list(children.values())}

    async def _verify(self, server: str, src: SkillSource, skill: dict[str, Any],
                      shown: str) -> None:
        uri = str(skill.get("uri"))
        want = _digest_of(skill, uri)
        if want is None:
            raise self._refused(server, shown, "its SKILL.md has no digest listed to be "
                                               "checked by")
        await self._read(server, src, uri, want, shown)

    async def _read(self, server: str, src: SkillSource, uri: str, want: str,
                    shown: str) -> list[dict[str, Any]]:
        """The contents of a skill's file, once its bytes match `want` (sha256:HEX): the
        one content checked, of its checked member alone (a second content, or a blob
        beside the text, would be served unchecked: issue 88). A read that fails is a
        refusal of the skill, as a mismatch is."""
        try:
            got = await src.read_resource(uri, self._timeout(server))
        except RpcError as exc:
            raise self._refused(server, shown, f"resources/read of {uri} failed: "
                                               f"{exc.message}") from None
        except (OSError, TimeoutError) as exc:
            raise self._refused(server, shown, f"resources/read of {uri} failed: "
                                               f"{exc or type(exc).__name__}") from None
        contents = got.get("contents") if isinstance(got, dict) else None
        if not isinstance(contents, list) or not contents:
            raise self._refused(server, shown, f"resources/read of {uri} gave no contents")
        first = contents[0]
        data = _bytes_of(first)
        digest = "sha256:" + hashlib.sha256(data).hexdigest() if data is not None else None
        if digest != want.lower():
            raise self._refused(server, shown, f"{uri} does not match its digest "
                                               f"(listed {want}, read {digest})")
        unchecked = "blob" if isinstance(first.get("text"), str) else "text"
        return [{k: v for k, v in first.items() if k != unchecked}]

    @staticmethod
    def _refused(server: str, uri: str, why: str) -> DigestMismatch:
        message = f"skill {uri} of MCP server {server} refused: {why}"
        log.warning("gateway: %s", message)
        return DigestMismatch(message)

    def _timeout(self, server: str) -> float:
        return OWN_TIMEOUT if server == OWN else float(self.tools.servers[server].spec.timeout)


def _unknown(uri: str) -> RpcError:
    return RpcError(jsonrpc.INVALID_PARAMS,
                    f"skill {uri}: no server this client may use has it", {"uri": uri})


def _no_directory(uri: str, why: str) -> RpcError:
    return RpcError(jsonrpc.INVALID_PARAMS, f"resources/directory/read {uri}: {why}",
                    {"uri": uri})


def _named(server: str, skill: str | None) -> str:
    """A skill's SERVER__SKILL, as an allowlist admits it and a Call names it (a skill
    its URI does not name: its server's alone, `SERVER__`, which admits it only where
    every skill of its server is admitted)."""
    return f"{server}{SEP}{skill or ''}"


def _digest_of(skill: dict[str, Any], uri: str) -> str | None:
    """The digest a skill's entry lists for its file `uri` (None: none listed)."""
    files = skill.get("resources")
    if not isinstance(files, list):  # "dynamic": nothing listed
        return None
    digest = next((f.get("digest") for f in files
                   if isinstance(f, dict) and f.get("uri") == uri), None)
    return digest if isinstance(digest, str) and digest.startswith("sha256:") else None


def _bytes_of(content: Any) -> bytes | None:
    if not isinstance(content, dict):
        return None
    if isinstance(content.get("text"), str):
        return str(content["text"]).encode()
    try:
        return base64.b64decode(str(content.get("blob")), validate=True) \
            if isinstance(content.get("blob"), str) else None
    except (binascii.Error, ValueError):
        return None


def _shown(ident: Identity, server: str, skill: dict[str, Any]) -> dict[str, Any]:
    """A skill's entry as the client sees it: at /mcp, its server's name first in each of
    its URIs; at /mcp/NAME, as the server gave it."""
    if ident.server is not None:
        return skill
    out = {**skill, "uri": pooled(server, skill.get("uri"))}
    if isinstance(skill.get("resources"), list):
        out["resources"] = [{**f, "uri": pooled(server, f.get("uri"))} if isinstance(f, dict)
                            else f for f in skill["resources"]]
    return out
