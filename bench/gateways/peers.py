"""The peers of bench/gateways, installed from bench/gateways/pins.txt: each once, into a
prefix of its own under ~/.cache/corral/bench/NAME-VERSION, and reused after.

    .venv/bin/python -m bench.gateways.peers    (installs the missing ones, says which)

A peer that does not install is said so (`install` returns None) and the harness runs
the rest. A prefix is taken as installed only once its `.installed` mark is written, so
an install cut short is made again, not used half done.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

PINS = Path(__file__).with_name("pins.txt")
CACHE = Path.home() / ".cache" / "corral" / "bench"
PY = sys.executable
UV = Path(PY).parent / "uv"
# LiteLLM's releases published with a credential stealer in them: never installed
NEVER = {("litellm", "1.82.7"), ("litellm", "1.82.8")}


class Pin(NamedTuple):
    name: str
    registry: str  # "npm" or "pypi"
    package: str  # as its installer spells it (an extra in brackets)
    version: str
    # pinned beside it, `name@version`: npm's as overrides (the version wherever in its
    # tree that package is, nested copies too), PyPI's as more requirements
    extras: tuple[str, ...] = ()

    @property
    def prefix(self) -> Path:
        return CACHE / f"{self.name}-{self.version}"

    @property
    def spec(self) -> str:
        return f"{self.package}@{self.version}" if self.registry == "npm" \
            else f"{self.package}=={self.version}"


def pins() -> dict[str, Pin]:
    out = {}
    for line in PINS.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, registry, package, version, *extras = line.split()
            pin = Pin(name, registry, package, version, tuple(extras))
            bare = pin.package.split("[")[0]
            if (bare, pin.version) in NEVER:
                raise SystemExit(f"{PINS}: {bare} {pin.version} is never to be installed")
            out[pin.name] = pin
    return out


def _install(pin: Pin, log: Path) -> bool:
    with log.open("wb") as out:
        def run(*cmd: str | Path) -> bool:
            return subprocess.run(["nice", "-n", "10", *map(str, cmd)], stdout=out,
                                  stderr=subprocess.STDOUT).returncode == 0
        if pin.registry == "npm":
            overrides = dict(e.rsplit("@", 1) for e in pin.extras)
            (pin.prefix / "package.json").write_text(json.dumps({"private": True,
                                                                  "overrides": overrides}))
            return run("npm", "install", "--prefix", pin.prefix, "--save-exact", "--no-audit",
                       "--no-fund",
                       pin.spec)
        return (run(UV, "venv", "-q", "-p", PY, pin.prefix / "venv")
                and run(UV, "pip", "install", "-p", pin.prefix / "venv" / "bin" / "python",
                        pin.spec, *(e.replace("@", "==") for e in pin.extras)))


def install(name: str) -> Path | None:
    """The peer's prefix, installed if it was not; None, said on stderr, when it does
    not install (its log named)."""
    pin = pins()[name]
    mark = pin.prefix / ".installed"
    wanted = " ".join((pin.spec, *pin.extras)) + "\n"
    if mark.exists() and mark.read_text() == wanted:
        return pin.prefix
    if pin.prefix.exists():
        shutil.rmtree(pin.prefix)
    pin.prefix.mkdir(parents=True)
    log = CACHE / f"{pin.name}-{pin.version}.install.log"
    if not _install(pin, log):
        print(f"{pin.name} ({pin.spec}) did not install (see {log}): measured without it",
              file=sys.stderr)
        return None
    mark.write_text(wanted)
    return pin.prefix


def main() -> None:
    for name in sys.argv[1:] or pins():
        got = install(name)
        print(f"{name}: {got or 'not installed'}")


if __name__ == "__main__":
    main()
