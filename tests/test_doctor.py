"""`corral doctor`: what this host offers to enforce an agent's boundary, and the layer each
agent runs under (docs/sandbox.md#egress) — on this machine, and on one without user
namespaces: the capability really dropped (a user namespace of the test's own whose
user.max_user_namespaces is 0, so no sandbox can be made in it), not a knob."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import textwrap
from pathlib import Path
from typing import Any

import pytest

from corral.daemon.doctor import GATEWAYS_HOW
from corral.paths import default_config
from corral.supervisor.landlock import abi

from .conftest import ROOT
from .daemon_harness import PY, config_text, corral_run
from .sandboxprobe import sandbox_refusal

pytestmark = pytest.mark.skipif(sandbox_refusal(None) is not None,
                                reason=f"no sandbox here: {sandbox_refusal(None)}")
FORBIDDEN = ("user namespaces are forbidden on this host (user.max_user_namespaces = 0); "
             "bubblewrap needs one to sandbox a process (bwrap: Creating new namespace "
             "failed: nesting depth or /proc/sys/user/max_*_namespaces exceeded (ENOSPC))")


def config(tmp_path: Path, warn: bool = False) -> Path:
    (tmp_path / "a").mkdir(exist_ok=True)
    agents = textwrap.dedent(f"""
        [agents.boxed]
        command = ["{PY}"]
        cwd = "{tmp_path}/a"
        egress = "gateways"
        {'egress_fallback = "warn"' if warn else ""}

        [agents.cut]
        command = ["{PY}"]
        cwd = "{tmp_path}/a"
        egress = "none"
        {'egress_fallback = "warn"' if warn else ""}

        [agents.open]
        command = ["{PY}"]
    """)
    path = tmp_path / "corral.toml"
    path.write_text(config_text(agents, tmp_path / "corral.sock", tmp_path / "state")
                    + '[gateway]\nlisten = "127.0.0.1:8765"\n')
    return path


def doctor_json(out: str) -> dict[str, Any]:
    found = json.loads(out)
    return {"host": {p["name"]: (p["ok"], p["said"]) for p in found["host"]},
            "agents": {a["agent"]: (a["egress"], a["layer"], a["runs"])
                       for a in found["agents"]}}


def test_doctor_names_the_layer_on_this_host(tmp_path: Path) -> None:
    done = corral_run(["doctor", "-c", str(config(tmp_path)), "--json"], timeout=60)
    assert done.returncode == 0, done.stderr
    seen = doctor_json(done.stdout)
    assert seen["host"]["user namespaces"] == (
        True, "bubblewrap makes a sandbox with a user namespace of its own")
    assert seen["host"]["egress layer"] == (
        True, "bubblewrap: a network namespace of its own, the gateways reachable in it")
    version, said = abi()
    assert seen["host"]["landlock"][0] == (version > 0)
    assert said in seen["host"]["landlock"][1]
    assert seen["host"]["seccomp"] == (
        True, "filters: an egress sandbox's sockets are unix, IPv4 and IPv6 alone")
    assert set(seen["host"]) == {"user namespaces", "landlock", "seccomp",
                                 "cgroup delegation", "egress layer"}
    assert seen["agents"] == {
        "boxed": ("gateways", "bubblewrap: a network namespace of its own, the gateways at "
                              f"127.0.0.1:8765 in it ({GATEWAYS_HOW})", True),
        "cut": ("none", "bubblewrap: an empty network namespace", True),
        "open": ("any", "none: the host's network and files", True)}
    # and in words, for a person
    text = corral_run(["doctor", "-c", str(config(tmp_path))], timeout=60).stdout
    assert text.splitlines()[0].split() == ["HOST", "OK", "WHAT", "IT", "SAID"]
    assert "boxed  gateways  bubblewrap: a network namespace of its own, the gateways " \
           "at 127.0.0.1:8765 in it" in text


def without_user_namespaces(args: list[str]) -> subprocess.CompletedProcess[str]:
    """`corral ARGS` on a host that allows no user namespace: inside one of the test's
    own (unprivileged: it needs none of root's) whose max_user_namespaces is set to 0."""
    script = 'echo 0 > /proc/sys/user/max_user_namespaces && exec "$@"'
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(["unshare", "--user", "--map-root-user", "sh", "-c", script,
                           "sh", PY, "-m", "corral", *args],
                          capture_output=True, text=True, env=env, timeout=60)


@pytest.mark.skipif(shutil.which("unshare") is None, reason="no unshare(1) here")
def test_without_user_namespaces_it_says_why_and_agents_are_refused(tmp_path: Path) -> None:
    path = config(tmp_path)
    done = without_user_namespaces(["doctor", "-c", str(path), "--json"])
    assert done.returncode == 1, done.stderr
    seen = doctor_json(done.stdout)
    assert seen["host"]["user namespaces"] == (False, FORBIDDEN)
    assert seen["host"]["egress layer"] == (False, f"none: {FORBIDDEN}")
    assert seen["agents"] == {"boxed": ("gateways", f"refused: {FORBIDDEN}", False),
                              "cut": ("none", f"refused: {FORBIDDEN}", False),
                              "open": ("any", "none: the host's network and files", True)}
    # what the daemon (start, reload, check-config, add) refuses, in the same words
    done = without_user_namespaces(["check-config", str(path)])
    assert done.returncode == 1
    assert done.stderr == (
        f'corral: invalid config: {path}: agents.boxed.egress: egress = "gateways" cannot '
        f"be enforced on this host: {FORBIDDEN} (egress_fallback = \"warn\" runs it "
        "unenforced)\n")
    # told to, it runs them unenforced, and says so
    path = config(tmp_path, warn=True)
    done = without_user_namespaces(["doctor", "-c", str(path), "--json"])
    assert done.returncode == 0, done.stderr
    assert doctor_json(done.stdout)["agents"]["boxed"] == (
        "gateways", f'none, unenforced (egress_fallback = "warn"): {FORBIDDEN}', True)
    assert without_user_namespaces(["check-config", str(path)]).returncode == 0


@pytest.mark.skipif(default_config().exists(), reason="a config at the default place")
def test_with_no_config_at_the_default_place_it_shows_the_host(tmp_path: Path) -> None:
    done = corral_run(["doctor", "--json"], timeout=60)
    assert (done.returncode, done.stderr) == (0, f"corral: no config at {default_config()}: "
                                                 "no agent judged (give one with --config)\n")
    seen = json.loads(done.stdout)
    assert [p["name"] for p in seen["host"]] == [
        "user namespaces", "landlock", "seccomp", "cgroup delegation", "egress layer"]
    assert (seen["agents"], seen["config_errors"]) == ([], [])
    # a config named that is not there is an error, as for check-config
    done = corral_run(["doctor", "-c", str(tmp_path / "none.toml")], timeout=60)
    assert done.returncode == 1 and done.stderr.startswith(
        f"corral: invalid config: {tmp_path / 'none.toml'}: "), done.stderr


def test_a_config_check_config_refuses_exits_1_saying_why(tmp_path: Path) -> None:
    path = tmp_path / "corral.toml"
    # the agent's cwd, writable in its sandbox, holds the config file
    path.write_text(config_text(f'[agents.cut]\ncommand = ["{PY}"]\ncwd = "{tmp_path}"\n'
                                'egress = "none"\n', tmp_path / "corral.sock",
                                tmp_path / "state"))
    said = (f"corral: invalid config: {path}: agents.cut.cwd: {tmp_path} is writable in the "
            f"sandbox and holds corral's config file ({path}): give the agent a cwd of its "
            "own\n")
    assert corral_run(["check-config", str(path)]).stderr == said
    done = corral_run(["doctor", "-c", str(path)], timeout=60)
    assert (done.returncode, done.stderr) == (1, said)
    assert done.stdout.startswith("HOST ")  # what the host offers, all the same
    done = corral_run(["doctor", "-c", str(path), "--json"], timeout=60)
    assert (done.returncode, json.loads(done.stdout)["config_errors"]) == (1, [said[
        len("corral: invalid config: "):-1]])
