"""python -m corral: the CLI."""

from .cli.entry import main

main()
