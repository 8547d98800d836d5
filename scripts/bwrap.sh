# Sourced by test.sh: Debian's bubblewrap (sandbox = "bwrap" runs agents under it; the
# sandbox tests in tests/test_sandbox.py run it for real), pinned, installed with apt-get
# when bwrap is missing.
BUBBLEWRAP_VERSION=0.8.0-2+deb12u1
if ! command -v bwrap >/dev/null 2>&1; then
    echo "corral: installing Debian's bubblewrap $BUBBLEWRAP_VERSION…" >&2
    # the package lists are fetched only when they do not know the pinned version
    if ! apt-cache show "bubblewrap=$BUBBLEWRAP_VERSION" >/dev/null 2>&1; then
        apt-get update -qq
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "bubblewrap=$BUBBLEWRAP_VERSION" >/dev/null
fi
