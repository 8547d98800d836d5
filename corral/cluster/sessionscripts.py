"""The Lua of sessions on a cluster (docs/durable.md#sessions-on-a-cluster).

A session is a hash whose `cur` is its one task in the agent's stream, and a line of the
later ones (records queued, entry "0-0", out of the stream): each task's end
(scripts._ended) marks it ended, and a node then moves the next of the line in (MOVE);
the last one's starts the session_ttl.
A session's keys name its owner, the tenant of its first turn's agent (`stenant` of each
turn's record). Times are Redis's own (TIME): one clock for every node.
"""

from __future__ import annotations

from ..supervisor.tasks.sessions import KEEP_HISTORY
from .keys import GROUP, TURNS_ENDED
from .records import TERMINAL, on_worker

# Seconds a node's list of the turns given to it (Keys.sticky) outlives its last one: its
# items are stale once the busy bound has passed (they are checked as they are taken),
# and a dead incarnation's list must not stay.
KEEP_STICKY = 3600
# A script's answer: the session is no longer as read (read it, and decide, again).
MOVED = -3

# The session's keys named from a task's record key (KEYS[1]) and the session's tenant,
# agent and name. (A turn submitted before sessions had owners has no tenant: its
# session's keys are named as they were then, so that its line still moves.)
_NAMES = """local prefix = string.match(KEYS[1], '^(.*)task:')
local owned = tenant and (tenant .. ':' .. agent) or agent
local skey = prefix .. 'sess:' .. owned .. ':' .. name
local sline = prefix .. 'sline:' .. owned .. ':' .. name
local shist = prefix .. 'shist:' .. owned .. ':' .. name
local sall = prefix .. 'sessions:' .. owned
local sbytes = prefix .. 'sbytes:' .. owned
local slabels = prefix .. 'labels:session:' .. (tenant or '') .. ':' .. agent .. ':' .. name
local sstarted = prefix .. 'labels:started:session:' .. (tenant or '') .. ':' .. agent .. ':'
  .. name
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000"""


def _prune(live: str, sizes: str) -> str:
    """An agent's expired sessions out of its count (`live`) and its bytes (`sizes`)."""
    return f"""for _, gone in ipairs(redis.call('ZRANGEBYSCORE', {live}, '-inf', '(' .. now)) do
  redis.call('HDEL', {sizes}, gone)
end
redis.call('ZREMRANGEBYSCORE', {live}, '-inf', '(' .. now)"""


def _stick(stream: str) -> str:
    """The turn just added to `stream` given to the node that ran its session's last
    turn, while that incarnation is alive, runs the agent, is not draining and takes
    sticky turns, and while the turn jumps no backlog: delivered to that consumer in the
    group, as its own read would, and named in its list, which its next read claims
    first. Pending with it, the turn is what the cluster already knows how to take back
    (by the reaper, or its own orphan pass: reaper.py)."""
    return f"""do
local holder = tenant and redis.call('HGET', skey, 'node')
local beat = holder and redis.call('GET', prefix .. 'alive:' .. holder)
-- (a beat that does not decode, a Redis writer's, gives nothing: an error here would
-- stop the end that runs this halfway)
local ok, b = false, nil
if beat then ok, b = pcall(cjson.decode, beat) end
if ok and type(b) == 'table' and type(b['agents']) == 'table' then
  local runs = false
  for _, a in ipairs(b['agents']) do
    if a == agent then runs = true end
  end
  local of = (type(b['tenants']) == 'table' and b['tenants'][agent]) or 'default'
  if runs and of == tenant and b['draining'] ~= true and b['sticky'] ~= false then
    local unread = 0
    for _, p in ipairs(redis.call('ZRANGE', prefix .. 'prio:' .. tenant .. ':' .. agent,
        0, -1)) do
      local s = prefix .. 'q:' .. tenant .. ':' .. agent .. ':' .. p
      if redis.call('EXISTS', s) == 1 then
        unread = unread + redis.call('XLEN', s)
          - redis.call('XPENDING', s, '{GROUP}')[1]
      end
    end
    if unread == 1 then
      local got = redis.pcall('XREADGROUP', 'GROUP', '{GROUP}', holder, 'COUNT', 1,
        'STREAMS', {stream}, '>')
      if type(got) == 'table' and not got['err'] then
        local e = got[1][2][1]
        for j = 1, #e[2], 2 do
          if e[2][j] == 'task' then
            local list = prefix .. 'stk:' .. tenant .. ':' .. agent .. ':' .. holder
            redis.call('RPUSH', list, e[1] .. ' ' .. e[2][j + 1])
            redis.call('EXPIRE', list, {KEEP_STICKY})
            break
          end
        end
      end
    end
  end
end
end"""


