#!/bin/sh
# bench/gateways/cpu_pair.py: two trees' daemons' CPU a call, paired chunk by chunk.
cd "$(dirname "$0")/../.." && exec .venv/bin/python -m bench.gateways.cpu_pair "$@"
