# Sourced by test.sh (and bench/bench_mcp_start.py's instructions): the real MCP servers the
# tests run, at pinned versions. npm packages go to .npm-test; the PyPI servers run through
# uvx (uv is pinned in pyproject's test extras), whose cache .uv-cache holds their
# environments so that tests run them offline. Both are kept once per machine under their
# pins (scripts/kept.sh).
. scripts/npm-pin.sh
# beside the PyPI servers' environments below: an install waits mostly on its registry
(npm_pin .npm-test @modelcontextprotocol/server-everything@2026.8.31 \
    @modelcontextprotocol/server-filesystem@2026.8.31 \
    @modelcontextprotocol/server-memory@2026.8.31 \
    @modelcontextprotocol/server-sequential-thinking@2026.8.31) &
_npm_servers=$!
. scripts/uv-cache.sh

_uv_make() {  # _uv_make DIR TOOL@VERSION...: their environments made in uv's cache DIR
    _uv_dir=$1
    shift
    for _uv_tool in "$@"; do
        UV_CACHE_DIR=$_uv_dir .venv/bin/uvx "$_uv_tool" --help >/dev/null || return 1
    done
    # FastMCP 1.x (mcp<2) cannot share the venv with mcp 2.x: uv runs it in its own env
    UV_CACHE_DIR=$_uv_dir .venv/bin/uv run -q --no-project --with mcp==1.30.0 python -c \
        "import mcp.server.fastmcp" || return 1
    # byte-compiled once, each environment by its own interpreter: uv installs no .pyc,
    # and where PYTHONDONTWRITEBYTECODE is set each server's every start compiled its
    # packages again (a third of a start's CPU); a file that does not compile is one no
    # server imports: not a failure here
    for _uv_env in "$_uv_dir"/environments-v2/*/*/; do
        "$_uv_env/bin/python" -m compileall -q -j 0 "$_uv_env/lib" >/dev/null || true
    done
}

_uv_failed=""
_uv_tools="mcp-server-time@2026.10.19 mcp-server-git@2026.10.19 mcp-server-fetch@2026.10.24"
# shellcheck disable=SC2086
kept .uv-kept "uvx $(.venv/bin/uv --version) $(python3 -V) mcp==1.30.0 $_uv_tools" \
    _uv_make $_uv_tools || _uv_failed=1
# the tests' uv writes into its cache (a `uv run --with` makes its environment there): a
# copy of their own, its files hard links to the kept ones (uv replaces a file, never
# writes into one), or copies where the store is on another file system; made anew when
# the kept one is another
if [ -z "$_uv_failed" ]; then
    _uv_from=$(readlink .uv-kept)
    if [ "$(cat .uv-cache/.corral-from 2>/dev/null)" != "$_uv_from" ]; then
        rm -rf .uv-cache
        { cp -al "$_uv_from" .uv-cache 2>/dev/null ||
            { rm -rf .uv-cache && cp -a "$_uv_from" .uv-cache; }; } &&
            echo "$_uv_from" > .uv-cache/.corral-from || _uv_failed=1
    fi
fi
_npm_failed=""
wait "$_npm_servers" || _npm_failed=1
if [ -n "$_uv_failed" ]; then
    echo "corral: uv could not make the PyPI MCP servers' environments" \
        "(scripts/mcp-servers.sh)" >&2
fi
if [ -n "$_npm_failed" ]; then
    echo "corral: npm could not install the MCP servers (scripts/mcp-servers.sh)" >&2
fi
if [ -n "$_uv_failed$_npm_failed" ]; then
    return 1
fi
