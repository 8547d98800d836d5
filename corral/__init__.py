"""corral: a supervisor daemon for AI-agent processes."""

__version__ = "0.1.0"
