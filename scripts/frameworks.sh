# Sourced by test.sh: the agent frameworks whose recipes docs/frameworks.md gives, pinned,
# for tests/test_frameworks.py (which skips them, saying so, where they are missing). They
# live in venvs of their own beside the project's, each kept once per machine under its
# pins and its interpreter (scripts/kept.sh): their MCP SDKs are not corral's
# (langchain-mcp-adapters still needs mcp 1.x), and an agent runs its own interpreter.
. scripts/kept.sh

_fw_make() {  # _fw_make DIR PACKAGE==VERSION...
    _fw_dir=$1
    shift
    .venv/bin/uv venv -q -p .venv/bin/python3 "$_fw_dir" &&
        VIRTUAL_ENV="$_fw_dir" .venv/bin/uv pip install -q "$@" || return 1
    # byte-compiled once here: uv installs no .pyc, and where PYTHONDONTWRITEBYTECODE is
    # set an agent's every start compiled its framework again (half the CPU of a
    # pydantic-ai start, paid twice by each recipe test); a file that does not compile is
    # one no agent imports: not a failure here
    .venv/bin/python -m compileall -q -j 0 "$_fw_dir/lib" >/dev/null || true
}

fw_venv() {  # fw_venv LINK PACKAGE==VERSION...: kept under its pins and its interpreter
    _fw_link=$1
    shift
    _fw_python=$(.venv/bin/python -c 'import sys; print(sys.base_prefix, sys.version)')
    kept "$_fw_link" "venv $_fw_python $(.venv/bin/uv --version) $*" _fw_make "$@"
}
# each call's failure ends the script (the one that sourced it too): run alone without
# -e, a later install that succeeds would have made its status 0
fw_venv .venv-frameworks "pydantic-ai-slim[mcp,openai]==2.68.0" openai-agents==0.24.0 \
    agno==3.1.10 mcp==2.3.0 openai==3.57.0 anthropic==2.13.0 || exit 1
fw_venv .venv-langgraph langgraph==1.2.24 langchain-mcp-adapters==0.3.2 \
    langchain-openai==1.7.4 langchain-core==1.8.3 mcp==1.30.0 || exit 1