def ended(task: str) -> str:
    """(A fragment of scripts._ended.) A task of a session that ended is marked as a turn
    whose session has yet to move (Keys.turns_ended): what the move is, the node decides
    (MOVE), not this end (decision 1500)."""
    return f"""if redis.call('HEXISTS', KEYS[1], 'session') == 1 then
  redis.call('SADD', string.match(KEYS[1], '^(.*)task:') .. '{TURNS_ENDED}', {task})
end"""


# (The first statement of every script that can end a task: FINISH, CANCEL
# and TAKEOVER.) A session's task's end marks it last (`ended`), and Redis keeps what a
# script wrote before it fails: the ended turns' set of another type (a Redis writer's)
# would let the end be written and its mark fail, its line stranded behind it for ever.
# Read first, it fails such an end before its first write. (A task of no session never
# reads the sessions' key.)
MARKABLE = f"""if redis.call('HEXISTS', KEYS[1], 'session') == 1 then
  redis.call('SCARD', string.match(KEYS[1], '^(.*)task:') .. '{TURNS_ENDED}')
end"""


# A new session's read (clustersessions.submit_args): the live sessions of each sorted set
# KEYS names (an agent's of a tenant, scored by when each expires), by Redis's clock.
COUNTS = """
local t = redis.call('TIME')
local now, out = tonumber(t[1]) + tonumber(t[2]) / 1000000, {}
for i, live in ipairs(KEYS) do out[i] = redis.call('ZCOUNT', live, now, '+inf') end
return out
"""

# A session's read, one round trip (clustersessions `_read`: a submit's, a view's, an
# end's), its current turn's mark and its record's status with it: read apart, a move
# between them would show an ended turn as current and not marked, holding its place. The
# ended turns' set is tested for the current turn only, not fetched whole.
# KEYS: the session's hash, its line, the turns ended; ARGV: the task records' key
#   prefix, then the hash's fields ('cur' first) -> {the line's length, 1 when its
#   current turn is marked ended else 0, that turn's record's status ('' no current
#   turn, or its record gone), then the fields}
SESSION_READ = """
local fields = redis.call('HMGET', KEYS[1], unpack(ARGV, 2))
local marked, status = 0, ''
if fields[1] and fields[1] ~= '' then
  marked = redis.call('SISMEMBER', KEYS[3], fields[1])
  status = redis.call('HGET', ARGV[1] .. fields[1], 'status') or ''
end
return {redis.call('LLEN', KEYS[2]), marked, status, unpack(fields)}
"""


# Lua: whether the record's status `rec[1]` is an end.
_ENDED = "(" + " or ".join(f"rec[1] == '{s.decode()}'" for s in sorted(TERMINAL)) + ")"

