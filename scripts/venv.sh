# Sourced by run.sh and test.sh: create .venv and install corral with the given extras.
# usage: . scripts/venv.sh EXTRAS
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
# compat mode: a plain path in a .pth file, not an import hook that every Python started
# from this venv (every worker) would pay ~10 ms for
.venv/bin/python -m pip install -q --disable-pip-version-check \
    --config-settings editable_mode=compat -e ".[$1]"
# byte-compile now: an editable install is not compiled by pip, and where
# PYTHONDONTWRITEBYTECODE is set every daemon, CLI and worker start would compile corral again
.venv/bin/python -m compileall -q corral
