#!/bin/sh
# bench/gateways/cpu.py: the gateways' daemon CPU a call, trees A/B (its docstring says how).
cd "$(dirname "$0")/../.." && exec .venv/bin/python -m bench.gateways.cpu "$@"
