"""The agent packages' methods' handlers: a release built and deployed, the releases
kept."""

from __future__ import annotations

import msgspec

from .. import methods as m
from .api import Commands, by_name
from .caller import Caller, Channel
from .logs import LogHub
from .packages.service import Packages
from .services import Services


class PackageServices(msgspec.Struct, frozen=True):
    packages: Packages
    hub: LogHub  # a deploy's progress, said in the daemon's log too


COMMANDS: Commands[Services, PackageServices] = Commands(by_name(PackageServices))
implements = COMMANDS.implements


@implements(m.PackagesDeploy)
async def packages_deploy(d: PackageServices, p: m.PackagesDeploy, caller: Caller, c: Channel
                          ) -> m.DeployResult:
    def say(text: str) -> None:
        c.notify("packages.progress", {"message": text})
        d.hub.daemon(f"deploy {p.path}: {text}")

    return await d.packages.deploy(p.path, p.name, caller.who, say)


@implements(m.PackagesReleases)
async def packages_releases(d: PackageServices, p: m.PackagesReleases, caller: Caller, c: Channel
                            ) -> m.ReleasesResult:
    return await d.packages.list(p.name)
