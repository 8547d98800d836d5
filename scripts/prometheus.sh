# Sourced by test.sh: Debian's prometheus package (promtool checks the /metrics
# exposition, and a real server scrapes it in tests/test_metrics.py), pinned, installed
# with apt-get when promtool is missing. The package's own service is not started.
PROMETHEUS_VERSION=2.42.0+ds-5+deb12u1
if ! command -v promtool >/dev/null 2>&1; then
    echo "corral: installing Debian's prometheus $PROMETHEUS_VERSION (promtool)…" >&2
    # the package lists are fetched only when they do not know the pinned version
    if ! apt-cache show "prometheus=$PROMETHEUS_VERSION" >/dev/null 2>&1; then
        apt-get update -qq
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "prometheus=$PROMETHEUS_VERSION" >/dev/null
fi
