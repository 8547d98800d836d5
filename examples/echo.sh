#!/bin/bash
# A corral agent in plain bash: any executable that speaks the worker protocol is an agent
# (docs/protocol.md). It answers initialize, ping and shutdown, and echoes a task's input;
# each task also runs a `sleep` in the background, as shell agents do with their tools.
# The parsing is naive on purpose (corral's requests are compact JSON, one per line).
while IFS= read -r line; do
    [[ $line =~ \"id\":([0-9]+) ]] || continue
    id=${BASH_REMATCH[1]}
    case $line in
    *'"method":"task/run"'*)
        [[ $line =~ \"input\":(.*),\"deadline\" ]] && input=${BASH_REMATCH[1]} || input=null
        sleep 1000 </dev/null >/dev/null 2>&1 &
        printf '{"jsonrpc":"2.0","id":%s,"result":{"output":%s}}\n' "$id" "$input" ;;
    *'"method":"shutdown"'*)
        printf '{"jsonrpc":"2.0","id":%s,"result":{}}\n' "$id"
        exit 0 ;;
    *)
        printf '{"jsonrpc":"2.0","id":%s,"result":{}}\n' "$id" ;;
    esac
done
