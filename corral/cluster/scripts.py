"""The Lua scripts: every change of a cluster task's record is one of these, atomic in
Redis, and every write of an attempt checks the fence token its claim issued. Only Redis
7.0 commands (Debian's redis-server 7.0, newer Redis and Valkey)."""

from __future__ import annotations

import time
from typing import Any

from redis.exceptions import NoScriptError

from ..supervisor.tasks.taskmachine import cancel_failure
from . import sessionscripts
from .keys import CHECKPOINT_FIELD, CLAIMED, GROUP, KEEP_OUTCOMES, Keys
from .records import ON_WORKER, error_json, on_worker
from .replicas import Acks
from .trust import Trust

# the asks of a tenant's ended tasks whose records a cluster keeps: the newest, as many
# as the tenant may have pending at once (inbox.MAX_PENDING_PER_TENANT)
KEEP_ASKS = 1_000


def _task_key(kind: str, task: str) -> str:
    """A key of the task's (Keys.steps, Keys.spawns, Keys.task_asks), named from its
    record's key KEYS[1] (Keys.task): the same prefix, so the same hash slot."""
    return f"string.sub(KEYS[1], 1, #KEYS[1] - #{task} - 5) .. '{kind}:' .. {task}"


def _ended(task: str, kept: str, live: int) -> str:
    """A task that ended: its record and attempts (KEYS[1], KEYS[2]) kept `kept` seconds,
    the task moved from the live tasks (KEYS[live]) to the finished (KEYS[live + 1]). One
    fragment for every end, so that no end leaves a key without its expiry (TRIM trusts
    the keys of ids older than keep_tasks_for to have expired). Its labels are kept as
    long (a parent reads its child's), and its push configs (once its end is delivered to
    them: at once), and its live output, ended by an entry `e` (clusteroutput.py: its
    id, of the time, is past every chunk's, so that no write comes after it); its steps,
    spawns' rows and asks by call go at once; its asks join the tenant's ended ones
    (Keys.asks_done), kept to the newest KEEP_ASKS rather than
    each for keep_tasks_for."""
    return f"""redis.call('EXPIRE', KEYS[1], {kept})
redis.call('EXPIRE', KEYS[2], {kept})
local ask_prefix = string.sub(KEYS[1], 1, #KEYS[1] - #{task} - 5)
local ask_tenant = redis.call('HGET', KEYS[1], 'tenant') or 'default'
do
local asks = redis.call('HVALS', {_task_key('asks', task)})
if #asks > 0 then
  local done = ask_prefix .. 'askdone:' .. ask_tenant  -- (scored in ms)
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  for _, ask in ipairs(asks) do
    if redis.call('HEXISTS', ask_prefix .. 'ask:' .. ask, 'end') == 0 then
      redis.call('ZREM', ask_prefix .. 'askq', ask)
      redis.call('ZREM', ask_prefix .. 'askq:' .. ask_tenant, ask)
      redis.call('ZREM', ask_prefix .. 'askdue', ask)
      redis.call('EXPIRE', ask_prefix .. 'ask:' .. ask, {kept})
    end
    redis.call('ZADD', done, now, ask)
  end
  local over = redis.call('ZCARD', done) - {KEEP_ASKS}
  if over > 0 then
    local gone = redis.call('ZPOPMIN', done, over)
    for i = 1, #gone, 2 do redis.call('DEL', ask_prefix .. 'ask:' .. gone[i]) end
  end
  redis.call('EXPIRE', done, {kept})
end
end
redis.call('DEL', {_task_key('steps', task)}, {_task_key('spawn', task)},
  {_task_key('asks', task)})
redis.call('EXPIRE', {_task_key('labels', task)}, {kept})
redis.call('EXPIRE', {_task_key('labels:started', task)}, {kept})
redis.call('EXPIRE', {_task_key('push', task)}, {kept})
redis.call('XADD', {_task_key('output', task)}, 'NOMKSTREAM', '*', 'e', '1')
redis.call('EXPIRE', {_task_key('output', task)}, {kept})
redis.call('ZREM', KEYS[{live}], {task})
redis.call('ZADD', KEYS[{live + 1}], 0, {task})
{sessionscripts.ended(task)}"""


def held(tenant: str, agent: str) -> str:
    """The key of a route's tasks held until their time, scored by it, named from
    KEYS[1], a task's record: the same prefix, so the same hash slot."""
    return f"string.match(KEYS[1], '^(.*)task:') .. 'held:' .. {tenant} .. ':' .. {agent}"


def hold(task: str, at: str, tenant: str, agent: str) -> str:
    """A task held until `at` in the due set (Keys.due), which due.py moves from, and in
    its route's (held()), which its agent's max_queue counts until their time. DUE and
    CANCEL take a task from both; a node of the version before this one takes it from the
    due set alone, so the count is of what is not yet due, and the key lasts an hour past
    its last task's time (beyond any clock's skew)."""
    return f"""redis.call('ZADD', string.match(KEYS[1], '^(.*)task:') .. 'due', {at}, {task})
do
  local route = {held(tenant, agent)}
  redis.call('ZADD', route, {at}, {task})
  local last = redis.call('ZRANGE', route, -1, -1, 'WITHSCORES')[2]
  redis.call('EXPIREAT', route, math.ceil(tonumber(last)) + 3600)
end"""


