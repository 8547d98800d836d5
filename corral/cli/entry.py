"""The `corral` console script: the CLI, or a clear word when only the SDK is installed
(`pip install corral` is the stdlib-only worker SDK; the CLI needs `corral[daemon]`)."""

from __future__ import annotations

import gc
import sys


def main() -> None:
    # What the CLI's import makes (tens of thousands of objects) lives as long as the
    # process: the collector's passes among them while importing find nothing, and frozen
    # they are out of every later pass, the one at the interpreter's exit too (~0.01 s of
    # a command's ~0.07 s of CPU). What a command makes after is collected as before.
    gc.disable()
    try:
        from .main import main as cli_main
    except ModuleNotFoundError as exc:
        if exc.name is None or exc.name.startswith("corral"):
            raise
        sys.exit(f"corral: the CLI and the daemon need {exc.name}, which is not installed: "
                 "pip install \"corral[daemon]\" (plain `corral` is the worker SDK only)")
    finally:
        gc.freeze()
        gc.enable()
    cli_main()
