"""`corral systemd install` (the `pm2 startup` habit): the unit and a starter config,
written from the installed package — the wheel puts the unit and the examples under
PREFIX/share/corral/ (pyproject's data-files); a source checkout has them at its root."""

from __future__ import annotations

import math
import os
import re
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

if TYPE_CHECKING:
    from ..supervisor.config import Config

SHIPPED_BIN = "/opt/corral/bin"  # what the unit in the repository assumes
SHIPPED_CONFIG = "/etc/corral/corral.toml"


def shared_dir() -> Path:
    installed = Path(sys.prefix) / "share" / "corral"
    if (installed / "systemd" / "corral.service").is_file():
        return installed
    checkout = Path(__file__).resolve().parents[2]
    if (checkout / "systemd" / "corral.service").is_file():
        return checkout
    raise FileNotFoundError(f"no systemd/corral.service under {installed} or {checkout}: "
                            "is corral installed from its wheel or a source checkout?")


def corral_bin() -> Path:
    exe = shutil.which("corral", path=str(Path(sys.executable).parent))
    return Path(exe).parent if exe else Path(sys.executable).parent


# the daemon's own teardown after its agents have stopped (cluster hand-back, journal)
STOP_MARGIN = 15


def _default(spec: type[msgspec.Struct], name: str) -> float:
    return float(next(f.default for f in msgspec.structs.fields(spec) if f.name == name))


def stop_timeout_sec(cfg: Config) -> int:
    """The unit's TimeoutStopSec for `cfg`: the longest drain and cancel grace, then the
    agents' stop and the tool servers' (each a grace after the shutdown request and one
    after SIGTERM), and STOP_MARGIN; the shipped unit's is this for a config of
    defaults (tests/test_drain.py holds it)."""
    from ..supervisor.config import AgentSpec, McpServerSpec  # the engine, at need: below

    default = cfg.supervisor.drain_timeout
    agents = list(cfg.agents.values())
    drain = max((default if a.drain_timeout is None else a.drain_timeout for a in agents),
                default=default)
    grace = max((a.cancel_grace for a in agents),
                default=_default(AgentSpec, "cancel_grace"))
    stop = max((a.stop_timeout for a in agents), default=_default(AgentSpec, "stop_timeout"))
    tools = max((s.stop_timeout for s in cfg.mcp_servers.values()),
                default=_default(McpServerSpec, "stop_timeout"))
    return math.ceil(drain + grace + 2 * stop + 2 * tools + STOP_MARGIN)


def quoted(word: str) -> str:
    """A word of a unit's command line or assignment as systemd reads it back: in double
    quotes (C escapes) when it holds a space, a quote or a backslash."""
    if not any(c in word for c in ' \t"\'\\'):
        return word
    return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'


def unit_text(config: Path) -> str:
    """The shipped unit, pointed at this installation and at `config` (paths with
    spaces quoted, as systemd needs them), its TimeoutStopSec from the config's
    drain_timeout when the config is there."""
    text = (shared_dir() / "systemd" / "corral.service").read_text()
    bindir = str(corral_bin())
    path = next(line for line in text.splitlines()
                if line.startswith(f"Environment=PATH={SHIPPED_BIN}:"))
    text = (text.replace(f"{SHIPPED_BIN}/corral daemon --config {SHIPPED_CONFIG}",
                         f"{quoted(f'{bindir}/corral')} daemon --config {quoted(str(config))}")
                .replace(path, "Environment=" + quoted(path.removeprefix("Environment=")
                                                        .replace(SHIPPED_BIN, bindir, 1))))
    # the engine's config, at need: every CLI command imports this module, and the engine
    # is most of a start's imports
    from ..supervisor.config import ConfigError
    from ..supervisor.configload import load_config

    try:
        cfg = load_config(config) if config.exists() else None
    except ConfigError:
        cfg = None  # `corral check-config` says why; the unit keeps the shipped bound
    if cfg is not None:
        text = re.sub(r"^TimeoutStopSec=\d+$", f"TimeoutStopSec={stop_timeout_sec(cfg)}",
                      text, flags=re.M)
    return text


def starter_config() -> str:
    examples = shared_dir() / "examples"
    return f"""\
# corral's configuration: every key is in docs/config.md. Check it with
#   corral check-config {SHIPPED_CONFIG}
# and apply changes with `systemctl reload corral`.

[supervisor]
# members of this group may use `corral` without sudo (groupadd corral first)
# group = "corral"

# An example agent, from the installed package; replace it with your own.
[agents.hello]
command = ["python3", "{examples / 'hello.py'}"]
replicas = 1
# with no user it runs as a uid of its own ([supervisor] dynamic_uids); user = "root" as root

[agents.hello.limits]
memory_mb = 512
"""


# where systemd looks for units an administrator installs (systemd.unit(5))
UNIT_DIRS = ("/etc/systemd/system", "/run/systemd/system", "/usr/local/lib/systemd/system",
             "/usr/lib/systemd/system", "/lib/systemd/system")


def install(unit_dir: Path, config: Path, force: bool, dry_run: bool = False) -> list[str]:
    """Write the unit (refusing to replace a different one unless `force`) and the
    starter config (never replacing one); what was done, in words. With `dry_run`,
    nothing is written: what would be, and the unit's text."""
    done = []
    unit = unit_dir / "corral.service"
    text = unit_text(config)
    if unit.exists() and unit.read_text() != text and not force:
        raise FileExistsError(f"{unit} exists and differs (--force to replace it)")
    if dry_run:
        done.append(f"would write {unit}:")
        done.extend(f"    {line}" for line in text.splitlines())
    else:
        unit_dir.mkdir(parents=True, exist_ok=True)
        unit.write_text(text)
        os.chmod(unit, 0o644)
        done.append(f"wrote {unit}")
    if config.exists():
        done.append(f"kept {config} (it exists)")
    elif dry_run:
        done.append(f"would write {config} (a starter config)")
    else:
        config.parent.mkdir(parents=True, exist_ok=True)
        config.write_text(starter_config())
        os.chmod(config, 0o644)
        done.append(f"wrote {config}")
    return done


def next_steps(unit_dir: Path) -> str:
    """What to run after the install, for where the unit was written."""
    start = "systemctl daemon-reload && systemctl enable --now corral"
    if str(unit_dir.resolve()) in UNIT_DIRS or str(unit_dir) in UNIT_DIRS:
        return f"next: {start}"
    return (f"next: {unit_dir} is not where systemd reads units: copy corral.service to "
            f"/etc/systemd/system/ (or link it: systemctl link {unit_dir}/corral.service), "
            f"then {start}")
