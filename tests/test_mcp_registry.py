"""`corral mcp add --registry ID` (issue 89): the server.json of a server of the MCP
registry `[supervisor] mcp_registry` names (`GET /v0.1/servers/{name}/versions/latest`,
the registry's API), its package run at that version and no other (npm's by
`npx -y PACKAGE@VERSION`), written into mcp_servers_file and served by a reload as
`corral mcp add NAME -- COMMAND` does. The registry is a local HTTP server speaking its
wire format, and `npx` a script that records its arguments and runs a scripted server:
no network. Every refusal names what is missing and leaves the file as it was."""

from __future__ import annotations

import json
import os
import threading
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from .daemon_harness import PY, Daemon, running_daemon, shared_tmpdir
from .test_mcp_cli import SCRIPTED

OFFICIAL = {"io.modelcontextprotocol.registry/official": {
    "status": "active", "publishedAt": "2026-11-01T10:30:00Z", "isLatest": True}}


def server_json(name: str, **package: Any) -> dict[str, Any]:
    return {"$schema": "https://static.modelcontextprotocol.io/schemas/2025-12-11/"
                       "server.schema.json",
            "name": name, "description": "Weather for a city.", "version": "1.4.2",
            "packages": [{"registryType": "npm", "identifier": "@acme/weather-mcp",
                          "version": "1.4.2", "transport": {"type": "stdio"},
                          "runtimeHint": "npx", **package}]}


SERVERS = {
    "io.github.acme/weather": server_json(
        "io.github.acme/weather",
        packageArguments=[{"type": "named", "name": "--units", "value": "metric"},
                          {"type": "positional", "valueHint": "config_path"}],
        environmentVariables=[{"name": "API_KEY", "isSecret": True, "isRequired": True},
                              {"name": "REGION", "default": "eu"}]),
    "io.github.acme/loose": server_json("io.github.acme/loose", version="latest"),
    "io.github.acme/remote": {"name": "io.github.acme/remote", "version": "2.0.0",
                              "remotes": [{"type": "streamable-http",
                                           "url": "https://mcp.acme.example/mcp"}]},
}


class Registry(BaseHTTPRequestHandler):
    asked: list[str] = []

    def do_GET(self) -> None:
        Registry.asked.append(self.path)
        prefix, suffix = "/v0.1/servers/", "/versions/latest"
        name = urllib.parse.unquote(self.path[len(prefix):-len(suffix)]) \
            if self.path.startswith(prefix) and self.path.endswith(suffix) else None
        found = SERVERS.get(name or "")
        body = json.dumps({"server": found, "_meta": OFFICIAL} if found else
                          {"title": "Not Found", "status": 404,
                           "detail": "Server not found"}).encode()
        self.send_response(200 if found else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def registry() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Registry)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


@pytest.fixture
def daemon(registry: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Daemon]:
    tmp = shared_tmpdir()
    (tmp / "bin").mkdir()
    npx = tmp / "bin" / "npx"  # what npx would run, once it fetched the package
    npx.write_text(f'#!/bin/sh\necho "$@" > {tmp}/npx.args\n'
                   f'exec "{PY}" "{SCRIPTED}" v2025-06\n')
    npx.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp / 'bin'}:{os.environ['PATH']}")
    (tmp / "mcp.json").write_text(json.dumps({"mcpServers": {}}))
    with running_daemon(tmp, "", extra=f'mcp_servers_file = "{tmp}/mcp.json"\n'
                                       f'mcp_registry = "{registry}"') as d:
        yield d


def test_a_registry_server_is_added_at_its_pinned_version_and_served(daemon: Daemon) -> None:
    d = daemon
    Registry.asked.clear()
    r = d.cli("mcp", "add", "--registry", "io.github.acme/weather", "--env", "API_KEY=k-77")
    assert (r.returncode, r.stdout, r.stderr) == (
        0, "KIND        NAME     CHANGE\nMCP server  weather  added\n"
           "unchanged: 0 agents, 0 MCP servers\n", "")
    assert Registry.asked == ["/v0.1/servers/io.github.acme%2Fweather/versions/latest"]
    assert json.loads((d.dir / "mcp.json").read_text())["mcpServers"] == {"weather": {
        "command": "npx", "args": ["-y", "@acme/weather-mcp@1.4.2", "--units", "metric"],
        "env": {"REGION": "eu", "API_KEY": "k-77"}}}
    r = d.cli("tools", "call", "weather__echo", "--args", '{"text": "sunny"}')
    assert (r.returncode, r.stdout) == (0, "sunny\n")
    assert (d.dir / "npx.args").read_text() == "-y @acme/weather-mcp@1.4.2 --units metric\n"
    # under a name of the operator's too
    r = d.cli("mcp", "add", "forecast", "--registry", "io.github.acme/weather", "--env",
              "API_KEY=k-78")
    assert r.returncode == 0, r.stderr
    assert sorted(json.loads((d.dir / "mcp.json").read_text())["mcpServers"]) == [
        "forecast", "weather"]


