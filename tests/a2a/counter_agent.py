"""A test agent whose live output is numbered: each chunk names its attempt and its
place, `attempt A chunk N`, one every PACE seconds, COUNT of them, then it answers (a
message's data part may give others: `{"count": N, "pace": S}`); with COUNTER_HOLD set in
its environment, it answers once that file exists (a test's client subscribed first)."""

import asyncio
import os
from typing import Any

from corral.worker import Context, run

PACE, COUNT = 0.1, 30


async def handle(message: Any, ctx: Context) -> dict[str, int]:
    parts = message.get("parts", []) if isinstance(message, dict) else []
    given = next((p["data"] for p in parts if isinstance(p, dict) and "data" in p), {})
    count, pace = given.get("count", COUNT), given.get("pace", PACE)
    for n in range(count):
        ctx.emit(f"attempt {ctx.attempt} chunk {n}")
        await asyncio.sleep(pace)
    hold = os.environ.get("COUNTER_HOLD")
    while hold is not None and not os.path.exists(hold):
        await asyncio.sleep(0.02)
    return {"chunks": count}


if __name__ == "__main__":
    run(handle)
