"""How a daemon image starts on a handoff (`corral upgrade`, upgrade.py): the new
install's check before the exec (`preflight`), and the start of the image the old one
execs (`resume`, which upgrade.BOOT calls).

What fails before `committed` is set falls back to the old image (upgrade.BOOT); what
fails after it is a daemon that failed to start."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from .. import __version__
from . import handoff
from .handoff import FAILED_VARIABLE, VARIABLE

committed = False  # this image has taken the handoff (BOOT falls back before only)


def preflight(config: str) -> int:
    """Run by the new install's interpreter before the exec: everything the daemon
    imports imports, the config loads; prints its version and handoff layout, and
    whether the install's byte-code is written (`compiled`)."""
    import uvloop  # noqa: F401 - the daemon's loop

    from ..supervisor.config import ConfigError
    from ..supervisor.configload import load_config
    from . import daemon  # noqa: F401 - all of the daemon's imports

    try:
        load_config(Path(config))
    except ConfigError as exc:
        print(f"invalid config: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({"version": __version__, "handoff": handoff.HANDOFF_VERSION,
                      "compiled": compiled()}))
    return 0


def compiled() -> bool:
    """Every module of this install compiled here, not by the new image in the dispatch
    pause; False where the byte-code cannot be written (a read-only install)."""
    import compileall

    package = Path(__file__).resolve().parent.parent
    return bool(compileall.compile_dir(package, quiet=2, workers=1))


def resume() -> int:
    """BOOT's: take the handoff named by the environment and run the daemon on it."""
    global committed
    path = Path(os.environ[VARIABLE])
    h = handoff.read(path)
    from ..supervisor.configload import load_config

    config = load_config(Path(h.config))  # a config this image refuses: back to the old one
    failed = os.environ.pop(FAILED_VARIABLE, None)
    os.environ.pop(VARIABLE)
    committed = True
    from .daemon import run_daemon
    from .upgrade import Takeover

    return run_daemon(Path(h.config), h.socket, taken=Takeover(h, path, failed, config))
