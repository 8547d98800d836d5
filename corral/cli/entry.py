"""The `corral` console script: the CLI, or a clear word when only the SDK is installed
(`pip install corral` is the stdlib-only worker SDK; the CLI needs `corral[daemon]`)."""

from __future__ import annotations

import sys


def main() -> None:
    try:
        from .main import main as cli_main
    except ModuleNotFoundError as exc:
        if exc.name is None or exc.name.startswith("corral"):
            raise
        sys.exit(f"corral: the CLI and the daemon need {exc.name}, which is not installed: "
                 "pip install \"corral[daemon]\" (plain `corral` is the worker SDK only)")
    cli_main()
