"""A test agent whose live output is numbered: each chunk names its attempt and its
place, `attempt A chunk N`, one every PACE seconds, COUNT of them, then it answers."""

import asyncio
from typing import Any

from corral.worker import Context, run

PACE, COUNT = 0.1, 30


async def handle(message: Any, ctx: Context) -> dict[str, int]:
    for n in range(COUNT):
        ctx.emit(f"attempt {ctx.attempt} chunk {n}")
        await asyncio.sleep(PACE)
    return {"chunks": COUNT}


if __name__ == "__main__":
    run(handle)