# An ended turn's move, decided above (turns.py), kept only while the session's current
# turn and its line's length are as read; else nothing changes and MOVE answers what they
# are now, for the node to decide again (a length of -1: nothing read yet). 'advance':
# the line's first turn takes the place and goes into its stream (one held for its time,
# a delay's, waits in the due set: due.py moves it when due); 'rest': the session
# idles, to expire session_ttl from now; 'leave': the turn leaves the line; '': no move
# (its session ended, or moved already). The turn is then no longer marked ended.
# A marker no end wrote (its record gone: expired, or a Redis writer's id; or a turn that
# has not ended: a Redis writer's) is unmarked and moves nothing, else it would stay
# marked for ever, or start a line's next turn beside a running one, or strand a waiting
# one out of its line and every stream.
# KEYS: the turn's record, the turns ended (Keys.turns_ended); ARGV: the turn's id, the
#   move, the current turn as read ('' none), the line's length as read
# -> 1 moved, 0 not marked (moved already, or its record gone), an error naming a turn
#    marked that has not ended, or {MOVED, the current turn ('' none), the line's length,
#    the turn's place in the line (nil: not in it)}
MOVE = f"""
if redis.call('SISMEMBER', KEYS[2], ARGV[1]) == 0 then return 0 end
local rec = redis.call('HMGET', KEYS[1], 'status', 'agent', 'session', 'stenant')
if not rec[1] or not rec[2] or not rec[3] or not {_ENDED} then
  redis.call('SREM', KEYS[2], ARGV[1])
  if not rec[1] then return 0 end
  if not rec[2] or not rec[3] then
    return redis.error_reply('it is marked ended but its record names no session')
  end
  return redis.error_reply('it is marked ended but is ' .. rec[1] .. ': not moved')
end
local agent, name, tenant = rec[2], rec[3], rec[4]
{_NAMES}
local cur = redis.call('HGET', skey, 'cur') or ''
local waiting = redis.call('LLEN', sline)
if cur ~= ARGV[3] or waiting ~= tonumber(ARGV[4]) then
  return {{{MOVED}, cur, waiting, redis.call('LPOS', sline, ARGV[1])}}
end
if ARGV[2] == 'advance' then
  local nxt = redis.call('LPOP', sline)
  local record = prefix .. 'task:' .. nxt
  redis.call('HSET', skey, 'cur', nxt, 'last', now)
  -- (where the turn given the place waits is its record's: its time, not its session's)
  local due_at = redis.call('ZSCORE', prefix .. 'due', nxt)
  if due_at then
    redis.call('HSET', record, 'entry', '')  -- (DUE moves it into its stream when due)
  else
    local home = redis.call('HGET', record, 'stream')
    redis.call('HSET', record, 'entry', redis.call('XADD', home, '*', 'task', nxt))
    redis.call('HDEL', record, 'not_before')
    {_stick('home')}
  end
elseif ARGV[2] == 'rest' then
  local ttl = tonumber(redis.call('HGET', skey, 'ttl')) or 0
  redis.call('HSET', skey, 'cur', '', 'last', now)
  if ttl > 0 then
    local ms = math.max(1, math.floor(ttl * 1000))
    redis.call('PEXPIRE', skey, ms)
    redis.call('PEXPIRE', shist, ms)
    redis.call('PEXPIRE', slabels, ms)
    redis.call('PEXPIRE', sstarted, ms)
    redis.call('ZADD', sall, now + ttl, name)
  end
elseif ARGV[2] == 'leave' then
  redis.call('LREM', sline, 1, ARGV[1])
end
redis.call('SREM', KEYS[2], ARGV[1])
return 1
"""


