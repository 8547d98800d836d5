"""python -m corral: the CLI."""

from .cli.main import main

main()