def test_a_registry_server_refused_names_why_and_leaves_the_file(daemon: Daemon,
                                                                 registry: str) -> None:
    d = daemon
    listed = (d.dir / "mcp.json").read_text()
    for args, why in (
            (["io.github.acme/weather"], "it needs API_KEY (give --env API_KEY=VALUE)"),
            (["io.github.acme/nope"], f"the registry {registry} has no such server"),
            (["io.github.acme/loose"], "its npm package @acme/weather-mcp names no "
                                       "version to pin"),
            (["io.github.acme/remote"], "no package corral can run over stdio (npm, pypi, "
                                        "oci)"),
            (["acme weather"], "not a registry server's name (NAMESPACE/NAME, as "
                               "io.github.OWNER/NAME)"),
            (["io.github.acme/weather", "w", "--", PY], "the registry gives the command: "
                                                         "give none")):
        r = d.cli("mcp", "add", "--registry", *args)
        assert (r.returncode, r.stdout, r.stderr) == (
            1, "", f"corral: mcp add --registry {args[0]}: {why}\n"), args
    assert (d.dir / "mcp.json").read_text() == listed
    r = d.cli("mcp", "add")
    assert (r.returncode, r.stderr.splitlines()[-1]) == (
        2, "Error: give NAME -- COMMAND..., or --registry ID")


def test_without_a_registry_configured_it_is_refused_saying_which_key() -> None:
    tmp = shared_tmpdir()
    (tmp / "mcp.json").write_text(json.dumps({"mcpServers": {}}))
    with running_daemon(tmp, "", extra=f'mcp_servers_file = "{tmp}/mcp.json"') as d:
        r = d.cli("mcp", "add", "--registry", "io.github.acme/weather")
        assert (r.returncode, r.stderr) == (
            1, f"corral: mcp add --registry io.github.acme/weather: {d.config} names no "
               "[supervisor] mcp_registry, the registry's URL\n")


@pytest.mark.parametrize(("package", "command"), [
    ({"registryType": "pypi", "identifier": "acme-weather", "version": "0.9.1",
      "runtimeArguments": [{"type": "named", "name": "--python", "value": "3.12"}],
      "packageArguments": [{"type": "positional", "value": "serve"}]},
     ["uvx", "--python", "3.12", "acme-weather==0.9.1", "serve"]),
    ({"registryType": "oci", "identifier": "ghcr.io/acme/weather", "version": "2.1.0",
      "transport": {"type": "stdio"}},
     ["docker", "run", "-i", "--rm", "ghcr.io/acme/weather:2.1.0"]),
    ({"registryType": "oci", "identifier": "docker.io/acme/weather:2.1.0"},
     ["docker", "run", "-i", "--rm", "docker.io/acme/weather:2.1.0"]),
])
def test_each_kind_of_package_runs_at_its_pinned_version(package: dict[str, Any],
                                                         command: list[str]) -> None:
    from corral.daemon.mcpregistry import RegistryServer, _entry

    got = _entry("io.github.acme/weather", {"name": "io.github.acme/weather",
                                            "packages": [package]}, {})
    assert got == RegistryServer("weather", got.version, command, {})


def test_a_required_argument_without_a_value_is_refused() -> None:
    from corral.daemon.mcpregistry import _entry
    from corral.jsonrpc import RpcError

    with pytest.raises(RpcError) as caught:
        _entry("io.github.acme/weather", {"packages": [{
            "registryType": "npm", "identifier": "w", "version": "1.0.0",
            "packageArguments": [{"type": "positional", "valueHint": "config_path",
                                  "isRequired": True}]}]}, {})
    assert caught.value.message == ("mcp add --registry io.github.acme/weather: its "
                                    "argument config_path has no value corral can give")