# SUBMIT of a task naming a session, its move and a new session's bounds decided above
# (turns.py, sessions.over): kept only while the session's turns (its current turn, its
# line's length) are as read and a new one's live sessions counted have not grown (else
# MOVED: read and decided again); the task goes into the stream when it starts (one held
# for its time into the due set, as a plain task: its turn is its place in the session's
# order, its start its time's), else into the line, which max_queue bounds (-1).
# KEYS: SUBMIT's; ARGV: SUBMIT's (11), then the session's name, its ttl (seconds, 0:
#   none; '': the hash's own), what a new session was admitted on (JSON: each live
#   sessions' set and its count as read, COUNTS'), its agent's tenant, the move ('start'
#   or 'wait'), the current turn as read ('-': no session), the line's length
SUBMIT_FIRST = f"""
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local agent, name, tenant = ARGV[2], ARGV[12], ARGV[15]
{_NAMES}
local cur = redis.call('HGET', skey, 'cur') or '-'
if cur ~= ARGV[17] or redis.call('LLEN', sline) ~= tonumber(ARGV[18]) then
  return {MOVED}
end
if ARGV[17] == '-' then
  {_prune('sall', 'sbytes')}
  for _, seen in ipairs(cjson.decode(ARGV[14])) do
    if redis.call('ZCOUNT', seen[1], now, '+inf') > seen[2] then return {MOVED} end
  end
end
local most_waiting = tonumber(ARGV[9])
if ARGV[16] == 'wait' and most_waiting > 0 and tonumber(ARGV[18]) >= most_waiting then
  return -1
end
"""
ENTRY = "local entry = '0-0'\nif ARGV[16] == 'start' then entry = {xadd} end"
SUBMIT_THEN = """
redis.call('HSET', KEYS[1], 'session', name, 'stenant', tenant)
if ARGV[16] == 'start' then
  redis.call('HSET', skey, 'cur', ARGV[1])
  if not due then STICK end
else
  redis.call('RPUSH', sline, ARGV[1])
end
if ARGV[17] == '-' then redis.call('HSET', skey, 'created', now, 'tasks', 0) end
redis.call('HSET', skey, 'last', now)
if ARGV[13] ~= '' then redis.call('HSET', skey, 'ttl', ARGV[13]) end
redis.call('HINCRBY', skey, 'tasks', 1)
redis.call('RPUSH', shist, ARGV[1])
redis.call('LTRIM', shist, -KEEP, -1)
redis.call('PERSIST', skey)
redis.call('PERSIST', shist)
redis.call('PERSIST', slabels)
redis.call('PERSIST', sstarted)
redis.call('ZADD', sall, 'inf', name)
""".replace("STICK", _stick("KEYS[2]")).replace("KEEP", str(KEEP_HISTORY))

# A checkpoint's read (clustersessions.checkpoint), when a bound counts its states' bytes:
# its session's state's bytes, then each agent's live sessions' states' bytes together
# (their expired ones out of each first, as CHECKPOINT does), by Redis's clock.
# KEYS: the session's agent's sizes, then each agent's live sessions and their sizes;
# ARGV: the session's name -> {its bytes, each agent's}
SIZES = f"""
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local out = {{tonumber(redis.call('HGET', KEYS[1], ARGV[1])) or 0}}
for i = 2, #KEYS, 2 do
  local live, sizes = KEYS[i], KEYS[i + 1]
  {_prune('live', 'sizes')}
  local held = 0
  for _, b in ipairs(redis.call('HVALS', sizes)) do held = held + tonumber(b) end
  out[#out + 1] = held
end
return out
"""

# session/checkpoint of a running cluster task: fenced by the claim's token; its bound
# decided above (sessions.over, on what the node last read by SIZES or kept since), kept
# only while what it was decided on holds: its session's bytes as known, and no agent's
# live states' bytes grown past them (a count that fell keeps it: the decision holds a
# fortiori; decision 2231).
# KEYS: task; ARGV: token, the state (its MAC, a space, its JSON), its size in bytes, what
#   it was decided on (JSON: the session's bytes, then each agent's bytes as known, [] when
#   no bound counts them), the tenant it was signed for (the checkpointing node's agent's)
#   -> 1 written, 0 not this claim's (fenced), {-1} read and decided again (what it was
#   decided on changed), or {-3, the session's tenant} when it is not the one signed for
CHECKPOINT = f"""
local rec = redis.call('HMGET', KEYS[1], 'fence', 'status', 'agent', 'session', 'stenant')
if rec[1] ~= ARGV[1] or not {on_worker('rec[2]')} or not rec[4] then return 0 end
local agent, name, tenant = rec[3], rec[4], rec[5]
if tenant and tenant ~= ARGV[5] then return {{-3, tenant}} end
{_NAMES}
local read = cjson.decode(ARGV[4])
if #read[2] > 0 then
  if (tonumber(redis.call('HGET', sbytes, name)) or 0) ~= read[1] then return {{-1}} end
  for _, seen in ipairs(read[2]) do
    local owned_by = tenant and (tenant .. ':' .. seen[1]) or seen[1]
    local live, sizes = prefix .. 'sessions:' .. owned_by, prefix .. 'sbytes:' .. owned_by
    {_prune('live', 'sizes')}
    local held = 0
    for _, b in ipairs(redis.call('HVALS', sizes)) do held = held + tonumber(b) end
    if held > seen[2] then return {{-1}} end
  end
end
redis.call('HSET', skey, 'state', ARGV[2])
redis.call('HSET', sbytes, name, ARGV[3])
return 1
"""


