"""The dashboard (`/ui`, corral/daemon/http/ui.py): its vendored libraries are the npm
registry's files, byte for byte, and ship with the package."""

from __future__ import annotations

import hashlib
import re
import shutil
import tomllib
from pathlib import Path

from .conftest import ROOT

STATIC = ROOT / "corral" / "daemon" / "http" / "static"
VENDOR = STATIC / "vendor"


def recorded_hashes(vendor: Path) -> dict[str, str]:
    """File name -> sha256, from VENDORED.md's table of files."""
    rows = re.findall(r"^\| `([^`]+)` \|[^|]*\|[^|]*\| `([0-9a-f]{64})` \|$",
                      (vendor / "VENDORED.md").read_text(), re.MULTILINE)
    return dict(rows)


def vendor_mismatches(vendor: Path) -> list[str]:
    """What differs between the vendored files and VENDORED.md: a changed file, a file
    not recorded, a recorded file missing."""
    recorded = recorded_hashes(vendor)
    present = {p.name for p in vendor.iterdir() if p.name != "VENDORED.md"}
    out = [f"not recorded: {n}" for n in sorted(present - set(recorded))]
    out += [f"missing: {n}" for n in sorted(set(recorded) - present)]
    for name in sorted(present & set(recorded)):
        if hashlib.sha256((vendor / name).read_bytes()).hexdigest() != recorded[name]:
            out.append(f"changed: {name}")
    return out


def test_vendored_files_match_their_recorded_hashes() -> None:
    assert set(recorded_hashes(VENDOR)) == {
        "preact.mjs", "htm.mjs", "uPlot.iife.min.js", "uPlot.min.css",
        "LICENSE.preact", "LICENSE.htm", "LICENSE.uplot"}
    assert vendor_mismatches(VENDOR) == []


def test_a_changed_or_unrecorded_vendored_file_is_caught(tmp_path: Path) -> None:
    copy = tmp_path / "vendor"
    shutil.copytree(VENDOR, copy)
    with (copy / "htm.mjs").open("ab") as f:
        f.write(b"\n")
    (copy / "extra.js").write_text("")
    (copy / "LICENSE.uplot").unlink()
    assert vendor_mismatches(copy) == ["not recorded: extra.js", "missing: LICENSE.uplot",
                                       "changed: htm.mjs"]


def test_every_static_file_is_package_data() -> None:
    """An installed corral (not a checkout) serves the same page: every file under
    static/ matches a package-data glob of pyproject.toml."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    globs = config["tool"]["setuptools"]["package-data"]["corral.daemon.http"]
    base = STATIC.parent
    shipped = {p for g in globs for p in base.glob(g)}
    files = {p for p in STATIC.rglob("*") if p.is_file()}
    assert files and files <= shipped, sorted(str(p) for p in files - shipped)
