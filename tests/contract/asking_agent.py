"""A test agent that sends a chunk, then (once told by its file MARK) asks its caller."""

import asyncio
import os
from pathlib import Path
from typing import Any

from corral.worker import Context, run

MARK = Path(os.environ["ASKING_MARK"])


async def handle(message: Any, ctx: Context) -> dict[str, Any]:
    ctx.emit("before the question")
    while not MARK.exists():
        await asyncio.sleep(0.02)
    answer = await ctx.ask("what now?")
    ctx.emit("after the answer")
    return {"answer": answer}


if __name__ == "__main__":
    run(handle)
