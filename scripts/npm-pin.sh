# Sourced by scripts/mcp-servers.sh and scripts/npm-tools.sh: npm packages at pinned
# versions, each prefix installed by one npm command (one resolution of the tree, not one
# per package), kept once per machine under its pins and linked (scripts/kept.sh).
. scripts/kept.sh

_npm_make() {  # _npm_make DIR PACKAGE@VERSION...
    _npm_dir=$1
    shift
    npm install --prefix "$_npm_dir" --no-audit --no-fund --silent "$@"
}

npm_pin() {  # npm_pin PREFIX PACKAGE@VERSION...
    _npm_prefix=$1
    shift
    kept "$_npm_prefix" "npm $*" _npm_make "$@"
}
