"""A systemd unit of `DynamicUser=yes` is imported as what corral has for it: an agent
naming no user, which a root daemon runs as a uid of its own from `[supervisor]
dynamic_uids` (decision 1135), as systemd ran the unit as one of its own (decision 1850)."""

from __future__ import annotations

import tomllib
from pathlib import Path

from .test_import import corral


def test_a_dynamic_user_unit_without_user_is_an_agent_naming_no_user(tmp_path: Path) -> None:
    (tmp_path / "w.service").write_text("[Service]\nExecStart=/usr/bin/w\nDynamicUser=yes\n")
    r = corral("import", "w.service", cwd=tmp_path)
    assert (r.returncode, r.stderr) == (0, (
        "corral import: w.service: [Service]: DynamicUser: yes: no user: under a root daemon "
        "it runs as a uid of its own ([supervisor] dynamic_uids), as under systemd; with "
        "dynamic_uids = [] or a daemon not root, as the daemon's user\n"))
    agent = tomllib.loads(r.stdout)["agents"]["w"]
    assert (agent["command"], "user" in agent) == ("/usr/bin/w", False)
    (tmp_path / "corral.toml").write_text(r.stdout)
    checked = corral("check-config", "--no-check", "corral.toml", cwd=tmp_path)
    assert checked.returncode == 0, checked.stderr


def test_a_dynamic_user_unit_with_user_keeps_that_user(tmp_path: Path) -> None:
    (tmp_path / "w.service").write_text(
        "[Service]\nExecStart=/usr/bin/w\nUser=worker\nDynamicUser=yes\n")
    r = corral("import", "w.service", cwd=tmp_path)
    assert (r.returncode, r.stderr) == (0, (
        'corral import: w.service: [Service]: DynamicUser: yes: user = "worker", which must '
        "exist on this host (corral makes no dynamic user)\n"))
    assert tomllib.loads(r.stdout)["agents"]["w"]["user"] == "worker"