# KEYS: task, stream, priorities (Keys.stream, Keys.priorities), agents (routes), live
#       tasks (listed)
# ARGV: task_id, agent, input, priority, timeout ('' the claiming node's), retries (''
#       the claiming node's), created, submitted_on, max_queue (0: unbounded), '1' when
#       a client waits for its progress (PROGRESS) else '0', the caller's trace context
#       ('' none); LAST, after a variant's own arguments (so that none of them move), the
#       time it may start at (taskoptions.start_at: '' at once), the task's options (JSON,
#       '' none), its place in a spawn tree ('' none), its tenant and its MAC
#       (trust.TENANT)
# -> 1 accepted, 0 already accepted (a retried submit), {'full', what waits} the queue
#    is full (its agent's max_queue: what waits unread in the stream, and what its route
#    holds until its time)
def submit_script(first: str = "", entry: str = "local entry = {xadd}",
                  then: str = "") -> str:
    return f"""{first}
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
-- (held out of its stream, in the due set, until a node's beat moves it there: due.py)
local due = tonumber(ARGV[#ARGV - 4])
local max_queue = tonumber(ARGV[9])
local made = redis.call('EXISTS', KEYS[2]) == 1
if max_queue > 0 then
  -- what waits unread in the route's every priority's stream (a claimed entry stays
  -- pending until its outcome; each priority a stream, decision 1832) and what waits
  -- for its time; a task to start at once is refused only when what waits is unread (no
  -- free replica), as the node's intake refuses it
  local unread = 0
  for _, p in ipairs(redis.call('ZRANGE', KEYS[3], 0, -1)) do
    local s = string.match(KEYS[2], '^(.*:)') .. p
    if redis.call('EXISTS', s) == 1 then
      unread = unread + redis.call('XLEN', s) - redis.call('XPENDING', s, '{GROUP}')[1]
    end
  end
  local waiting = unread + redis.call('ZCOUNT', {held('ARGV[#ARGV - 1]', 'ARGV[2]')},
    '(' .. ARGV[7], '+inf')
  if waiting >= max_queue and (due or unread > 0) then return {{'full', waiting}} end
end
if not made then redis.call('XGROUP', 'CREATE', KEYS[2], '{GROUP}', '0', 'MKSTREAM') end
{entry.format(xadd="(due and '' or redis.call('XADD', KEYS[2], '*', 'task', ARGV[1]))")}
if due then
  {hold('ARGV[1]', 'due', 'ARGV[#ARGV - 1]', 'ARGV[2]')}
  redis.call('HSET', KEYS[1], 'not_before', due)
end
redis.call('HSET', KEYS[1], 'agent', ARGV[2], 'input', ARGV[3], 'priority', ARGV[4],
  'timeout', ARGV[5], 'retries_left', ARGV[6], 'created', ARGV[7], 'status', 'queued',
  'fence', '0', 'submitted_on', ARGV[8], 'entry', entry, 'stream', KEYS[2],
  'watched', ARGV[10], 'trace', ARGV[11] or '', 'options', ARGV[#ARGV - 3],
  'tenant', ARGV[#ARGV - 1], 'tenant_mac', ARGV[#ARGV])
if ARGV[#ARGV - 2] ~= '' then redis.call('HSET', KEYS[1], 'lineage', ARGV[#ARGV - 2]) end
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[4])
redis.call('SADD', KEYS[4], ARGV[#ARGV - 1] .. ':' .. ARGV[2])
redis.call('ZADD', KEYS[5], 0, ARGV[1])
{then}
return 1
"""


SUBMIT = submit_script()

# A node that read an entry takes its task: a new fence token, the node as owner, an
# attempt begun. A task no longer queued (finished, or queued again under a new entry) is
# not taken and the stale entry leaves the stream; nor is a task of another tenant than
# the claiming agent's (only a Redis writer's hand puts it there). One Lua function for
# READ_CLAIM and SUBMIT_CLAIM; `c`: consumer, node, now, attempt (JSON), the
# claiming node's retries, task_timeout, agent's tenant and retry_lost (nil: none said),
# the last kept as its agent's: a task's own, in its options, is read where a loss is
# decided (reaper.decided, by RetryOptions.lost), never here.
# -> nil, or {token, attempts before this one, input, timeout, retries_left, priority,
#    created, checkpoint step or false, session or false, its state or false, trace
#    context or false[, options (JSON) when they carry a retry policy of their own]}
# `claim_reply`, the one shape of READ_CLAIM's, SUBMIT_CLAIM's and a sticky claim's replies
# (puller.take): where read, entry, task id, then claim()'s answer whole (it has no hole).
_CLAIM_FN = f"""
-- A claim is a live incarnation's: one delayed in Redis past its node's lapse would
-- otherwise hold a task for a dead consumer, which retention may have let go.
local function alive(prefix, consumer)
  return redis.call('EXISTS', prefix .. 'alive:' .. consumer) == 1
end
local function policy(options)
  if options and string.find(options, '"retry"', 1, true) then return options end
  return nil
end
local function claim(fence, stream, entry, id, prefix, c)
  local task = prefix .. 'task:' .. id
  local rec = redis.call('HMGET', task, 'status', 'entry', 'tenant')
  if rec[1] ~= 'queued' or rec[2] ~= entry or rec[3] ~= c[7] then
    redis.call('XACK', stream, '{GROUP}', entry)
    redis.call('XDEL', stream, entry)
    return nil
  end
  local attempts = prefix .. 'att:' .. id
  local token = redis.call('INCR', fence)
  local base = redis.call('LLEN', attempts)
  local had = redis.call('HMGET', task, 'retries_left', 'timeout', 'started')
  if had[1] == '' then redis.call('HSET', task, 'retries_left', c[5]) end
  if had[2] == '' then redis.call('HSET', task, 'timeout', c[6]) end
  if c[8] then redis.call('HSET', task, 'retry_lost', c[8]) end
  redis.call('HSET', task, 'status', 'running', 'fence', token, 'owner', c[1], 'node', c[2])
  if not had[3] then redis.call('HSET', task, 'started', c[3]) end
  redis.call('RPUSH', attempts, c[4])
  local v = redis.call('HMGET', task, 'input', 'timeout', 'retries_left', 'priority',
    'created', 'trace', 'options')
  local cp = false
  if base > 0 then
    cp = redis.call('HGET', prefix .. 'steps:' .. id, '{CHECKPOINT_FIELD}')
  end
  {sessionscripts.CLAIM_TURN}
  return {{token, base, v[1], v[2], v[3], v[4], v[5], cp, sess, state, v[6] or false,
    policy(v[7])}}
end
local function claim_reply(place, entry, id, got)
  return got and {{place, entry, id, unpack(got)}}
end
"""

