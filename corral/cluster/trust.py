"""The cluster key (docs/cluster.md#securing-redis): records in Redis that decide what a
node runs or what a client is told a task answered carry an HMAC-SHA256 made with a key
Redis never holds. Each MAC covers the record's kind, the cluster's name and the name it
is kept under, so it does not verify under another. Without a key_file (`insecure =
true`) every record is taken as it is.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path

from ..supervisor.config import ConfigError

MIN_KEY = 32  # bytes of a key file (after trailing white space): `head -c 32 /dev/urandom`
MAX_KEY = 4096
# refusals said in the log: once per record, and at most LINES of them a WINDOW (a writer
# making endless records is counted, not echoed)
LINES, WINDOW = 10, 60.0
_DOMAIN = b"corral-cluster-v1"

# what a record is: each kind's MAC is its own (a table's never verifies as an outcome)
AGENT = b"agent"  # a cluster agent's table (keys.cluster_agents), by agent name
REVISION = b"revision"  # a kept revision's table (keys.history), by agent name
DECLARED = b"declared"  # a table a node's file declared (keys.declared), by node, agent
OUTCOME = b"outcome"  # a task's outcome (record and outcomes stream), by task and fence
STEP = b"step"  # a running task's step (keys.steps, cluster/steps.py), by task and field
SESSION = b"session"  # a session's state (keys.session, cluster/clustersessions.py), by agent, name
CALL = b"call"  # a durable call's record and step rows (cluster/clustercalls.py), by call
# a spawn's row (by parent, key and child) and a task's place in its spawn tree (by task)
SPAWN = b"spawn"
# whose a task is, by task and agent: a Redis writer does not move a task into another
# tenant's sight
TENANT = b"tenant"
ASK = b"ask"  # an ask of a cluster task (its record and its end), by ask id
PIN = b"pin"  # a tool's pin (keys.tool_pins, cluster/toolpins.py), by server and tool
PUSH = b"push"  # a task's push config (keys.push, cluster/clusterpush.py), by task and id
# a chunk of a task's live output (keys.output, cluster/clusteroutput.py), by task and position
OUTPUT = b"output"
# each kind as `corral stats` counts them, and as the log says one
KINDS = {AGENT: ("agents", "agent"), REVISION: ("revisions", "revision"),
         DECLARED: ("declared", "declared table"), OUTCOME: ("outcomes", "outcome"),
         STEP: ("steps", "step"), SESSION: ("sessions", "session state"),
         CALL: ("calls", "call"), SPAWN: ("spawns", "spawn"), TENANT: ("tenants", "tenant"),
         ASK: ("asks", "ask"), PIN: ("pins", "tool pin"),
         PUSH: ("pushes", "push config"), OUTPUT: ("outputs", "output chunk")}

NO_KEY_WARNING = ("[cluster] has no key_file: anyone who can write to the cluster's "
                  "Redis can run commands on every node (as the agents' users, root by "
                  "default) and forge task outcomes (docs/cluster.md#securing-redis)")


def load_key(path: Path) -> bytes:
    """The key in `path`: a regular file owned by this process's user, readable by it
    alone, of at least MIN_KEY bytes (else ConfigError)."""
    where = f"cluster.key_file: {path}"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise ConfigError(f"{where}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"{where}: not a regular file")
        if st.st_uid != os.geteuid():
            raise ConfigError(f"{where}: owned by uid {st.st_uid}, not by this daemon's "
                              f"user (uid {os.geteuid()}): chown it")
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o077:
            raise ConfigError(f"{where}: mode {mode:04o} lets others read or change it: "
                              "chmod 0600 (or 0400)")
        if st.st_size > MAX_KEY:
            raise ConfigError(f"{where}: {st.st_size} bytes, more than a key "
                              f"({MAX_KEY} at most)")
        data = os.read(fd, MAX_KEY + 1).rstrip()
    finally:
        os.close(fd)
    if len(data) < MIN_KEY:
        raise ConfigError(f"{where}: {len(data)} bytes, too short for a key (at least "
                          f"{MIN_KEY}: `head -c 32 /dev/urandom | base64 > FILE`)")
    return data


def _mac(key: bytes, parts: tuple[bytes | str, ...]) -> str:
    """Each part with its length before it (no two lists of parts frame alike), fed to
    the HMAC as they are: an output is not copied."""
    h = hmac.new(key, _DOMAIN, hashlib.sha256)
    for p in parts:
        b = p.encode() if isinstance(p, str) else p
        h.update(len(b).to_bytes(8, "big"))
        h.update(b)
    return h.hexdigest()


class Trust:
    """The node's key (None: no key_file) and what it refused."""

    def __init__(self, key: bytes | None, cluster: str,
                 report: Callable[[str], None]) -> None:
        self.key = key
        self.cluster = cluster
        self.report = report
        self.refused = dict.fromkeys((counted for counted, _ in KINDS.values()), 0)
        self._said: set[tuple[bytes, str, str]] = set()  # records already logged
        self._window = (0.0, 0)  # (its start, lines said in it)
        self._unsaid = 0  # refusals not said since the last line

    @property
    def fingerprint(self) -> str:
        """Says which key a node has, not the key ("" without one): nodes whose
        fingerprints differ refuse each other's records (`corral nodes`)."""
        if self.key is None:
            return ""
        return hmac.new(self.key, _DOMAIN + b"fingerprint", hashlib.sha256).hexdigest()[:16]

    def sign(self, kind: bytes, *parts: bytes | str) -> str:
        return "" if self.key is None else _mac(self.key, (kind, self.cluster, *parts))

    def valid(self, mac: bytes | str | None, kind: bytes, *parts: bytes | str) -> bool:
        if self.key is None:
            return True
        if isinstance(mac, bytes):
            mac = mac.decode(errors="replace")
        return mac is not None and mac != "" and hmac.compare_digest(
            mac.encode(), self.sign(kind, *parts).encode())

    def outcome(self, task_id: str, fence: bytes | str | int, status: bytes | str,
                output: bytes, error: bytes) -> str:
        """The MAC of a task's outcome, bound to its id and the fence token of the
        attempt that wrote it ("0": a takeover's or a cancel's end)."""
        return self.sign(OUTCOME, task_id, str(fence) if isinstance(fence, int) else fence,
                         status, output, error)

    def outcome_valid(self, mac: bytes | str | None, task_id: str,
                      fence: bytes | str | None, status: bytes | str, output: bytes,
                      error: bytes) -> bool:
        if self.key is None:
            return True
        return fence is not None and self.valid(mac, OUTCOME, task_id, fence, status,
                                                output, error)

    def tenant_of(self, task_id: str, agent: bytes, tenant: bytes | None,
                  mac: bytes | None) -> str:
        """The tenant a task's record names, when its MAC verifies; else "": the
        operator's record alone (refused and said when it names one)."""
        if not tenant:
            return ""
        if not self.valid(mac, TENANT, task_id, agent, tenant):
            self.refuse(TENANT, f"of task {task_id}", mac,
                        "the task is shown to the operator alone")
            return ""
        return tenant.decode(errors="replace")

    def refuse(self, kind: bytes, name: str, mac: bytes | str | None, what: str) -> None:
        """A record without a valid MAC: counted and said once per record however often
        it is read (`what`: what was not done with it)."""
        mark = (kind, name, mac.decode(errors="replace") if isinstance(mac, bytes)
                else mac or "")
        if mark in self._said:
            return
        counted, shown = KINDS[kind]
        self.refused[counted] += 1
        if len(self._said) > 10_000:  # bounded: a writer making endless records
            self._said.clear()
        self._said.add(mark)
        now = time.monotonic()
        start, said = self._window
        if now - start >= WINDOW:
            start, said = now, 0
        if said >= LINES:
            self._unsaid += 1
            self._window = (start, said)
            return
        self._window = (start, said + 1)
        more = f" ({self._unsaid} more refused records not said)" if self._unsaid else ""
        self._unsaid = 0
        self.report(f"cluster: refused {shown} {name} from Redis: "
                    f"{'no MAC' if not mark[2] else 'its MAC does not verify'} with this "
                    f"node's cluster key; {what} (a Redis writer without the key made or "
                    f"changed it, or the nodes' key files differ: see `corral nodes`)"
                    f"{more}")

    def status(self) -> dict[str, object]:
        return {"key": self.fingerprint or None, "refused": dict(self.refused)}
