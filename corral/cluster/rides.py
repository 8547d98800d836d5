"""A durable call's new step row written by its task's submit: one script for the row,
the call's held ended rows and the submit, under the call's lease, so that the row names
the task no later than the task exists (a pipeline of SAVE_STEPS then SUBMIT could leave a
task no row names, whose step the taker would make again under a new id). The held rows'
tasks' outcomes (outbox.py) go first in the same round trip; the guard refuses the ride,
writing nothing, unless each is in its task's record under this node's claim.

The guarded scripts are SUBMIT's and SUBMIT_CLAIM's with the guard before them: their
keys, then the call's and its steps' (KEYS[#KEYS - 1], KEYS[#KEYS]); their arguments,
then the outcomes carried (one msgpack array of task key, fence, status, ...), the
call's token and its rows (one msgpack array of field, signed row, ...) just before
SUBMIT's last five (ARGV[#ARGV - 7] to ARGV[#ARGV - 5]), so that no argument either
script reads moves.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from .scripts import SUBMIT, SUBMIT_CLAIM

REFUSED = -9  # the answer of a ride whose call is another's, or has ended, or whose
# carried outcome is not in its task's record
KEYS = 7  # a riding submit's keys (SUBMIT's five, the call's two); SUBMIT_CLAIM's: 8


def _guarded(script: str, refused: str) -> str:
    return f"""local call = redis.call('HMGET', KEYS[#KEYS - 1], 'fence', 'status')
if call[1] ~= ARGV[#ARGV - 6] or (call[2] and call[2] ~= 'running') then
  return {refused}
end
local ended = cmsgpack.unpack(ARGV[#ARGV - 7])
for i = 1, #ended, 3 do
  local rec = redis.call('HMGET', ended[i], 'fence', 'status')
  if rec[1] ~= ended[i + 1] or rec[2] ~= ended[i + 2] then return {refused} end
end
local rows = cmsgpack.unpack(ARGV[#ARGV - 5])
for i = 1, #rows, 2 do redis.call('HSET', KEYS[#KEYS], rows[i], rows[i + 1]) end
""" + script


SUBMIT_RIDING = _guarded(SUBMIT, str(REFUSED))
SUBMIT_CLAIM_RIDING = _guarded(SUBMIT_CLAIM, f"{{{REFUSED}}}")


class LostLease(Exception):
    """A ride refused: the call's lease is another node's now."""


@dataclass
class Ride:
    """A call's rows to write with its step's task's submit; `kept` once Redis has them."""

    call_id: str
    keys: list[str]  # the call's, its steps'
    token: int
    rows: list[tuple[str, bytes]]
    kept: Callable[[], Awaitable[None]]
    tasks: list[str]  # the tasks of its ended rows (their outcomes may be carried)
    # its ended rows held again: the submit failed, or was not answered
    unsent: Callable[[], None]

    def args(self, ended: Sequence[tuple[str, int, str]] = ()) -> list[Any]:
        """The three arguments the guard reads: `ended` (task key, fence token, status),
        the token, the rows (packed as msgpack strings: Redis's cmsgpack does not read
        its binary type)."""
        return [msgspec.msgpack.encode([str(x) for e in ended for x in e]), self.token,
                msgspec.msgpack.encode(
                    [x for field, row in self.rows for x in (field, row.decode())])]
