#!/usr/bin/env bash
# Set up everything the project needs (a venv with corral and its test tools, the real
# MCP servers the tests run) and run lint, type check and the whole test suite.
set -euo pipefail
cd "$(dirname "$0")"
. scripts/venv.sh test
# What the tests run besides corral, installed in the background beside the lint and the
# type check, each kept once per machine under its pins and linked (scripts/kept.sh: a
# clone of kept pins makes none of them again, decision 1001);
# each part that fails fails the run before pytest (a job's commands are not joined by
# `&&`: a script sourced on the left of one runs on past its own failures). The real MCP
# servers, pinned, for the conformance tests (npm, and PyPI through uvx):
(. scripts/mcp-servers.sh) &
servers=$!
# Node 22, the conformance suite and the Inspector, pinned, for the gateway's and the MCP
# client's conformance tests (prefixes of their own: beside the servers' install)
(. scripts/npm-tools.sh) &
tools=$!
# and the agent frameworks of docs/frameworks.md's recipes, pinned, in venvs of their own
(. scripts/frameworks.sh) &
frameworks=$!
# and the A2A conformance kit, pinned, in a venv of its own (tests/a2a/test_tck.py)
(. scripts/a2a-tck.sh) &
a2atck=$!
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
# pycodestyle's blank lines are ruff's preview rules: selected alone here, so preview changes
# no other rule's verdict; a block squeezed for a line count fails the run
.venv/bin/ruff check --preview --select E301,E302,E303,E305,E306 corral tests examples bench \
    scripts
# mypy beside the rest, niced: the type check of a fresh clone takes half a minute of one
# core, which the installs and the tests' collection want (the set-up is short of cores:
# bench/RESULTS.md); its verdict is read after the tests' and fails the run as before
echo "== mypy (beside the rest: its report after the tests')"
# its cache kept once per machine, as the test modules' byte code is (below): a fresh
# clone's check was 18-30 s of a core, nearly all of it the modules no commit changed.
# mypy takes a module from its cache only where the source's hash, its options and
# mypy's own version are the ones it was checked with (a clone's new mtimes and paths
# make it hash each source), and checks again whatever they reach that changed
. scripts/kept.sh
mypy_kept="$CORRAL_KEPT/mypy-cache"
if [ ! -d .mypy_cache ] && [ -d "$mypy_kept" ]; then
    cp -r "$mypy_kept" .mypy_cache || rm -rf .mypy_cache
fi
# and the installed packages' byte code, kept once per machine under the venv's pins and
# linked into a fresh clone's venv (scripts/kept_pycs.py link): uv installs none, and each
# pytest worker compiled the packages its collection imports, all of them at once
site=$(echo .venv/lib/python3*/site-packages)
site_kept=""
if [ -f .venv/.corral-install-test ]; then
    site_kept="$CORRAL_KEPT/site-pycs-$(sha256sum <.venv/.corral-install-test | cut -c1-16)"
fi
if [ -n "$site_kept" ] && [ -d "$site_kept" ]; then
    .venv/bin/python scripts/kept_pycs.py link "$site_kept" "$site" || true
fi
typecheck=$(mktemp)
nice -n 10 .venv/bin/mypy >"$typecheck" 2>&1 &
mypy=$!
# a run that ends early (a failed install) stops it, and the clients' compile below,
# rather than leave them behind
clients=""
trap '[ -z "$mypy" ] || kill "$mypy" 2>/dev/null; [ -z "$clients" ] || kill "$clients" \
    2>/dev/null; rm -f "$typecheck"' EXIT
# the test modules collected once beside the installs: pytest keeps each module as it
# rewrote its asserts (and Python the modules they import), so the workers that collect
# them all at once find that done: in a fresh clone each paid 16 s of CPU for it, 4 s
# once done (decision 983). In two halves side by side, a core each: the collection is
# what pytest waits for once the installs are kept (decision 1002)
collect() {  # collect FILE...: their modules compiled, their collection said nowhere
    env -u PYTHONDONTWRITEBYTECODE .venv/bin/python -m pytest --collect-only -q \
        -p no:cacheprovider "$@" >/dev/null 2>&1 || true
}
# where a clone of the same tests ran here before, pytest's rewritten modules are found
# kept under their sources' bytes (scripts/kept_pycs.py, decision 1005; the store:
# CORRAL_KEPT, above). The collection makes only the test modules left without theirs
# (restore names the files whose collection makes them; all, where it failed saying
# none), and none where every one is found: it would write nothing the workers' own
# collections do not read already, and the whole suite's was most of the set-up before
# pytest (bench/RESULTS.md, the suite), where a session's changed tests were a few files
collecting=$(.venv/bin/python scripts/kept_pycs.py restore "$CORRAL_KEPT/pycs") ||
    [ -n "$collecting" ] || collecting=$(find tests -name 'test_*.py' | sort)
