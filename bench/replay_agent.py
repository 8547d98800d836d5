"""An agent for bench_a2a_replay: its A2A message's text a number N, it emits N chunks of
live output at once, then holds its task open (HOLD seconds) so that its stream can be
subscribed to again and again."""

import asyncio
from typing import Any

from corral.worker import Context, run

HOLD = 600.0


async def handle(message: Any, ctx: Context) -> int:
    count = int(message["parts"][0]["text"])
    for n in range(count):
        ctx.emit(f"chunk {n}")
    await asyncio.sleep(HOLD)
    return count


if __name__ == "__main__":
    run(handle)
