#!/usr/bin/env bash
# Set up everything the project needs (a venv with corral and its test tools, the npm
# reference MCP server) and run lint, type check and the whole test suite.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
# compat mode: a plain path in a .pth file, not an import hook that every Python started
# from this venv (every worker) would pay ~10 ms for
.venv/bin/python -m pip install -q --disable-pip-version-check \
    --config-settings editable_mode=compat -e '.[test]'
# byte-compile now: an editable install is not compiled by pip, and where
# PYTHONDONTWRITEBYTECODE is set every daemon, CLI and worker start would compile corral again
.venv/bin/python -m compileall -q corral
# the MCP reference server, pinned, for the conformance tests
EVERYTHING=@modelcontextprotocol/server-everything@2026.8.31
if ! grep -qs '"version": "2026.8.31"' \
        .npm-test/node_modules/@modelcontextprotocol/server-everything/package.json; then
    npm install --prefix .npm-test --no-audit --no-fund --silent "$EVERYTHING"
fi
echo "== ruff"
.venv/bin/ruff check corral tests examples bench
echo "== mypy"
.venv/bin/mypy
echo "== pytest"
exec .venv/bin/python -m pytest "$@"
