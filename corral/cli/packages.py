"""Agent packages: deploy one, list an agent's releases."""

from __future__ import annotations

import os
from typing import Any

import click

from .. import methods as m
from .app import Ctx, command, complete_agents, json_option, shows
from .render import human_bytes, stamp, table


@command(m.PackagesDeploy, more="\n\nPATH: the package's directory (or its "
             "manifest file); the daemon reads it, so it must be on the daemon's host.")
@click.argument("path", type=click.Path(exists=True))
@click.option("--name", default=None, help="The agent's name (default: the manifest's).")
@json_option
def deploy(obj: Ctx, path: str, name: str | None, as_json: bool) -> None:
    def progress(method: str, params: Any) -> None:
        if method == "packages.progress" and not as_json:
            click.echo(f"corral: {params.get('message')}", err=True)

    params = m.PackagesDeploy(path=os.path.abspath(path), name=name)
    # no client timeout: a build is bounded by the daemon's build_timeout, a switch by
    # healthy_deadline, and Ctrl-C ends the wait
    res: m.DeployResult = obj.call_json(params, as_json, on_notification=progress,
                                        wait_forever=True)
    version = f" (version {res.version})" if res.version else ""
    if not res.changed:
        click.echo(f"{res.name}: release {res.release}{version} is current already")
        return
    built = "built" if res.built else "kept from before, not built again"
    click.echo(f"{res.name}: now release {res.release}{version} ({built}), revision "
               f"{res.revision}" + (f"; was {res.previous}" if res.previous else ""))


@shows(m.PackagesReleases)
@click.argument("name", shell_complete=complete_agents)
def releases(res: m.ReleasesResult) -> None:
    if not res.releases:  # a header over nothing reads as a fault of the command
        click.echo(f"{res.name}: no releases (an agent deployed from a package has them: "
                   f"corral deploy PATH); its revisions: corral history {res.name}")
        return
    rows = [[("* " if r.current else "  ") + r.release, r.version or "-",
             stamp(r.built_at) if r.built_at else "-",
             human_bytes(r.size_bytes) if r.size_bytes is not None else "-",
             r.python_version or "-", ",".join(map(str, r.revisions)) or "-"]
            for r in res.releases]
    table(rows, ["  RELEASE", "VERSION", "BUILT", "SIZE", "PYTHON", "REVISIONS"])