# Read and claim in one round trip: entries read from the agent's streams in KEYS order
# until ARGV[7], each claimed by claim() above. With ARGV[9] nodes serving the agent,
# at most its share of what waits unread (rounded up): a node woken with another by a
# burst leaves the other its part, and reads again at once for what is left.
# KEYS: fence, the tenant's agent's streams (highest priority first)
# ARGV: consumer, node, now, attempt (JSON), the claiming node's retries and task_timeout,
#       count, the cluster's key prefix, the live nodes running the agent, the agent's
#       tenant, this incarnation's list of sticky turns (Keys.sticky), its retry_lost
# -> {entries read, {{stream's place, entry, task id, claim()'s answer...}, ...}, each
#    stream's newest entry id ('0-0' none), 1 when the share held it back}: a node that
#    read fewer than it asked for, not held back, waits (XREAD) for what comes after
#    those ids
READ_CLAIM = _CLAIM_FN + """
local prefix = ARGV[8]
local c = {ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[10], ARGV[12]}
local out = {}
local want = tonumber(ARGV[7])
if not alive(prefix, ARGV[1]) then want = 0 end
""" + sessionscripts.STICKY_CLAIMS + """
local serving = tonumber(ARGV[9])
local held = 0
if want > 0 and serving > 1 then
  -- (an acknowledgement deletes its entry: what is not pending waits unread)
  local waiting = 0
  for s = 2, #KEYS do
    if redis.call('EXISTS', KEYS[s]) == 1 then
      waiting = waiting + redis.call('XLEN', KEYS[s])
        - redis.call('XPENDING', KEYS[s], '""" + GROUP + """')[1]
    end
  end
  local share = math.ceil(waiting / serving)
  if share < want and share < waiting then want, held = share, 1 end
end
local read = sticky
for s = 2, #KEYS do
  if want <= 0 then break end
  local reply = redis.call('XREADGROUP', 'GROUP', '""" + GROUP + """', ARGV[1], 'COUNT',
    want, 'STREAMS', KEYS[s], '>')
  if reply then
    for _, e in ipairs(reply[1][2]) do
      want = want - 1
      read = read + 1
      local f = e[2]
      for j = 1, #f, 2 do
        if f[j] == 'task' then
          out[#out + 1] = claim_reply(s - 2, e[1], f[j + 1],
            claim(KEYS[1], KEYS[s], e[1], f[j + 1], prefix, c))
          break
        end
      end
    end
  end
end
local lasts = {}
for s = 2, #KEYS do
  local newest = redis.call('XREVRANGE', KEYS[s], '+', '-', 'COUNT', 1)
  lasts[s - 1] = newest[1] and newest[1][1] or '0-0'
end
return {read, out, lasts, held}
"""

# An upgrade's new image reads its kept claims' tasks (cluster/handover.py) as claim()
# answers them, claiming nothing: the task is the record's, as a claim after a crash makes
# it, where the state file carried its fields (and lost those it did not name). With its
# status, owner and fence, by which the node tells whether the claim is still its own.
# ARGV: the cluster's key prefix, then task ids
# -> per id, false (no record) or {stream, entry, id, fence, attempts before the claim's,
#    input, timeout, retries_left, priority, created, false, session or false, false,
#    trace or false, options (as claim()'s), status, owner}
HELD = _CLAIM_FN + """
local out = {}
for i = 2, #ARGV do
  local id = ARGV[i]
  local v = redis.call('HMGET', ARGV[1] .. 'task:' .. id, 'stream', 'entry', 'fence',
    'input', 'timeout', 'retries_left', 'priority', 'created', 'session', 'trace',
    'options', 'status', 'owner')
  out[i - 1] = v[4] and {v[1], v[2], id, v[3],
    redis.call('LLEN', ARGV[1] .. 'att:' .. id) - 1, v[4], v[5], v[6], v[7], v[8], false,
    v[9], false, v[10], policy(v[11]) or false, v[12], v[13]} or false
end
return out
"""

