# ruff: noqa: F405 - the results are corral.results', named by the methods
"""Agent packages (docs/packages.md): deploy, releases."""

from __future__ import annotations

from ..results import *  # noqa: F403
from .declaration import Params, method, rest


@method("packages.deploy", result=DeployResult, scope="agents:write", mutating=True, seen=None,
        cli="deploy", routes=(
    rest("POST", "/packages", "Deploy an agent package: build its release "
         "(a path on the daemon's host) and switch the agent to it", body=("path", "name")),
))
class PackagesDeploy(Params):
    """Build a release of the agent package at `path` (a directory on the daemon's host
    with a manifest) and make it the agent's: its new processes start beside the running
    ones and take the tasks only once all are Ready (and have stayed so for
    min_healthy_time), else the running release stays and the reason is given. What was
    deployed before is not built again."""

    path: str
    name: str | None = None  # default: the manifest's


@method("packages.releases", result=ReleasesResult, scope="agents:read", seen="agent_name",
        cli="releases", routes=(
    rest("GET", "/agents/{name}/releases",
         "An agent package's kept releases"),
))
class PackagesReleases(Params):
    """The kept releases of an agent package: version, when built, size, which is
    current, and the revisions that ran each (`corral rollback NAME REV` returns to one
    without building)."""

    name: str
