# Sourced by test.sh (and bench/bench_mcp_start.py's instructions): the real MCP servers the
# tests run, at pinned versions. npm packages go to .npm-test; the PyPI servers run through
# uvx (uv is pinned in pyproject's test extras), whose cache .uv-cache is filled here so
# that tests run them offline.
NPM_SERVERS_VERSION=2026.8.31
NPM_SERVERS="server-everything server-filesystem server-memory server-sequential-thinking"
npm_missing=""
for s in $NPM_SERVERS; do
    if ! grep -qs "\"version\": \"$NPM_SERVERS_VERSION\"" \
            ".npm-test/node_modules/@modelcontextprotocol/$s/package.json"; then
        npm_missing="$npm_missing @modelcontextprotocol/$s@$NPM_SERVERS_VERSION"
    fi
done
if [ -n "$npm_missing" ]; then
    # shellcheck disable=SC2086
    npm install --prefix .npm-test --no-audit --no-fund --silent $npm_missing
fi
export UV_CACHE_DIR="$PWD/.uv-cache" UV_PYTHON_DOWNLOADS=never UV_PYTHON=python3
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
