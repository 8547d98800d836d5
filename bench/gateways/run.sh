#!/bin/sh
# bench/gateways: corral's model and MCP gateways beside Portkey, LiteLLM and ContextForge
# (bench/gateways/run.py says what and how; --full for the long run).
cd "$(dirname "$0")/../.." && exec .venv/bin/python -m bench.gateways.run "$@"
