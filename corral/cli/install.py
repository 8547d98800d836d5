"""`corral systemd install` (the `pm2 startup` habit): the unit and a starter config,
written from the installed package — the wheel puts the unit and the examples under
PREFIX/share/corral/ (pyproject's data-files); a source checkout has them at its root."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

SHIPPED_BIN = "/opt/corral/bin"  # what the unit in the repository assumes
SHIPPED_CONFIG = "/etc/corral/corral.toml"


def shared_dir() -> Path:
    """Where the unit and examples of this installation are."""
    installed = Path(sys.prefix) / "share" / "corral"
    if (installed / "systemd" / "corral.service").is_file():
        return installed
    checkout = Path(__file__).resolve().parents[2]
    if (checkout / "systemd" / "corral.service").is_file():
        return checkout
    raise FileNotFoundError(f"no systemd/corral.service under {installed} or {checkout}: "
                            "is corral installed from its wheel or a source checkout?")


def corral_bin() -> Path:
    """The bin directory of the installation this command runs from."""
    exe = shutil.which("corral", path=str(Path(sys.executable).parent))
    return Path(exe).parent if exe else Path(sys.executable).parent


def quoted(word: str) -> str:
    """A word of a unit's command line or assignment as systemd reads it back: in double
    quotes (C escapes) when it holds a space, a quote or a backslash."""
    if not any(c in word for c in ' \t"\'\\'):
        return word
    return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'


def unit_text(config: Path) -> str:
    """The shipped unit, pointed at this installation and at `config` (paths with
    spaces quoted, as systemd needs them)."""
    text = (shared_dir() / "systemd" / "corral.service").read_text()
    bindir = str(corral_bin())
    path = next(line for line in text.splitlines()
                if line.startswith(f"Environment=PATH={SHIPPED_BIN}:"))
    return (text.replace(f"{SHIPPED_BIN}/corral daemon --config {SHIPPED_CONFIG}",
                         f"{quoted(f'{bindir}/corral')} daemon --config {quoted(str(config))}")
                .replace(path, "Environment=" + quoted(path.removeprefix("Environment=")
                                                        .replace(SHIPPED_BIN, bindir, 1))))


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
# user = "nobody"                      # run agents as an unprivileged user

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
