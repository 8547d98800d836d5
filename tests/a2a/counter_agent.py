"""A test agent whose live output is numbered: each chunk names its attempt and its
place, `attempt A chunk N`, one every PACE seconds, COUNT of them, then it answers."""

import asyncio

from corral.worker import run

PACE, COUNT = 0.1, 30


async def handle(message, ctx):
    for n in range(COUNT):
        ctx.emit(f"attempt {ctx.attempt} chunk {n}")
        await asyncio.sleep(PACE)
    return {"chunks": COUNT}


if __name__ == "__main__":
    run(handle)
