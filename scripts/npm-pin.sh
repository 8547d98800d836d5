# Sourced by scripts/mcp-servers.sh and scripts/npm-tools.sh: npm packages at pinned
# versions, each prefix installed by one npm command (one resolution of the tree, not one
# per package) and only with the packages whose pinned version is not there yet.
npm_pin() {  # npm_pin PREFIX PACKAGE@VERSION...
    _prefix=$1
    shift
    _missing=""
    for _spec in "$@"; do
        # the version after the last @ (a scoped name begins with one)
        if ! grep -qs "\"version\": \"${_spec##*@}\"" \
                "$_prefix/node_modules/${_spec%@*}/package.json"; then
            _missing="$_missing $_spec"
        fi
    done
    if [ -n "$_missing" ]; then
        # shellcheck disable=SC2086
        npm install --prefix "$_prefix" --no-audit --no-fund --silent $_missing
    fi
}
