"""A tool server written with the official MCP Python SDK (mcp 2.x): notes in memory."""

from mcp.server import MCPServer

server = MCPServer("notes")
_notes: dict[str, str] = {}


@server.tool()
def add(title: str, text: str) -> str:
    """Store a note under a title."""
    _notes[title] = text
    return f"stored {title}"


@server.tool()
def get(title: str) -> str:
    """Read the note stored under a title."""
    return _notes.get(title, "")


@server.tool()
def search(word: str) -> list[str]:
    """Titles of the notes that contain a word."""
    return sorted(t for t, text in _notes.items() if word in text)


if __name__ == "__main__":
    server.run()