# Submit and claim in one call: a node with a free slot for the agent submits the task as
# SUBMIT does and claims, as READ_CLAIM claims, the first entry its group has not yet
# given out, highest priority first (behind a backlog the oldest waiting: no task jumps
# the queue). When nothing waits unread it claims the task it adds, whose entry then goes
# to the route's claimed stream, not its priority's.
# KEYS: SUBMIT's, then the fence
# ARGV: SUBMIT's (11), then consumer, node, now, attempt (JSON), the claiming node's
#       retries and task_timeout, the cluster's key prefix, its retry_lost; then SUBMIT's
#       last five
# -> {SUBMIT's answer} or {1, {stream, entry, task id, token, ... as READ_CLAIM's}}
SUBMIT_CLAIM = _CLAIM_FN + """local added, direct
local prefix = ARGV[18]
local tenant = ARGV[#ARGV - 1]
local stream_of = prefix .. 'q:' .. tenant .. ':' .. ARGV[2] .. ':'
-- Whether the task is the one this claim takes: nothing waits unread in the agent's streams
local function first()
  if not alive(prefix, ARGV[12]) then return false end
  for _, p in ipairs(redis.call('ZRANGE', KEYS[3], 0, -1)) do
    local s = stream_of .. p
    if redis.call('EXISTS', s) == 1 and redis.call('XLEN', s)
        > redis.call('XPENDING', s, '""" + GROUP + """')[1] then
      return false
    end
  end
  return true
end
-- The task claimed at submission goes to the claimed stream (Keys.claimed), which no
-- puller waits on: no node's blocking read wakes for a task already taken. Its record
-- keeps its priority's stream, where a takeover queues it again.
local function add_claimed()
  direct = stream_of .. '""" + CLAIMED + """'
  if redis.call('EXISTS', direct) == 0 then
    redis.call('XGROUP', 'CREATE', direct, '""" + GROUP + """', '0', 'MKSTREAM')
  end
  local entry = redis.call('XADD', direct, '*', 'task', ARGV[1])
  redis.call('XREADGROUP', 'GROUP', '""" + GROUP + """', ARGV[12], 'COUNT', 1,
    'STREAMS', direct, '>')
  return entry
end
local function submit()
""" + submit_script(
    entry="local entry\n  if not due and first() then entry = add_claimed() else entry = {xadd} "
          "end\n  added = entry") + """end
local got = submit()
if got ~= 1 then return {got} end
if not alive(prefix, ARGV[12]) then return {1} end
local c = {ARGV[12], ARGV[13], ARGV[14], ARGV[15], ARGV[16], ARGV[17], tenant, ARGV[19]}
-- The entry just added, claimed without re-reading what submit() wrote (no attempt, no
-- start, no session yet): claim()'s writes.
local function fresh(s)
  local attempts = prefix .. 'att:' .. ARGV[1]
  if redis.call('LLEN', attempts) > 0 then return nil end
  local token = redis.call('INCR', KEYS[6])
  local timeout = ARGV[5] ~= '' and ARGV[5] or c[6]
  local retries = ARGV[6] ~= '' and ARGV[6] or c[5]
  redis.call('HSET', KEYS[1], 'status', 'running', 'fence', token, 'owner', c[1],
    'node', c[2], 'started', c[3], 'timeout', timeout, 'retries_left', retries)
  if c[8] then redis.call('HSET', KEYS[1], 'retry_lost', c[8]) end
  redis.call('RPUSH', attempts, c[4])
  return {1, claim_reply(s, added, ARGV[1], {token, 0, ARGV[3], timeout, retries, ARGV[4],
    ARGV[7], false, false, false, ARGV[11], policy(ARGV[#ARGV - 3])})}
end
if direct then
  local mine = fresh(direct)
  if mine then return mine end
  -- an attempts list there already: claimed as claim() claims, which counts it
  return {1, claim_reply(direct, added, ARGV[1], claim(KEYS[6], direct, added, ARGV[1], prefix, c))}
end
for _, p in ipairs(redis.call('ZRANGE', KEYS[3], 0, -1, 'REV')) do
  local s = stream_of .. p
  while redis.call('EXISTS', s) == 1 do
    local reply = redis.call('XREADGROUP', 'GROUP', '""" + GROUP + """', ARGV[12],
      'COUNT', 1, 'STREAMS', s, '>')
    if not reply then break end
    local e = reply[1][2][1]
    if s == KEYS[2] and e[1] == added then
      local mine = fresh(s)
      if mine then return mine end
    end
    local id = false
    for j = 1, #e[2], 2 do
      if e[2][j] == 'task' then id = e[2][j + 1] break end
    end
    local claimed = id and claim_reply(s, e[1], id, claim(KEYS[6], s, e[1], id, prefix, c))
    if claimed then return {1, claimed} end
  end
end
return {1}
"""

