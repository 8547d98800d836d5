"""The `corral` console script: the CLI, or a clear word when only the SDK is installed
(`pip install corral` is the stdlib-only worker SDK; the CLI needs `corral[daemon]`)."""

from __future__ import annotations

import contextlib
import gc
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterator


@contextlib.contextmanager
def long_lived_imports() -> Iterator[None]:
    """Imports that make what lives as long as the process (tens of thousands of
    objects): the collector's passes among them while importing find nothing, and frozen
    they are out of every later pass, the one at the interpreter's exit too (a share of
    a command's CPU, and of a daemon's boot: bench/RESULTS.md). What is made after is
    collected as before."""
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        gc.enable()


def main() -> None:
    with long_lived_imports():
        try:
            from .main import main as cli_main
        except ModuleNotFoundError as exc:
            if exc.name is None or exc.name.startswith("corral"):
                raise
            sys.exit(f"corral: the CLI and the daemon need {exc.name}, which is not "
                     "installed: pip install \"corral[daemon]\" (plain `corral` is the "
                     "worker SDK only)")
    cli_main()
