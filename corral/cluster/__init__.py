"""The multi-node mode on Redis (DESIGN.md section 11, docs/cluster.md): corral nodes
share tasks through an engine operators already run.

keys.py        the names of everything kept in Redis
scripts.py     the Lua scripts: submit, claim, fenced finish and progress, takeover,
               join and beat
connection.py  the Redis client (redis-py asyncio, hiredis), errors as messages
membership.py  liveness keys with a TTL, incarnations, self-fencing, `corral nodes`
records.py     a task's record read back as `corral task ID` shows it
queue.py       ClusterQueue (the engine's Queue on a node) and ClusterTask
clustertasks.py submit anywhere, `corral task ID`, waiting for an outcome
puller.py      reading an agent's streams while a replica has a free slot; claims
outbox.py      outcomes written through the fence, kept while Redis is away
reaper.py      takeover from dead incarnations (never by idle time)
node.py        ClusterNode, composing them
"""
