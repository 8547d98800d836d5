#!/usr/bin/env bash
# Set up everything the project needs (a venv with corral and its test tools, the npm
# reference MCP server) and run lint, type check and the whole test suite.
set -euo pipefail
cd "$(dirname "$0")"
. scripts/venv.sh test
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
