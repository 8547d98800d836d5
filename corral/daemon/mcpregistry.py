"""`corral mcp add --registry ID`: a server's `server.json` read from the MCP registry the
operator configured (`[supervisor] mcp_registry`; the registry's API,
`GET /v0.1/servers/{name}/versions/latest`), and its package as the command that runs
that version and no other: npm's by `npx -y PACKAGE@VERSION`, PyPI's by
`uvx PACKAGE==VERSION`, an OCI image by `docker run -i --rm IMAGE:TAG` (each fetched by
its tool on the server's first start, as a package added by hand is). What it needs and
was not given (an environment variable, an argument it has no value for) refuses it,
named, before anything is written."""

from __future__ import annotations

import asyncio
import json
import re
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, NamedTuple

from .. import jsonrpc
from ..jsonrpc import RpcError

MAX_BYTES = 1 << 20  # a server.json: larger is not one
TIMEOUT = 30.0
# the registry's names: reverse-DNS namespace, one slash, the server's own name
ID = re.compile(r"[a-zA-Z0-9.-]+/[a-zA-Z0-9._-]+")


class RegistryServer(NamedTuple):
    """A registry server as the mcpServers entry that runs its pinned package."""

    name: str  # the server's name in corral, unless the operator gives one
    version: str
    command: list[str]
    env: dict[str, str]


async def resolve(registry: str, ident: str, env: dict[str, str]) -> RegistryServer:
    if not re.match(r"https?://[^/]", registry):
        raise _refused(ident, f"[supervisor] mcp_registry {registry!r} is not an http:// or "
                              "https:// URL")
    if not ID.fullmatch(ident):
        raise _refused(ident, "not a registry server's name (NAMESPACE/NAME, as "
                              "io.github.OWNER/NAME)")
    url = (f"{registry.rstrip('/')}/v0.1/servers/{urllib.parse.quote(ident, safe='')}"
           "/versions/latest")
    doc = await asyncio.to_thread(_fetch, url, ident, registry)
    server = doc.get("server") if isinstance(doc, dict) else None
    if not isinstance(server, dict) or server.get("name") != ident:
        raise _refused(ident, f"{registry} answered no server.json of it")
    return _entry(ident, server, env)


def _fetch(url: str, ident: str, registry: str) -> Any:
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as answer:
            data = answer.read(MAX_BYTES + 1)
    except urllib.error.HTTPError as exc:
        why = "has no such server" if exc.code == 404 else f"answered HTTP {exc.code}"
        raise _refused(ident, f"the registry {registry} {why}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise _refused(ident, f"the registry {registry} cannot be reached: "
                              f"{reason}") from None
    if len(data) > MAX_BYTES:
        raise _refused(ident, f"{registry} answered more than {MAX_BYTES} bytes")
    try:
        return json.loads(data)
    except ValueError:
        raise _refused(ident, f"{registry} answered no JSON") from None


def _entry(ident: str, server: dict[str, Any], env: dict[str, str]) -> RegistryServer:
    packages = [p for p in server.get("packages") or [] if isinstance(p, dict)]
    stdio = [p for p in packages if p.get("registryType") in RUNNERS
             and (p.get("transport") or {}).get("type", "stdio") == "stdio"]
    if not stdio:
        kinds = sorted({str(p.get("registryType")) for p in packages})
        raise _refused(ident, "no package corral can run over stdio (npm, pypi, oci)"
                              + (f"; it has {', '.join(kinds)}" if kinds else ""))
    package = stdio[0]
    kind, identifier = str(package["registryType"]), str(package.get("identifier") or "")
    version = str(package.get("version") or "")
    if kind == "oci" and not version:  # an image pinned in its identifier (:TAG, @DIGEST)
        pinned = re.search(r"[:@]([^/:@]+)$", identifier)
        version = pinned[1] if pinned else ""
    if not identifier or not version or version == "latest":
        raise _refused(ident, f"its {kind} package {identifier or '(unnamed)'} names no "
                              "version to pin")
    missing = [str(v.get("name")) for v in package.get("environmentVariables") or []
               if isinstance(v, dict) and v.get("isRequired") and v.get("name") not in env
               and v.get("default") is None]
    if missing:
        raise _refused(ident, f"it needs {', '.join(missing)} (give "
                              + " ".join(f"--env {n}=VALUE" for n in missing) + ")")
    defaults = {str(v["name"]): str(v["default"])
                for v in package.get("environmentVariables") or []
                if isinstance(v, dict) and v.get("name") and v.get("default") is not None}
    command = [*RUNNERS[kind](identifier, version,
                              _arguments(ident, package.get("runtimeArguments"))),
               *_arguments(ident, package.get("packageArguments"))]
    name = ident.rsplit("/", 1)[1]
    return RegistryServer(name, version, command, {**defaults, **env})


def _arguments(ident: str, given: Any) -> list[str]:
    """A package's arguments that have a value (or a default); one required without
    either refuses it."""
    out: list[str] = []
    for arg in given if isinstance(given, list) else []:
        if not isinstance(arg, dict):
            continue
        value = arg.get("value", arg.get("default"))
        label = arg.get("name") or arg.get("valueHint") or "an argument"
        if value is None:
            if arg.get("isRequired"):
                raise _refused(ident, f"its argument {label} has no value corral can give")
            continue
        if arg.get("type") == "named":
            out += [str(arg.get("name")), str(value)]
        else:
            out.append(str(value))
    return out


RUNNERS = {
    "npm": lambda pkg, version, rt: ["npx", *rt, "-y", f"{pkg}@{version}"],
    "pypi": lambda pkg, version, rt: ["uvx", *rt, f"{pkg}=={version}"],
    "oci": lambda pkg, version, rt: ["docker", "run", "-i", "--rm", *rt,
                                     pkg if re.search(r"[:@][^/]+$", pkg)
                                     else f"{pkg}:{version}"],
}


def _refused(ident: str, why: str) -> RpcError:
    return RpcError(jsonrpc.INVALID_PARAMS, f"mcp add --registry {ident}: {why}")
