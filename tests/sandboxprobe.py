"""Whether this host can sandbox a process of a user, asked once per process.

The test modules' skip marks ask at collection, where every worker imports every module,
and each asking runs bubblewrap in a user namespace: a dozen modules in each worker asked
for the one answer, which does not change within a run (bench/RESULTS.md, the suite)."""

from __future__ import annotations

import functools

from corral.supervisor.sandbox import host_refusal


@functools.cache
def sandbox_refusal(user: str | None) -> str | None:
    """Why this host cannot run bubblewrap as `user` (None: as this process), or None."""
    return host_refusal("bwrap", user)