# and hypothesis's tables, kept once per machine as mypy's cache is: its Unicode and codec
# maps, and each local module's constants under its source's hash, which the collection
# (the hypothesis plugin reads them at every collection that holds a hypothesis test) and
# each worker that draws text made again in a fresh clone (bench/RESULTS.md, the suite);
# its examples database is the clone's own
hypothesis_kept="$CORRAL_KEPT/hypothesis"
if [ ! -d .hypothesis ] && [ -d "$hypothesis_kept" ]; then
    mkdir .hypothesis && cp -r "$hypothesis_kept"/. .hypothesis/ || rm -rf .hypothesis
fi
collected=""
collected2=""
if [ -n "$collecting" ]; then
    # shellcheck disable=SC2046
    collect $(echo "$collecting" | awk 'NR % 2 == 1') &
    collected=$!
    # (a half of no file would collect the whole suite)
    if [ "$(echo "$collecting" | wc -l)" -gt 1 ]; then
        # shellcheck disable=SC2046
        collect $(echo "$collecting" | awk 'NR % 2 == 0') &
        collected2=$!
    fi
fi
# and, niced like mypy and not waited for, the official OpenAI and Anthropic clients,
# which only the model gateway's agents import (a start of one compiled them again: ~0.7
# s of its CPU, some thirty starts)
nice -n 10 .venv/bin/python -m compileall -q -j 0 \
    .venv/lib/python3*/site-packages/openai .venv/lib/python3*/site-packages/anthropic \
    >/dev/null 2>&1 &
clients=$!
if [ -n "$collecting" ]; then
    wait "$collected"
    [ -z "$collected2" ] || wait "$collected2"
    .venv/bin/python scripts/kept_pycs.py keep "$CORRAL_KEPT/pycs" || true
fi
wait "$servers"
wait "$tools"
wait "$frameworks"
wait "$a2atck"
# uv's cache, where the servers' part made their environments
. scripts/uv-cache.sh
echo "== pytest"
# the files in parallel, each in one worker with its tests in their order (pytest-xdist,
# --dist loadfile; a test marked `alone` has the machine to itself, tests/conftest.py):
# eight workers on two cores: the files wait on beats, deadlines and processes for most
# of their time, which the workers beside them fill (fewer left the cores idle whenever
# every worker waited at once: decisions 931, 981, 1777, 1835);
# CORRAL_TEST_WORKERS=0 runs them one after another in this process
status=0
.venv/bin/python -m pytest -n "${CORRAL_TEST_WORKERS:-8}" --dist loadfile "$@" || status=$?
# the clients' compile waited for (long done by now): reaped and not waited for, its pid
# could be another process's by the time the trap above kills it
wait "$clients" || true
clients=""
# what the run compiled of the installed packages, kept for the next clone
if [ -n "$site_kept" ]; then
    mkdir -p "$site_kept" && .venv/bin/python scripts/kept_pycs.py link "$site" "$site_kept" ||
        true
fi
# hypothesis's tables kept for the next clone (replaced whole, by a rename), the constants
# of sources this checkout holds alone: those of sources changed since would pile up
constants=.hypothesis/constants
if [ -d .hypothesis/unicode_data ] && mkdir -p "$CORRAL_KEPT" &&
        hypothesis_tmp=$(mktemp -d "$hypothesis_kept.XXXXXX"); then
    cp -r .hypothesis/unicode_data "$hypothesis_tmp"/ && mkdir "$hypothesis_tmp/constants" && {
        git ls-files -z '*.py' | xargs -0 sha1sum | cut -c1-16 | sort -u |
            while read -r hash; do
                for kept in "$constants/$hash" "$constants/${hash}_nolimit"; do
                    [ ! -f "$kept" ] || printf '%s\n' "$kept"
                done
            done | xargs -r cp -t "$hypothesis_tmp/constants"
    } && rm -rf "$hypothesis_kept" && mv -T "$hypothesis_tmp" "$hypothesis_kept" ||
        rm -rf "$hypothesis_tmp"
fi
echo "== mypy"
typed=0
wait "$mypy" || typed=$?
mypy=""
cat "$typecheck"
if [ "$typed" -ne 0 ]; then
    status=1
else
    # what this check left, kept for the next clone's (a kept one replaced whole, by a
    # rename: a clone copying it meanwhile reads the files it opened to their end)
    mkdir -p "$CORRAL_KEPT" && kept_tmp=$(mktemp -d "$mypy_kept.XXXXXX") && cp -r .mypy_cache/. "$kept_tmp" &&
        rm -rf "$mypy_kept" && mv -T "$kept_tmp" "$mypy_kept" || rm -rf "${kept_tmp:-}"
fi
exit "$status"
