"""A durable call's new step row written by its task's submit (decision 752): one script
for the row, the call's held ended rows (decision 750) and the submit, where two round
trips were (the row's SAVE_STEPS, then the submit). The rule a call's steps keep holds:
the row names the task in Redis no later than the task exists, and in the same script,
under the call's lease. The script writes nothing, and makes no task, when the call's
fence is not this node's token (another node took the call), or the call has ended (a
run cancelled while its step's submit was on its way: the row it ended stays so, and
no task is left running for it): a pipeline of SAVE_STEPS
then SUBMIT would not do, a refused row with a submit that went on leaving a task that
no row names, whose step the taker would make again under a new id.

The guarded scripts are SUBMIT's and SUBMIT_CLAIM's with the guard before them: their
keys, then the call's and its steps' (KEYS[#KEYS - 1], KEYS[#KEYS]); their arguments,
then the call's token and its rows (one msgpack array of field, signed row, ...) just
before SUBMIT's last four (ARGV[#ARGV - 5], ARGV[#ARGV - 4]), so that no argument either
script reads moves.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import msgspec

from .scripts import SUBMIT, SUBMIT_CLAIM

REFUSED = -9  # the answer of a ride whose call is another's, or has ended
KEYS = 7  # a riding submit's keys (SUBMIT's five, the call's two); SUBMIT_CLAIM's: 8


def _guarded(script: str, refused: str) -> str:
    return f"""local call = redis.call('HMGET', KEYS[#KEYS - 1], 'fence', 'status')
if call[1] ~= ARGV[#ARGV - 5] or (call[2] and call[2] ~= 'running') then
  return {refused}
end
local rows = cmsgpack.unpack(ARGV[#ARGV - 4])
for i = 1, #rows, 2 do redis.call('HSET', KEYS[#KEYS], rows[i], rows[i + 1]) end
""" + script


SUBMIT_RIDING = _guarded(SUBMIT, str(REFUSED))
SUBMIT_CLAIM_RIDING = _guarded(SUBMIT_CLAIM, f"{{{REFUSED}}}")


class RideScripts:
    """The guarded submits, registered with a client (called through scripts.Scripts)."""

    def __init__(self, redis: Any) -> None:
        self.submit = redis.register_script(SUBMIT_RIDING)
        self.submit_claim = redis.register_script(SUBMIT_CLAIM_RIDING)


class LostLease(Exception):
    """A ride refused: the call's lease is another node's now."""


@dataclass
class Ride:
    """A call's rows to write with its step's task's submit (ClusterCalls.ride), and what
    to do once Redis has them (`kept`: the node's journal, the engine told)."""

    call_id: str
    keys: list[str]  # the call's, its steps'
    token: int
    rows: list[tuple[str, bytes]]
    kept: Callable[[], Awaitable[None]]

    def args(self) -> list[Any]:
        """The two arguments the guard reads (a signed row is JSON after its MAC: text,
        packed as msgpack strings, which Redis's cmsgpack reads; its binary type not)."""
        return [self.token, msgspec.msgpack.encode(
            [x for field, row in self.rows for x in (field, row.decode())])]
