# Sourced by test.sh (and bench/bench_mcp_start.py's instructions): the real MCP servers the
# tests run, at pinned versions. npm packages go to .npm-test; the PyPI servers run through
# uvx (uv is pinned in pyproject's test extras), whose cache .uv-cache is filled here so
# that tests run them offline.
. scripts/npm-pin.sh
# beside the PyPI servers' environments below: an install waits mostly on its registry
(npm_pin .npm-test @modelcontextprotocol/server-everything@2026.8.31 \
    @modelcontextprotocol/server-filesystem@2026.8.31 \
    @modelcontextprotocol/server-memory@2026.8.31 \
    @modelcontextprotocol/server-sequential-thinking@2026.8.31) &
_npm_servers=$!
. scripts/uv-cache.sh
if [ ! -e .uv-cache/.corral-warm-1 ]; then
    for tool in mcp-server-time@2026.10.19 mcp-server-git@2026.10.19 \
                mcp-server-fetch@2026.10.24; do
        .venv/bin/uvx "$tool" --help >/dev/null
    done
    # FastMCP 1.x (mcp<2) cannot share the venv with mcp 2.x: uv runs it in its own env
    .venv/bin/uv run --no-project --with mcp==1.30.0 python -c "import mcp.server.fastmcp"
    touch .uv-cache/.corral-warm-1
fi
# byte-compiled once, each environment by its own interpreter: uv installs no .pyc, and
# where PYTHONDONTWRITEBYTECODE is set each server's every start compiled its packages
# again (a third of a start's CPU)
if [ ! -e .uv-cache/.corral-compiled-1 ]; then
    for env in .uv-cache/environments-v2/*/*/; do
        # a file that does not compile is one no server imports: not a failure here
        "$env/bin/python" -m compileall -q -j 0 "$env/lib" >/dev/null || true
    done
    touch .uv-cache/.corral-compiled-1
fi
if ! wait "$_npm_servers"; then
    echo "corral: npm could not install the MCP servers (scripts/mcp-servers.sh)" >&2
    return 1
fi
