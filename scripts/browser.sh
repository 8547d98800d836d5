# Sourced by test.sh: Debian's chromium for the dashboard's browser tests (tests/test_ui.py,
# which Playwright's Python package drives through executable_path; Playwright's own
# browser download is never used). Installed with apt-get only where it is missing, at
# the version pinned here; apt-get update runs only then.
CHROMIUM_VERSION=156.0.8078.79-1~deb12u1
if [ ! -x /usr/bin/chromium ]; then
    sudo_=""
    [ "$(id -u)" = 0 ] || sudo_="sudo"
    $sudo_ apt-get update -q
    DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -q --no-install-recommends \
        "chromium=$CHROMIUM_VERSION" ||
    # a point release replaces the pinned build in Debian's archive: take the current one
    # rather than run without the browser tests
    DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -q --no-install-recommends \
        chromium
fi
