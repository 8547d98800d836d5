#!/usr/bin/env bash
# Re-fetch the dashboard's vendored libraries from the npm registry and check them against
# corral/daemon/http/static/vendor/VENDORED.md: each tarball's sha512 integrity as the
# registry publishes it, and each file's sha256 as recorded. With --update, the files are
# copied in (the record is then to be rewritten by hand from what this prints).
# usage: scripts/vendor-ui.sh [--update]
set -euo pipefail
cd "$(dirname "$0")/.."
VENDOR=corral/daemon/http/static/vendor
# package@version  file-in-tarball  name-in-vendor
FILES="
preact@11.2.0 package/dist/preact.mjs preact.mjs
preact@11.2.0 package/LICENSE LICENSE.preact
htm@3.1.1 package/dist/htm.mjs htm.mjs
htm@3.1.1 package/LICENSE LICENSE.htm
uplot@1.6.32 package/dist/uPlot.iife.min.js uPlot.iife.min.js
uplot@1.6.32 package/dist/uPlot.min.css uPlot.min.css
uplot@1.6.32 package/LICENSE LICENSE.uplot
"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
status=0
for pkg in $(echo "$FILES" | awk 'NF {print $1}' | sort -u); do
    # npm pack checks the tarball against the registry's integrity before it writes it
    (cd "$tmp" && npm pack --silent "$pkg" >/dev/null 2>&1)
    name=${pkg%@*}; version=${pkg#*@}
    mkdir -p "$tmp/$pkg"
    tar xzf "$tmp/$name-$version.tgz" -C "$tmp/$pkg"
done
while read -r pkg inner local; do
    [ -n "$pkg" ] || continue
    fetched=$(sha256sum "$tmp/$pkg/$inner" | cut -d' ' -f1)
    if [ "${1:-}" = "--update" ]; then
        cp "$tmp/$pkg/$inner" "$VENDOR/$local"
    fi
    recorded=$(grep -E "^\| \`$local\` " "$VENDOR/VENDORED.md" | awk -F'|' '{print $5}' \
               | tr -d ' `' || true)
    if [ "$fetched" != "$recorded" ]; then
        echo "MISMATCH $local: registry $fetched, VENDORED.md ${recorded:-none}" >&2
        status=1
    elif ! echo "$fetched  $VENDOR/$local" | sha256sum -c --quiet -; then
        echo "MISMATCH $local: the file on disk is not the registry's" >&2
        status=1
    else
        echo "ok $local ($pkg $inner) $fetched"
    fi
done <<< "$FILES"
exit $status
