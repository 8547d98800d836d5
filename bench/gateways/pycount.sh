#!/bin/sh
# bench/gateways/pycount.py: the Python work a call costs the daemon, counted.
cd "$(dirname "$0")/../.." && exec .venv/bin/python -m bench.gateways.pycount "$@"
