"""corral as a systemd service: write its unit and a starter config."""

from __future__ import annotations

import click

from .app import cli, fail


@cli.group("systemd")
def systemd_group() -> None:
    """corral as a systemd service."""


@systemd_group.command("install")
@click.option("--unit-dir", default="/etc/systemd/system", show_default=True,
              metavar="DIR", help="Where to write corral.service.")
@click.option("--config", "config", default="/etc/corral/corral.toml", show_default=True,
              metavar="PATH", help="The config the unit runs with (a starter one is written "
                                   "if it does not exist).")
@click.option("--force", is_flag=True, help="Replace a corral.service that differs.")
@click.option("--dry-run", is_flag=True, help="Write nothing: print what would be written "
                                              "(the unit's text among it).")
def systemd_install(unit_dir: str, config: str, force: bool, dry_run: bool) -> None:
    """Write the systemd unit (pointing at this installation) and a starter config, from
    the installed package; then run the `systemctl` commands it prints."""
    from pathlib import Path

    from .install import install, next_steps

    try:
        done = install(Path(unit_dir), Path(config), force, dry_run)
    except OSError as exc:  # FileExistsError too
        fail(str(exc))
    for line in done:
        click.echo(line)
    if not dry_run:
        click.echo(next_steps(Path(unit_dir)))
