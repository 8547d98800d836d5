"""Imports the worker SDK, says so on stdout, then waits: what "started" means for a peer
that has no readiness protocol."""

import sys

import corral.worker  # noqa: F401

print("started", flush=True)
sys.stdin.read()