# The outcome of an attempt (or its retry), only while the task still runs under
# the writer's fence token: a node paused past its TTL, whose task was taken over, is
# refused (0), so a task never gets two outcomes. A retry is as its node decided it on the
# cancel's mark it read (outbox.py: asked to cancel, it ends cancelled instead), kept only
# while the mark is as read: else 2, and the node reads and decides again.
# KEYS: task, attempts, stream, outcomes, live and finished tasks (listed)
# ARGV: token, task_id, status ('queued': a retry), output JSON ('' none), error JSON
#       ('' none; a retry's: the cancel's mark as read, '' none), finished (a retry: when
#       it is due, '' at once), entry, attempts before the claim, seconds a finished
#       record is kept, retries_left, '1' when the outcome rides on the outcomes stream
#       (the waiting client then reads no record), the outcome's MAC (trust.OUTCOME),
#       then this node's attempts (JSON each)
FINISH = f"""
{sessionscripts.MARKABLE}
local rec = redis.call('HMGET', KEYS[1], 'fence', 'status', 'cancel')
if rec[1] ~= ARGV[1] or not {on_worker('rec[2]')} then return 0 end
if ARGV[3] == 'queued' and (rec[3] or '') ~= ARGV[5] then return 2 end
local base = tonumber(ARGV[8])
if base == 0 then
  redis.call('DEL', KEYS[2])
else
  redis.call('LTRIM', KEYS[2], 0, base - 1)
end
local attempts = {{}}
for i = 13, #ARGV do
  redis.call('RPUSH', KEYS[2], ARGV[i])
  attempts[#attempts + 1] = ARGV[i]
end
redis.call('XACK', KEYS[3], '{GROUP}', ARGV[7])
redis.call('XDEL', KEYS[3], ARGV[7])
if ARGV[3] == 'queued' then
  -- a retry waits again, its fence withdrawn, due after its backoff (ARGV[6], '' at
  -- once) in the due set, else in its record's stream
  redis.call('HSET', KEYS[1], 'status', 'queued', 'fence', '0', 'owner', '',
    'retries_left', ARGV[10])
  if ARGV[6] ~= '' then
    local route = redis.call('HMGET', KEYS[1], 'tenant', 'agent')
    {hold('ARGV[2]', 'ARGV[6]', "(route[1] or 'default')", 'route[2]')}
    redis.call('HSET', KEYS[1], 'entry', '', 'not_before', ARGV[6])
  else
    redis.call('HSET', KEYS[1], 'entry', redis.call('XADD',
      redis.call('HGET', KEYS[1], 'stream') or KEYS[3], '*', 'task', ARGV[2]))
  end
  return 1
end
redis.call('HSET', KEYS[1], 'status', ARGV[3], 'finished', ARGV[6],
  'retries_left', ARGV[10], 'mac', ARGV[12])
if ARGV[4] ~= '' then redis.call('HSET', KEYS[1], 'output', ARGV[4]) end
if ARGV[5] ~= '' then redis.call('HSET', KEYS[1], 'error', ARGV[5]) end
if ARGV[11] == '1' then
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', '{KEEP_OUTCOMES}', '*', 'task', ARGV[2],
    'status', ARGV[3], 'output', ARGV[4], 'error', ARGV[5],
    'attempts', '[' .. table.concat(attempts, ',') .. ']', 'fence', ARGV[1],
    'mac', ARGV[12])
else
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', '{KEEP_OUTCOMES}', '*', 'task', ARGV[2])
end
{_ended('ARGV[2]', 'ARGV[9]', 5)}
return 1
"""

# Progress of a running attempt, fenced as its outcome is; also on the outcomes stream
# when a client waits for the task (`corral run`, on any node).
# KEYS: task, outcomes; ARGV: token, progress JSON, task_id -> 1 written, 0 refused
PROGRESS = f"""
local rec = redis.call('HMGET', KEYS[1], 'fence', 'status', 'watched')
if rec[1] ~= ARGV[1] or not {on_worker('rec[2]')} then return 0 end
redis.call('HSET', KEYS[1], 'progress', ARGV[2])
if rec[3] == '1' then
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', '{KEEP_OUTCOMES}', '*', 'task', ARGV[3],
    'progress', ARGV[2])
end
return 1
"""

# A step of a running attempt (steps.py), fenced as its outcome is: a node paused past
# its TTL cannot put a step under its successor's. The fields numbered ARGV[2] or more
# ('' none) are deleted first (an attempt that diverged there).
# KEYS: task, steps; ARGV: token, drop from seq, field, value, field, value...
#   -> 1 written, 0 refused
STEP = f"""
local rec = redis.call('HMGET', KEYS[1], 'fence', 'status')
if rec[1] ~= ARGV[1] or not {on_worker('rec[2]')} then return 0 end
if ARGV[2] ~= '' then
  local from = tonumber(ARGV[2])
  for _, field in ipairs(redis.call('HKEYS', KEYS[2])) do
    local seq = tonumber(field)
    if seq and seq >= from then redis.call('HDEL', KEYS[2], field) end
  end
end
for i = 3, #ARGV, 2 do
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
end
return 1
"""

# A running attempt's chunks of live output (clusteroutput.py), each an entry of the task's
# stream whose id is its position (ATTEMPT-N), fenced as a step is. A chunk not past the
# stream's newest (sent again after an answer lost; or after the task's end) is skipped.
# KEYS: task, its output; ARGV: fence, then for each chunk: position, MAC, data, '1' when
# it is the stream's word for a truncation else '0' -> 1 kept, 0 not this claim's
OUTPUT = f"""
local rec = redis.call('HMGET', KEYS[1], 'fence', 'status')
if rec[1] ~= ARGV[1] or not {on_worker('rec[2]')} then return 0 end
local top = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)[1]
local ta, tn = 0, 0
if top then
  local a, n = string.match(top[1], '^(%d+)-(%d+)$')
  ta, tn = tonumber(a), tonumber(n)
end
for i = 2, #ARGV, 4 do
  local a, n = string.match(ARGV[i], '^(%d+)-(%d+)$')
  a, n = tonumber(a), tonumber(n)
  if a > ta or (a == ta and n > tn) then
    if ARGV[i + 3] == '1' then
      redis.call('XADD', KEYS[2], ARGV[i], 'm', ARGV[i + 1], 'd', ARGV[i + 2], 't', '1')
    else
      redis.call('XADD', KEYS[2], ARGV[i], 'm', ARGV[i + 1], 'd', ARGV[i + 2])
    end
    ta, tn = a, n
  end
end
return 1
"""

