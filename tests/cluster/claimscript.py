"""One queued entry claimed by its task's id, for the tests that set a task's claim up
by hand: no node claims so (a node claims what it reads, READ_CLAIM, or what it submits,
SUBMIT_CLAIM), so the script is the tests' own, over the nodes' one claim() function."""

from __future__ import annotations

from typing import Any

from corral.cluster.scripts import _CLAIM_FN, Scripts

# KEYS: task, attempts, fence, stream
# ARGV: consumer, node, now, entry, attempt (JSON), the claiming node's retries,
#       task_timeout, agent's tenant and retry_lost
# -> false, or claim()'s answer, its trailing falses cut
CLAIM = _CLAIM_FN + """
local prefix, id = string.match(KEYS[1], '^(.*)task:(.-)$')
if not alive(prefix, ARGV[1]) then return false end
local got = claim(KEYS[3], KEYS[4], ARGV[4], id, prefix,
  {ARGV[1], ARGV[2], ARGV[3], ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9]})
if not got then return false end
if not got[12] then
  if not got[11] or got[11] == '' then
    got[11] = nil
    if not got[9] then
      got[9], got[10] = nil, nil
      if not got[8] then got[8] = nil end
    end
  end
end
return got
"""


def claim_script(s: Scripts) -> Any:
    """CLAIM registered with the client of `s`: called as its scripts are (keys=, args=)."""
    return s.redis.register_script(CLAIM)
