# Sourced by test.sh: the A2A conformance kit (a2aproject/a2a-tck, branch 1.0-dev at
# 357c4a8, spec v1.0.0; the copy beside the repository, ../shared/a2a-tck, or
# CORRAL_A2A_TCK) for tests/a2a/test_tck.py, in a venv of its own with its dependencies
# pinned (as its uv.lock has them), kept once per machine under its pins and the kit's own
# bytes (scripts/kept.sh). The kit is copied: its tests import it as the package `tck`,
# and write their reports beside it. Absent kit: nothing made, and the test says so.
. scripts/kept.sh

_tck_source() {
    for _tck_dir in "${CORRAL_A2A_TCK:-}" ../shared/a2a-tck ../../shared/a2a-tck; do
        if [ -n "$_tck_dir" ] && [ -f "$_tck_dir/run_tck.py" ]; then
            (cd "$_tck_dir" && pwd)
            return 0
        fi
    done
    return 1
}

_tck_make() {  # _tck_make DIR SOURCE PACKAGE==VERSION...
    _tck_out=$1
    _tck_src=$2
    shift 2
    cp -r "$_tck_src" "$_tck_out/tck" && rm -rf "$_tck_out/tck/reports" &&
        .venv/bin/uv venv -q -p .venv/bin/python3 "$_tck_out/venv" &&
        VIRTUAL_ENV="$_tck_out/venv" .venv/bin/uv pip install -q "$@"
}

if _tck_src=$(_tck_source); then
    _tck_bytes=$(cd "$_tck_src" && find . -type f -not -path './reports/*' | sort |
        xargs sha256sum | sha256sum | cut -c1-16)
    _tck_pins="pytest==9.0.2 pytest-asyncio==1.3.0 httpx==0.28.1 grpcio==1.78.0
        protobuf==6.33.5 googleapis-common-protos==1.72.0 jsonschema==4.26.0
        pytest-html==4.2.0 gherkin-official==39.0.0 jinja2==3.1.6"
    _tck_python=$(.venv/bin/python -c 'import sys; print(sys.base_prefix, sys.version)')
    # shellcheck disable=SC2086
    kept .venv-a2a-tck "a2a-tck $_tck_bytes $_tck_python $(.venv/bin/uv --version) \
$_tck_pins" _tck_make "$_tck_src" $_tck_pins || exit 1
else
    echo "corral: the A2A conformance kit is not beside the repository" \
        "(../shared/a2a-tck, or CORRAL_A2A_TCK): tests/a2a/test_tck.py will skip" >&2
fi
