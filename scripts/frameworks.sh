# Sourced by test.sh: the agent frameworks whose recipes docs/frameworks.md gives, pinned,
# for tests/test_frameworks.py (which skips them, saying so, where they are missing). They
# live in venvs of their own beside the project's, each installed only when its pins are
# not there yet: their MCP SDKs are not corral's (langchain-mcp-adapters still needs mcp
# 1.x), and an agent runs its own interpreter anyway.
fw_venv() {  # fw_venv DIR PACKAGE==VERSION...
    fw_dir=$1
    shift
    fw_stamp="$fw_dir/.corral-$(echo "$@" | sha256sum | cut -c1-16)"
    if [ ! -e "$fw_stamp" ]; then
        rm -rf "$fw_dir"
        # stamped only once installed: a venv whose install failed is no venv (run
        # without -e too, a failure leaves nothing a later run takes for done)
        .venv/bin/uv venv -q -p .venv/bin/python3 "$fw_dir" &&
            VIRTUAL_ENV="$PWD/$fw_dir" .venv/bin/uv pip install -q "$@" &&
            touch "$fw_stamp" || { rm -rf "$fw_dir"; return 1; }
    fi
    # byte-compiled once here: uv installs no .pyc, and where PYTHONDONTWRITEBYTECODE is
    # set an agent's every start compiled its framework again (half the CPU of a
    # pydantic-ai start, paid twice by each recipe test); a venv of an earlier install
    # is compiled at the next run (its own stamp)
    if [ ! -e "$fw_dir/.corral-compiled" ]; then
        # a file that does not compile is one no agent imports: not a failure here
        .venv/bin/python -m compileall -q -j 0 "$fw_dir/lib" >/dev/null || true
        touch "$fw_dir/.corral-compiled"
    fi
}
# each call's failure ends the script (the one that sourced it too): run alone without
# -e, a later install that succeeds would have made its status 0
fw_venv .venv-frameworks "pydantic-ai-slim[mcp,openai]==2.68.0" openai-agents==0.24.0 \
    agno==3.1.10 mcp==2.3.0 openai==3.57.0 anthropic==2.13.0 || exit 1
fw_venv .venv-langgraph langgraph==1.2.24 langchain-mcp-adapters==0.3.2 \
    langchain-openai==1.7.4 langchain-core==1.8.3 mcp==1.30.0 || exit 1
