# Sourced by scripts/mcp-servers.sh and test.sh: uv's cache inside the checkout, where
# the PyPI MCP servers' environments are made (and the tests run them offline), and no
# interpreter but this machine's.
export UV_CACHE_DIR="$PWD/.uv-cache" UV_PYTHON_DOWNLOADS=never UV_PYTHON=python3
