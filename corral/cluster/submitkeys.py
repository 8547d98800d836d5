"""A cluster task's idempotency key in Redis, the KeyStore of corral/taskkeys.py's rule:
`corral:{NAME}:idem:TENANT:KEY` holds "TASK_ID DIGEST STATE" for KEEP_SECONDS, the
tenant's keys a sorted set by time (`idems:TENANT`). A key is claimed with its task's id
before the submit, so two nodes racing get one id. `p` (claimed): a retry submits under
the claimed id (the submit is idempotent on it); `a` (accepted): a retry submits nothing,
even once the task's record has been trimmed. A refused submit lets go of its claim.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

from redis.exceptions import RedisError

from ..taskkeys import ACCEPTED, CLAIMED, KEEP_SECONDS, KeyClaim
from .keys import Keys
from .scripts import Scripts

# KEYS: the key's, its tenant's keys (a sorted set by time)
# ARGV: task id, digest, now (seconds), KEEP_SECONDS, the tenant's bound, the key
# -> the key's value when held (another submission's claim, or its task), else the
#    number of keys the tenant holds when that is its bound (refused), else -1 (claimed)
CLAIM = """
local held = redis.call('GET', KEYS[1])
if held then return held end
local keep = tonumber(ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', tonumber(ARGV[3]) - keep)
local count = redis.call('ZCARD', KEYS[2])
if count >= tonumber(ARGV[5]) then return count end
redis.call('SET', KEYS[1], ARGV[1] .. ' ' .. ARGV[2] .. ' p', 'PX', math.floor(keep * 1000))
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[6])
redis.call('EXPIRE', KEYS[2], math.ceil(keep))
return -1
"""

# KEYS: the key's, its tenant's keys; ARGV: the claim's value, the key
# -> 1 let go, 0 the key holds something else
RELEASE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[2])
return 1
"""


class SubmitKeys:
    def __init__(self, redis: Any, scripts: Scripts, keys: Keys, bound: int) -> None:
        self.redis = redis
        self.scripts = scripts
        self.keys = keys
        self.bound = bound
        self._claim = redis.register_script(CLAIM)
        self._release = redis.register_script(RELEASE)

    def _names(self, tenant: str, key: str) -> list[str]:
        return [f"{self.keys.prefix}idem:{tenant}:{key}", f"{self.keys.prefix}idems:{tenant}"]

    async def claim(self, tenant: str, key: str, task_id: str, digest: str) -> KeyClaim:
        got = await self.scripts.one(self._claim, self._names(tenant, key), [
            task_id, digest, repr(time.time()), KEEP_SECONDS, self.bound, key])
        if isinstance(got, bytes):
            held_id, held_digest, state = got.decode().split(" ")
            return KeyClaim(tenant, key, held_id, held_digest, state, False)
        if got == -1:
            return KeyClaim(tenant, key, task_id, digest, CLAIMED, True)
        return KeyClaim(tenant, key, task_id, digest, CLAIMED, False, held=int(got))

    async def accepted(self, claim: KeyClaim) -> None:
        with contextlib.suppress(RedisError):  # (else a retry submits it again: a no-op)
            await self.redis.set(self._names(claim.tenant, claim.key)[0],
                                 f"{claim.task_id} {claim.digest} {ACCEPTED}", xx=True,
                                 px=int(KEEP_SECONDS * 1000))

    async def release(self, claim: KeyClaim) -> None:
        with contextlib.suppress(RedisError):  # (else a retry submits under the claim)
            await self.scripts.run([(self._release, self._names(claim.tenant, claim.key), [
                f"{claim.task_id} {claim.digest} {CLAIMED}", claim.key])])