# A reaper found an entry pending with a consumer whose liveness key is gone (or a live
# node hands its own back: an orphan, or its claims as it stops): checked again here,
# atomically (the consumer still dead, the entry still the task's, the task still that
# consumer's, and its retries and cancel's mark as the reaper read them), the task is
# queued again under a new entry, or ends, as the reaper decided by the task machine's
# rule (reaper.take_over): this script only keeps what it decided. One read and not
# claimed waits again as it was. (A node of the version before decided here in Lua; both
# keep the record alike.)
# KEYS: task, attempts, stream, outcomes, the dead consumer's liveness key, live and
#       finished tasks (listed)
# ARGV: task_id, entry, dead consumer, now, reason, seconds a finished record is kept,
#       'dead' (its liveness key must be gone) or 'live', its retries_left and cancel's
#       mark as read ('' none), what was decided: 'requeued' with the retries left (''
#       unchanged), or the end ('lost', 'cancelled') with its error JSON and MAC
#       (trust.OUTCOME, fence 0), its status as read ('' none)
# -> 'requeued', 'lost', 'cancelled', or false (nothing to do, or decide again)
TAKEOVER = f"""
{sessionscripts.MARKABLE}
if ARGV[7] == 'dead' and redis.call('EXISTS', KEYS[5]) == 1 then return false end
local rec = redis.call('HMGET', KEYS[1], 'status', 'entry', 'owner', 'retries_left',
  'cancel')
if rec[2] ~= ARGV[2] then
  redis.call('XACK', KEYS[3], '{GROUP}', ARGV[2])
  redis.call('XDEL', KEYS[3], ARGV[2])
  return false
end
-- (a turn given to a live node and claimed by it since it was read, decision 2241)
if (rec[1] or '') ~= ARGV[14] then return false end
-- (its priority's stream, also for an entry of the claimed stream)
local home = redis.call('HGET', KEYS[1], 'stream') or KEYS[3]
-- (one read and not claimed when its reader died waits again as it was)
if rec[1] ~= 'queued' then
  if not {on_worker('rec[1]')} or rec[3] ~= ARGV[3] or (rec[4] or '') ~= ARGV[8]
      or (rec[5] or '') ~= ARGV[9] then return false end
  -- the attempt it was running ends lost (unless it had ended meanwhile)
  local last = redis.call('LINDEX', KEYS[2], -1)
  local ok, a = false, nil
  if last then ok, a = pcall(cjson.decode, last) end  -- (a Redis writer's: no attempt)
  if ok and type(a) == 'table' then
    if a['outcome'] == nil or a['outcome'] == 'running' then  -- (omitted: the default)
      a['outcome'] = 'lost'
      a['error'] = ARGV[5]
      a['finished'] = tonumber(ARGV[4])
      redis.call('LSET', KEYS[2], -1, cjson.encode(a))
    end
  end
end
redis.call('XACK', KEYS[3], '{GROUP}', ARGV[2])
redis.call('XDEL', KEYS[3], ARGV[2])
if rec[1] == 'queued' or ARGV[10] == 'requeued' then
  redis.call('HSET', KEYS[1], 'status', 'queued', 'fence', '0', 'owner', '', 'entry',
    redis.call('XADD', home, '*', 'task', ARGV[1]))
  if ARGV[11] ~= '' then redis.call('HSET', KEYS[1], 'retries_left', ARGV[11]) end
  return 'requeued'
end
redis.call('HSET', KEYS[1], 'status', ARGV[10], 'fence', '0', 'finished', ARGV[4],
  'error', ARGV[12], 'mac', ARGV[13])
redis.call('XADD', KEYS[4], 'MAXLEN', '~', '{KEEP_OUTCOMES}', '*', 'task', ARGV[1])
{_ended('ARGV[1]', 'ARGV[6]', 6)}
return ARGV[10]
"""

# `corral cancel` of a cluster task as `cancel` decided it, while its status is as read:
# ended here ('cancelled'), or marked for the node whose worker runs it ('asked').
# KEYS: task, attempts, stream, outcomes, live and finished tasks (listed); ARGV: task_id,
# now, error JSON, seconds a finished record is kept, the MAC of the outcome
# (trust.OUTCOME, fence 0), the status read, what was decided -> ARGV[7], or 'moved'
CANCEL = f"""
{sessionscripts.MARKABLE}
local rec = redis.call('HMGET', KEYS[1], 'status', 'entry', 'tenant', 'agent')
if rec[1] ~= ARGV[6] then return 'moved' end
if ARGV[7] == 'asked' then
  redis.call('HSET', KEYS[1], 'cancel', '1')
  return 'asked'
end
redis.call('HSET', KEYS[1], 'status', 'cancelled', 'finished', ARGV[2], 'error', ARGV[3],
  'fence', '0', 'mac', ARGV[5])
if rec[2] ~= '' then
  redis.call('XACK', KEYS[3], '{GROUP}', rec[2])
  redis.call('XDEL', KEYS[3], rec[2])
else  -- (held until due: hold())
  redis.call('ZREM', string.match(KEYS[1], '^(.*)task:') .. 'due', ARGV[1])
  redis.call('ZREM', {held("(rec[3] or 'default')", 'rec[4]')}, ARGV[1])
end
redis.call('XADD', KEYS[4], 'MAXLEN', '~', '{KEEP_OUTCOMES}', '*', 'task', ARGV[1])
{_ended('ARGV[1]', 'ARGV[4]', 5)}
return 'cancelled'
"""

# One daemon per node name: another daemon's beat in the nodes hash, its incarnation
# alive, makes JOIN and BEAT return that beat (JSON) and change nothing; bytes there that
# are no beat are no daemon's (a Redis writer's: decision 2097), written over.
# KEYS: alive, nodes; ARGV: node, beat JSON, ttl ms, this daemon's id, the liveness keys'
# prefix
_ONE_DAEMON = """local cur = redis.call('HGET', KEYS[2], ARGV[1])
if cur and ARGV[4] then
  local ok, b = pcall(cjson.decode, cur)
  local inc = ok and type(b) == 'table' and tonumber(b['incarnation'])
  if inc and b['daemon'] ~= ARGV[4] and redis.call('EXISTS', ARGV[5] .. ARGV[1] .. '/' ..
      string.format('%d', inc)) == 1 then
    return cur
  end
end"""

