# Sourced by run.sh and test.sh: create .venv and install corral with the given extras,
# every external package at the exact version in constraints.txt.
# usage: . scripts/venv.sh EXTRAS
PY=${PYTHON:-python3}
_said=
_installed=  # set when this run installed (its caller may compile what it installed)
if [ ! -x .venv/bin/python ]; then
    # pip -q says nothing for the minute a first install takes: say why we wait
    echo "corral: setting up .venv (first run: a minute or two)…" >&2
    _said=1
    # without ensurepip's pip where the interpreter's own pip can put uv in (its
    # --python, pip 22.3 on), which then installs pip with the rest: ensurepip was half
    # of a fresh clone's venv (decision 1003)
    { "$PY" -m venv --without-pip .venv &&
        "$PY" -m pip --python .venv/bin/python install -q --disable-pip-version-check \
            -c constraints.txt uv 2>/dev/null; } ||
        { rm -rf .venv && "$PY" -m venv .venv; }
fi
# nothing to do when the install inputs are unchanged since the last install: ./run.sh
# then starts in well under 2 s instead of ~17 s of pip (the install is editable, so
# changes to corral's own code need no reinstall)
_stamp=".venv/.corral-install-$1"
_inputs="$(cat pyproject.toml constraints.txt; echo "$1"; .venv/bin/python -V)"
if [ ! -f "$_stamp" ] || [ "$(cat "$_stamp")" != "$_inputs" ]; then
    if [ -f "$_stamp" ]; then
        echo "corral: updating .venv (its requirements changed)…" >&2
    elif [ -z "$_said" ]; then
        # the venv is there (another script's extras, or an install from before the
        # stamps): not a first run
        echo "corral: installing corral[$1] into the existing .venv (up to a minute)…" >&2
    fi
    # by uv (pinned, one of corral's own dependencies, installed first by pip): a first
    # install took 41 s by pip, 15 s by uv (bench/RESULTS.md); by pip where uv cannot
    # (its index unreachable where pip's local wheels are not, say). Compat mode: a plain
    # path in a .pth file, not an import hook that every Python started from this venv
    # (every worker) would pay ~10 ms for
    # (pip installs uv only where uv is not at its pin already)
    { { [ "$(.venv/bin/uv --version 2>/dev/null | cut -d' ' -f2)" = \
            "$(sed -n 's/^uv==//p' constraints.txt)" ] ||
            .venv/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt uv; } &&
        VIRTUAL_ENV="$PWD/.venv" .venv/bin/uv pip install -q -c constraints.txt \
            -C editable_mode=compat -e ".[$1]" pip; } ||
    .venv/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt \
        --config-settings editable_mode=compat -e ".[$1]" &&
        printf '%s' "$_inputs" > "$_stamp" && _installed=1
fi
# byte-compile what changed: an editable install is not compiled by pip, and where
# PYTHONDONTWRITEBYTECODE is set every daemon, CLI and worker start would compile corral
# again (compileall skips files whose .pyc is current)
.venv/bin/python -m compileall -q corral
