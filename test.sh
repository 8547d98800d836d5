#!/usr/bin/env bash
# Set up everything the project needs (a venv with corral and its test tools, the real
# MCP servers the tests run) and run lint, type check and the whole test suite.
set -euo pipefail
cd "$(dirname "$0")"
. scripts/venv.sh test
# Debian's chromium (the dashboard's browser tests) and prometheus (promtool checks the
# /metrics exposition) and bubblewrap (sandbox = "bwrap"), pinned, installed with apt-get
# where missing
. scripts/browser.sh
. scripts/prometheus.sh
. scripts/bwrap.sh
# Debian's redis-server, pinned, for the cluster tests (each starts its own server)
. scripts/redis.sh
echo "== ruff"
.venv/bin/ruff check corral tests examples bench scripts
parts=$(mktemp -d)
# mypy beside the rest, niced: the type check of a fresh clone takes half a minute of one
# core, which the tests' first collection wants; its verdict is read after the tests'
# and fails the run as before
echo "== mypy (beside the rest: its report after the tests')"
typecheck="$parts/mypy"
nice -n 10 .venv/bin/mypy >"$typecheck" 2>&1 &
mypy=$!
# a run that ends early stops what it started rather than leave it behind
trap '[ -z "$mypy" ] || kill "$mypy" 2>/dev/null; rm -rf "$parts"' EXIT
# the test modules collected once before the workers start: pytest keeps each module as
# it rewrote its asserts (and Python the modules they import), so the workers that
# collect them all at once find that done: in a fresh clone each paid 16 s of CPU for
# it, 4 s once done (decision 983); alone, it took 16 s, beside the installs 42 s
env -u PYTHONDONTWRITEBYTECODE .venv/bin/python -m pytest --collect-only -q \
    -p no:cacheprovider >/dev/null 2>&1 || true
# What the tests run besides corral installs in parts beside the tests, and a test that
# needs a part waits for it (scripts/setup-part.sh: a fresh clone's set-up is short of
# cores, the suite's files mostly wait; bench/RESULTS.md); a part that failed fails the
# run.
export CORRAL_SETUP_PARTS="$parts"
. scripts/setup-part.sh
# the real MCP servers, pinned, for the conformance tests (npm, and PyPI through uvx)
part servers scripts/mcp-servers.sh
servers=$!
# Node 22, the conformance suite and the Inspector, pinned, for the gateway's and the MCP
# client's conformance tests (prefixes of their own: beside the servers' install)
part tools scripts/npm-tools.sh
tools=$!
# the agent frameworks of docs/frameworks.md's recipes, pinned, in venvs of their own
part frameworks scripts/frameworks.sh
frameworks=$!
# uv's cache, where the servers' part makes their environments
. scripts/uv-cache.sh
echo "== pytest"
# the files in parallel, each in one worker with its tests in their order (pytest-xdist,
# --dist loadfile; a test marked `alone` has the machine to itself, tests/conftest.py):
# five workers on two cores: the files wait on beats, deadlines and processes for most
# of their time, which the workers beside them fill (decisions 931, 981, 990);
# CORRAL_TEST_WORKERS=0 runs them one after another in this process
status=0
.venv/bin/python -m pytest -n "${CORRAL_TEST_WORKERS:-5}" --dist loadfile "$@" || status=$?
# the parts a run's tests did not wait for (a run of some files) are waited for here:
# the set-up is whole or the run fails
for name in servers tools frameworks; do
    wait "${!name}" || true
    if [ "$(cat "$parts/$name.status")" != 0 ]; then
        echo "corral: the set-up's part $name failed (exit $(cat "$parts/$name.status"));" \
             "its output is above" >&2
        status=1
    fi
done
echo "== mypy"
typed=0
wait "$mypy" || typed=$?
mypy=""
cat "$typecheck"
if [ "$typed" -ne 0 ]; then
    status=1
fi
exit "$status"