# JOIN: a new incarnation's liveness key (NX) and its entry in the nodes hash
# -> 1, 0 when the key was somehow there, or another live daemon's beat
JOIN = f"""
{_ONE_DAEMON}
if not redis.call('SET', KEYS[1], ARGV[2], 'NX', 'PX', ARGV[3]) then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
return 1
"""

# BEAT: renewed only while it exists (XX): a key that expired means the cluster may
# already have taken this incarnation's tasks, so it must not come back to life.
# -> 1 renewed, 0 expired, or another live daemon's beat
BEAT = f"""
{_ONE_DAEMON}
if not redis.call('SET', KEYS[1], ARGV[2], 'XX', 'PX', ARGV[3]) then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
return 1
"""


def _epoch_is(agents: int, placement: int) -> str:
    """The compare-and-set of PLACE and SET_AGENT: -1 when ARGV[1] is no cluster agent,
    0 when its placement is no longer at epoch ARGV[2]; else `cur` and `epoch` are set."""
    return f"""if redis.call('HEXISTS', KEYS[{agents}], ARGV[1]) == 0 then return -1 end
local cur = redis.call('HGET', KEYS[{placement}], ARGV[1])
local epoch = 0
if cur then epoch = cjson.decode(cur)['epoch'] end
if epoch ~= tonumber(ARGV[2]) then return 0 end"""


# PLACE: a cluster agent's placement, compare-and-set on its epoch. The slots are written
# as given (cjson would turn an empty list into an object).
# KEYS: placement, cluster agents; ARGV: agent, expected epoch, slots JSON
#   -> the new epoch; 0: the epoch moved on; -1: no such cluster agent (removed)
PLACE = f"""
{_epoch_is(2, 1)}
redis.call('HSET', KEYS[1], ARGV[1],
           '{{"epoch":' .. (epoch + 1) .. ',"slots":' .. ARGV[3] .. '}}')
return epoch + 1
"""

# CHECKPOINT: only the incarnation a slot is placed on writes its state (one that lost
# the slot cannot overwrite its successor).
# KEYS: placement, state; ARGV: agent, slot (from 0), consumer, [time, state] JSON
#   -> 1 written, 0 refused
CHECKPOINT = """
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if not cur then return 0 end
local slots = cjson.decode(cur)['slots']
if slots[tonumber(ARGV[2]) + 1] ~= ARGV[3] then return 0 end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[4])
return 1
"""

# ADD_AGENTS: cluster agents' tables, all or none, each with its MAC and first revision.
# KEYS: cluster agents, their MACs, then each agent's history; ARGV: name, table JSON,
# revision 1 (JSON), MAC, name, ... -> '' or the name that exists
ADD_AGENTS = """
for i = 1, #ARGV, 4 do
  if redis.call('HEXISTS', KEYS[1], ARGV[i]) == 1 then return ARGV[i] end
end
for i = 1, #ARGV, 4 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 3])
  local history = KEYS[3 + (i - 1) / 4]
  redis.call('DEL', history)
  redis.call('RPUSH', history, ARGV[i + 2])
end
return ''
"""

# SET_AGENT: a cluster agent's table changed in place (`corral scale`, `rollback`, a
# reload), compare-and-set on its placement epoch, which it moves on: a placement computed
# from the old table loses and reads again. Its history gets the next revision (the
# entry's JSON after `{"revision":N,`) and keeps the last ARGV[5].
# KEYS: cluster agents, placement, history, the tables' MACs
# ARGV: agent, expected epoch, table JSON, the entry's tail, revisions kept, MAC
#   -> the new revision; 0: the epoch moved on; -1: no such cluster agent
SET_AGENT = f"""
{_epoch_is(1, 2)}
local last = redis.call('LINDEX', KEYS[3], -1)
local revision = 1
if last then revision = cjson.decode(last)['revision'] + 1 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
redis.call('HSET', KEYS[4], ARGV[1], ARGV[6])
if cur then
  redis.call('HSET', KEYS[2], ARGV[1],
             (string.gsub(cur, '^{{"epoch":%d+', '{{"epoch":' .. (epoch + 1), 1)))
else
  redis.call('HSET', KEYS[2], ARGV[1], '{{"epoch":1,"slots":[]}}')
end
redis.call('RPUSH', KEYS[3], '{{"revision":' .. revision .. ',' .. ARGV[4])
redis.call('LTRIM', KEYS[3], -tonumber(ARGV[5]), -1)
return revision
"""


# Which of the given liveness keys exist, in one call (not one per node in every beat).
# KEYS: liveness keys -> 1 or 0 each, in order
ALIVE = """
local out = {}
for i, k in ipairs(KEYS) do out[i] = redis.call('EXISTS', k) end
return out
"""

# A dead consumer that holds nothing leaves its stream's group, checked in the same step:
# a claim delayed past the caller's look would otherwise have its entry forgotten with
# the consumer, its task running forever for nobody.
# KEYS: stream, the consumer's liveness key; ARGV: consumer -> 1 removed, 0 kept
DROP_CONSUMER = f"""
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
if #redis.call('XPENDING', KEYS[1], '{GROUP}', '-', '+', 1, ARGV[1]) > 0 then return 0 end
redis.call('XGROUP', 'DELCONSUMER', KEYS[1], '{GROUP}', ARGV[1])
return 1
"""

