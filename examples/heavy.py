"""An agent with a heavy import (examples/heavy_import.py: 1 s). With
`preload = ["heavy_import"]` corral pays that second once, in the zygote, not at every
start and restart."""

import heavy_import

from corral.worker import run


def handle(task_input, ctx):
    return {"loaded": heavy_import.LOADED}


if __name__ == "__main__":
    run(handle)
