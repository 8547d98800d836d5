"""Development mode: `watch = ["*.py"]` on an agent restarts it when a matching file
changes, as PM2's --watch and uvicorn's --reload do.

Changes that come together (inotify, through watchfiles) are taken as one. An agent
package is deployed again from its source directory (a release is read-only), so an edit
that breaks the agent is refused and the running release keeps serving.
"""

from __future__ import annotations

import fnmatch
import os
from pathlib import Path
from typing import Any

import msgspec

from ..jsonrpc import RpcError
from ..supervisor.agents import Agents
from ..text import listing
from .agentloops import AgentLoops
from .fleet import Fleet, Report
from .packages.service import Packages

STEP_MS = 300  # quiet after a change before it is acted on
DEBOUNCE_MS = 1600  # changes within this are one batch, however many
WHO = "watch"


class WatchKey(msgspec.Struct, frozen=True):
    globs: tuple[str, ...]
    directory: str
    package: bool  # the directory is a package's source: deploy it again


class FileWatches(AgentLoops[WatchKey]):
    def __init__(self, agents: Agents, fleet: Fleet, packages: Packages,
                 report: Report) -> None:
        super().__init__(agents)
        self.fleet = fleet
        self.packages = packages
        self.report = report
        self.restarts = 0

    def key_of(self, spec: Any) -> WatchKey | None:
        if not spec.watch:
            return None
        if spec.release is not None:
            source = self.packages.source_of(spec.release)
            if source is None:
                return None
            return WatchKey(tuple(spec.watch), source, True)
        return WatchKey(tuple(spec.watch), os.path.abspath(spec.cwd or "."), False)

    async def run_loop(self, name: str, key: WatchKey) -> None:
        from watchfiles import DefaultFilter, awatch
        ignored = DefaultFilter()
        root = key.directory
        real_root = os.path.realpath(root)

        def matches(change: Any, path: str) -> bool:
            if not ignored(change, path):
                return False
            # a change under a link out of the directory (the kernel's watches follow
            # it) is not the agent's: another user's files must not restart it, nor be
            # named in its log (a link in the directory is its own)
            where = os.path.realpath(os.path.dirname(path))
            if os.path.commonpath([where, real_root]) != real_root:
                return False
            rel = os.path.relpath(path, root)
            return any(fnmatch.fnmatch(rel, g) or fnmatch.fnmatch(os.path.basename(rel), g)
                       for g in key.globs)

        if not Path(root).is_dir():
            self.report(f"{name}: watch: {root} is not a directory; not watching",
                        priority=4)
            return
        self.report(f"{name}: watching {', '.join(key.globs)} under {root}")
        try:
            async for changes in awatch(root, watch_filter=matches, step=STEP_MS,
                                        debounce=DEBOUNCE_MS, recursive=True):
                paths = sorted({os.path.relpath(p, root) for _, p in changes})
                await self._changed(name, key, paths)
        except Exception as exc:  # the watcher's own failure: told, never the daemon's
            self.report(f"{name}: watch stopped: {type(exc).__name__}: {exc}", priority=3)

    async def _changed(self, name: str, key: WatchKey, paths: list[str]) -> None:
        shown = listing(paths, most=5)
        self.restarts += 1
        try:
            if key.package:
                self.report(f"{name}: {shown} changed: deploying {key.directory} again")
                res = await self.packages.deploy(key.directory, name, WHO,
                                                 lambda text: None)
                self.report(f"{name}: runs release {res.release} (watch)" if res.changed
                            else f"{name}: release {res.release} is current already")
                return
            self.report(f"{name}: {shown} changed: restarting (rolling)")
            async with self.fleet.changing([name]):
                agent = self.agents.get(name)
                if agent is not None:
                    await agent.roll(start_stopped=False)
        except RpcError as exc:  # refused: what runs keeps serving
            self.report(f"{name}: after the change of {shown}: {exc.message}", priority=4)