# TRIM: the finished tasks (keys.done, scored 0, so ordered by id: by creation) beyond the
# newest `kept` taken out of the set and their records deleted in the same step, however
# many nodes trim at once. The ids before the cutoff (an id prefix) just leave the set:
# their records have expired. The records' names are made from the prefix: every key of
# a cluster shares its hash tag.
# KEYS: done; ARGV: kept, cutoff id prefix, the cluster's key prefix -> the ids trimmed
TRIM = """
redis.call('ZREMRANGEBYLEX', KEYS[1], '-', '(' .. ARGV[2])
local over = redis.call('ZCARD', KEYS[1]) - tonumber(ARGV[1])
if over <= 0 then return {} end
local gone = redis.call('ZPOPMIN', KEYS[1], over)
local ids = {}
for i = 1, #gone, 2 do
  ids[#ids + 1] = gone[i]
  redis.call('DEL', ARGV[3] .. 'task:' .. gone[i], ARGV[3] .. 'att:' .. gone[i],
    ARGV[3] .. 'output:' .. gone[i])
end
return ids
"""


Call = tuple[Any, list[Any], list[Any]]  # (a registered script, keys, args)


class Scripts:
    """The scripts registered with a client, loaded again where a restarted Redis has
    forgotten them."""

    def __init__(self, redis: Any, acks: Acks | None = None) -> None:
        self.redis = redis
        self.acks = acks  # what acknowledges a write (replicas.py); None: Redis's answer
        self.submit = redis.register_script(SUBMIT)
        self.read_claim = redis.register_script(READ_CLAIM)
        self.held = redis.register_script(HELD)
        self.submit_claim = redis.register_script(SUBMIT_CLAIM)
        self.finish = redis.register_script(FINISH)
        self.progress = redis.register_script(PROGRESS)
        self.step = redis.register_script(STEP)
        self.output = redis.register_script(OUTPUT)
        self.takeover = redis.register_script(TAKEOVER)
        self.cancel = redis.register_script(CANCEL)
        self.join = redis.register_script(JOIN)
        self.beat = redis.register_script(BEAT)
        self.place = redis.register_script(PLACE)
        self.checkpoint = redis.register_script(CHECKPOINT)
        self.add_agents = redis.register_script(ADD_AGENTS)
        self.set_agent = redis.register_script(SET_AGENT)
        self.trim = redis.register_script(TRIM)
        self.drop_consumer = redis.register_script(DROP_CONSUMER)
        self.alive = redis.register_script(ALIVE)
        self.session_read = redis.register_script(sessionscripts.SESSION_READ)

    async def run(self, calls: list[Call], acks: Acks | None = None) -> list[Any]:
        """Many script calls in one round trip, each answer or its error in order (with
        `acks`, confirmed by them). Not redis-py's piped scripts, which ask SCRIPT EXISTS
        first (a round trip more): a call answered NOSCRIPT did nothing, and goes again
        once loaded, after those behind it, which ran (each connection loads the client's
        scripts as it is made, decision 1802: that is a SCRIPT FLUSH on a live one)."""
        answers = await self._pipe(calls, acks)
        results = answers[:len(calls)]
        missing = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
        if missing:
            for script in {id(calls[i][0]): calls[i][0] for i in missing}.values():
                script.sha = await self.redis.script_load(script.script)
            # a WAIT confirms every write Redis took before it: those that ran too
            answers = await self._pipe([calls[i] for i in missing], acks)
            for i, r in zip(missing, answers, strict=False):
                results[i] = r
        if acks is not None:
            acks.check(answers)
        return results

    async def one(self, script: Any, keys: list[Any], args: list[Any]) -> Any:
        """One `acknowledged` call: its answer, or its error raised."""
        [got] = await self.acknowledged([(script, keys, args)])
        if isinstance(got, BaseException):
            raise got
        return got

    async def acknowledged(self, calls: list[Call]) -> list[Any]:
        """`run`, with the replicas' confirmation where [cluster] ack_replicas asks for it
        (replicas.UnconfirmedWrite when it does not come in time: the calls did run)."""
        return await self.run(calls, self.acks)

    async def _pipe(self, calls: list[Call], acks: Acks | None) -> list[Any]:
        """The calls' answers, then (with `acks`) the confirmation's two, unchecked."""
        pipe = self.redis.pipeline(transaction=False)
        for script, keys, args in calls:
            pipe.evalsha(script.sha, len(keys), *keys, *args)
        if acks is not None:
            acks.ask(pipe)
        return list(await pipe.execute(raise_on_error=False))


class RedisPart:
    """A part of a node that reads and writes the cluster's Redis: the scripts' client,
    the scripts, the cluster's keys, and the cluster key that signs what it writes."""

    def __init__(self, scripts: Scripts, keys: Keys, trust: Trust) -> None:
        self.redis: Any = scripts.redis
        self.scripts = scripts
        self.keys = keys
        self.trust = trust


async def cancel(part: RedisPart, task_id: str, kept_for: int) -> Any:
    """A cluster task cancelled as the engine cancels one (TaskManager.cancel), a finished
    one refused in the machine's words; the node running it cancels it at its next beat
    ('asked'). None: no such task."""
    task = part.keys.task(task_id)
    while True:
        stream, status = await part.redis.hmget(task, "stream", "status")
        if stream is None or status is None:
            return None
        error = error_json(cancel_failure(status.decode(errors="replace"), task_id))
        got = await part.scripts.one(part.scripts.cancel, [
            task, part.keys.attempts(task_id), stream, part.keys.outcomes,
            *part.keys.listed], [
            task_id, repr(time.time()), error, kept_for,
            part.trust.outcome(task_id, "0", "cancelled", b"", error), status,
            "asked" if status in ON_WORKER else "cancelled"])
        if got != b"moved":
            return got