# (A fragment of scripts' claim function.) A task of a session is given its name and its
# state (`sess`, `state`, else false); the session remembers the claiming incarnation for
# its next turn (`_stick`), unless it has ended (no hash is made again).
CLAIM_TURN = """local sess, state = false, false
  local agent_name = redis.call('HMGET', task, 'agent', 'session', 'stenant')
  if agent_name[2] then
    sess = agent_name[2]
    local owned = agent_name[3] and (agent_name[3] .. ':' .. agent_name[1]) or agent_name[1]
    local skey = prefix .. 'sess:' .. owned .. ':' .. agent_name[2]
    state = redis.call('HGET', skey, 'state') or false
    if redis.call('HEXISTS', skey, 'cur') == 1 then redis.call('HSET', skey, 'node', c[1]) end
  end"""


# (A fragment of scripts.READ_CLAIM.) The turns given to this incarnation (its list,
# ARGV[11]) claimed first, up to `want`, each only while its record is still queued under
# the entry given, pending with this consumer, in one of this read's streams: another item
# (forged, or queued again meanwhile) is dropped, touching nothing.
# -> `sticky`: how many were claimed.
STICKY_CLAIMS = f"""local sticky = 0
while want > 0 and ARGV[11] do
  local item = redis.call('LPOP', ARGV[11])
  if not item then break end
  local entry, id = string.match(item, '^(%d+%-%d+) (%S+)$')
  local home = id and redis.call('HGET', prefix .. 'task:' .. id, 'stream')
  local at = nil
  for s = 2, #KEYS do
    if KEYS[s] == home then at = s end
  end
  local rec = at and redis.call('HMGET', prefix .. 'task:' .. id, 'status', 'entry')
  local mine = at and rec[2] == entry
    and #redis.call('XPENDING', home, '{GROUP}', entry, entry, 1, ARGV[1]) == 1
  -- (only a turn still queued under the entry given: claim() acknowledges and deletes the
  -- entry of any other, which a forged item naming a running task's would have it do)
  if mine and rec[1] == 'queued' then
    local got = claim_reply(at - 2, entry, id, claim(KEYS[1], home, entry, id, prefix, c))
    if got then
      -- its entry's idle time from now, as a read's claim has it: counted from its
      -- delivery, the orphan pass could take a turn claimed just now for one lost
      redis.call('XCLAIM', home, '{GROUP}', ARGV[1], 0, entry, 'JUSTID')
      out[#out + 1] = got
      want = want - 1
      sticky = sticky + 1
    end
  elseif mine and {_ENDED} then
    -- a turn moved into the stream though it had ended (cancelled in its line as the
    -- turn before it ended: its node then moves its session again) is let go
    redis.call('XACK', home, '{GROUP}', entry)
    redis.call('XDEL', home, entry)
  end
end"""


# sessions.end of a cluster session, decided above (turns.py): its keys deleted, only
# while its current turn and its line's length are as read (else nothing: read and
# decided again; a turn's end moves the next one of its line in, and would find no
# session).
# KEYS: the session's hash, line, history, its agent's sessions (sorted set) and bytes
#   (hash); ARGV: the session's name, the task records' key prefix, its current turn and
#   its line's length as read ('' no current turn, as a view reads a hash without one:
#   else such a hash, a Redis writer's, would be read and refused forever) -> 1 ended, 0
#   not as read
END = """
local cur = redis.call('HGET', KEYS[1], 'cur') or ''
if cur ~= ARGV[3] or redis.call('LLEN', KEYS[2]) ~= tonumber(ARGV[4]) then return 0 end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
local prefix = string.sub(ARGV[2], 1, #ARGV[2] - 5)  -- (its labels: supervisor/labels.py)
redis.call('DEL', prefix .. 'labels:session:' .. string.sub(KEYS[1], #prefix + 6))
redis.call('DEL', prefix .. 'labels:started:session:' .. string.sub(KEYS[1], #prefix + 6))
redis.call('ZREM', KEYS[4], ARGV[1])
redis.call('HDEL', KEYS[5], ARGV[1])
return 1
"""
