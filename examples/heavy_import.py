"""A stand-in for an LLM framework's import cost: one second of work at import time
(used by the warm-start benchmark; an agent that imports it starts one second late)."""

import time

_deadline = time.monotonic() + 1.0
while time.monotonic() < _deadline:  # CPU, as real imports are, not a sleep
    pass
LOADED = True
