#!/usr/bin/env bash
# Set up corral in a local venv and run the daemon in the foreground with the bundled
# example config (everything local: socket, state and logs under examples/.corral/).
set -euo pipefail
cd "$(dirname "$0")"
. scripts/venv.sh examples
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
