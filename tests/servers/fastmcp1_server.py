"""A FastMCP 1.x server (the official SDK before 2.0) with a sync tool that blocks its event
loop: while `block` runs, the server answers nothing, pings included. Run with mcp<2, e.g.
`uv run --no-project --with mcp==1.30.0 python fastmcp1_server.py`."""

import time

from mcp.server.fastmcp import FastMCP

app = FastMCP("blocker")


@app.tool()
def block(seconds: float = 8.0) -> str:
    """Sleep on the event loop for `seconds`, then say so."""
    time.sleep(seconds)
    return f"blocked {seconds:g} s"


@app.tool()
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


if __name__ == "__main__":
    app.run()
