#!/usr/bin/env bash
# Set up corral in a local venv and run the daemon in the foreground with the bundled
# example config (everything local: socket, state and logs under examples/.corral/).
set -euo pipefail
cd "$(dirname "$0")"
. scripts/venv.sh examples
# what an install put in the venv byte-compiled once: uv writes no .pyc, and where
# PYTHONDONTWRITEBYTECODE is set (many an image sets it) every start of the daemon, the
# CLI and the example's notes MCP server compiled its imports again, the server past its
# start_timeout on a busy machine (test.sh compiles what its run imports itself)
if [ -n "$_installed" ]; then
    echo "corral: byte-compiling .venv's packages (first run)…" >&2
    .venv/bin/python -m compileall -q -j 0 .venv/lib/python3*/site-packages >/dev/null 2>&1 ||
        true
fi
# the example agents run `python3`: the venv's, which has the worker SDK
export PATH="$PWD/.venv/bin:$PATH"
# the socket's absolute path, as the README exports it: the hint works from any directory
echo "corral: control socket $PWD/examples/.corral/corral.sock; in another shell try:"
echo "  export CORRAL_SOCKET='$PWD/examples/.corral/corral.sock'"
echo "  .venv/bin/corral status"
# the dashboard's address as the config says it (a port changed there is the one shown)
listen=$(python3 -c 'import tomllib; print(tomllib.load(open("examples/corral.toml", "rb"))["http"]["listen"])')
echo "corral: the dashboard is on http://$listen/ui/; to log in, open the one-time"
echo "  link that this prints:  .venv/bin/corral ui"
exec corral daemon --config examples/corral.toml
