"""Keeping what a running fleet holds small, for the cyclic garbage collector's sake.

Every full pass of the collector walks every tracked object in the daemon, and a pass
runs on the loop's thread: at a thousand agents, each object a replica holds while it
runs is a thousand objects in every pass, and the pass is a stall of the loop
(decision 60). What lives as long as a process should be plain attributes and its few
transports, not tasks, closures, bound methods kept in containers, or a copied context
per callback.
"""

from __future__ import annotations

import contextvars

# The context the long-lived callbacks of processes run in (a process's exit, say).
# add_done_callback and call_soon otherwise copy the caller's context for each callback:
# a tracked object per callback, kept as long as the callback is pending. corral's own
# callbacks read and set no context variables, so one shared empty context serves them
# all; callbacks never nest (the loop runs them one at a time), so it is never entered
# twice at once.
QUIET = contextvars.Context()
