"""The configuration schema: msgspec Structs are the single source of truth (reading a
file into them, and what they cannot say of themselves, is configload.py).

The same Structs validate the TOML file, the `agents.add` control method's params and the
Python API, so a key means one thing everywhere. Key names are fixed by DESIGN.md
section 10; add keys freely, rename none.
"""

from __future__ import annotations

import os
import pwd
import re
import shlex
import signal
from typing import Annotated, Any, Literal

import msgspec
import msgspec.inspect
from msgspec import Meta

from .. import redact
from ..taskoptions import RetryOutcome
from .schedule import Cron, ScheduleError, ScheduleSpec
from .teams.definition import TeamSpec
from .workflows.definition import WorkflowSpec

MIB = 1024 * 1024
DEFAULT_TENANT = "default"  # the tenant of everything that names none
# a session idle this long is dropped (seconds; an agent's own, or of no agent now)
DEFAULT_SESSION_TTL = 7 * 86400

NonNeg = Annotated[float, Meta(ge=0)]
NonNegInt = Annotated[int, Meta(ge=0)]
Positive = Annotated[float, Meta(gt=0)]
PositiveInt = Annotated[int, Meta(ge=1)]
# an agent's max_step_bytes unless it says, and the most a tenant's caller may give one
# when its tenant sets none (daemon/privilege.py)
STEP_BYTES = 64 * 1024 * 1024
# an agent's max_stream_bytes unless it says (one task's live output: tasks/output.py)
STREAM_BYTES = 16 * 1024 * 1024
# an agent's retry_lost unless it says: a task survives two losses to infrastructure (a
# crash in the recovery from a crash among them) with no retries written
RETRY_LOST = 2


ExitCode = Annotated[int, Meta(ge=0, le=255)]
# the signals a stop may send first (supervisord's stopsignal takes these)
StopSignal = Literal["TERM", "INT", "QUIT", "HUP", "KILL", "USR1", "USR2"]



class ConfigError(Exception):
    """Invalid configuration; the message names the file, the key path and the problem."""


class Limits(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, omit_defaults=True):
    """Resource caps; 0 means no cap."""

    memory_mb: NonNegInt = 0  # RLIMIT_AS
    rss_mb: NonNegInt = 0  # soft: orderly restart above it
    cpu_seconds: NonNegInt = 0  # RLIMIT_CPU
    cpu_percent: NonNeg = 0  # sampled; orderly restart when above it for a sustained period
    open_files: NonNegInt = 0  # RLIMIT_NOFILE
    processes: NonNegInt = 0  # RLIMIT_NPROC (per user; root ignores it)
    file_size_mb: NonNegInt = 0  # RLIMIT_FSIZE
    core_mb: NonNegInt = 0  # RLIMIT_CORE; 0 means no core files at all
    # the process's nice value, set before the agent's first instruction (its tenant's
    # cpu_weight gives one where no cgroup can weigh CPU: caps.nice_for_weight)
    nice: Annotated[int, Meta(ge=0, le=19)] = 0


class ProcessSpec(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, omit_defaults=True):
    """What agents and MCP servers share: a supervised, capped, restartable process."""

    command: list[str] | str
    env: dict[str, str] = {}
    cwd: str | None = None
    user: str | None = None
    group: str | None = None
    restart: Literal["always", "on-failure", "never"] = "on-failure"
    max_restarts: NonNegInt = 5
    restart_window: Positive = 60.0
    backoff_initial: Positive = 0.1
    backoff_max: Positive = 30.0
    stable_after: NonNeg = 30.0
    start_timeout: Positive = 10.0
    stop_timeout: Positive = 10.0
    heartbeat_timeout: Positive | None = None  # default: the supervisor's
    limits: Limits = msgspec.field(default_factory=Limits)
    # the exit statuses that are a clean exit (supervisord's exitcodes, PM2's
    # stop_exit_codes, systemd's SuccessExitStatus): `restart = "on-failure"` restarts
    # after any other
    exit_codes: tuple[ExitCode, ...] = (0,)
    # the start window (supervisord's startsecs/startretries, PM2's min_uptime): a
    # process is ready only once up this long, and one that exits sooner is a failed
    # start, retried start_retries times in a row before the replica is failed; 0: none
    start_secs: NonNeg = 0.0
    start_retries: NonNegInt = 3
    # what a stop sends in place of SIGTERM (supervisord's stopsignal, systemd's
    # KillSignal); SIGKILL follows after stop_timeout as ever
    stop_signal: StopSignal = "TERM"
    # this process's own log file (supervisord's stdout_logfile) instead of
    # LOG_DIR/NAME.log: an absolute path, or /dev/stdout or /dev/stderr for the daemon's
    # own (a container's `docker logs`); rotated at log_max_bytes, log_backups kept
    # (None: [supervisor]'s); the operator's to name (privilege.py)
    log_file: str | None = None
    log_max_bytes: PositiveInt | None = None
    log_backups: NonNegInt | None = None
    # this process's log file rotated also by time (seconds of the wall clock's periods:
    # 86400 at midnight UTC) and its rotated copies gzipped (None: [supervisor]'s)
    log_rotate_every: NonNeg | None = None
    log_compress: bool | None = None
    # files of KEY=VALUE lines read as each process starts, under `env` (envfiles.py):
    # absolute paths, `-/path` one that may be absent; the operator's to name
    env_file: list[str] = []

    def __post_init__(self) -> None:
        if self.log_file is not None and not self.log_file.startswith("/"):
            raise ValueError(f"log_file {self.log_file!r} is not an absolute path (or "
                             "/dev/stdout, /dev/stderr)")
        relative = next((p for p in self.env_file
                         if not os.path.isabs(p.removeprefix("-"))), None)
        if relative is not None:
            raise ValueError(f"env_file {relative!r} is not an absolute path")

    @property
    def stop_signum(self) -> signal.Signals:
        """The signal a stop sends first (`stop_signal`)."""
        return signal.Signals[f"SIG{self.stop_signal}"]

    def argv(self) -> list[str]:
        try:
            argv = (shlex.split(self.command) if isinstance(self.command, str)
                    else list(self.command))
        except ValueError as exc:  # an unclosed quote, a trailing backslash
            raise ConfigError(f"cannot be split into words as a shell would: {exc}") from None
        if not argv:
            raise ConfigError("command is empty")
        return argv


class Autoscale(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, omit_defaults=True):
    """[agents.NAME.autoscale]: the replica count follows the load (supervisor/autoscale.py,
    docs/elastic.md); with it, `replicas` is the count the agent starts with."""

    min_replicas: NonNegInt = 1  # 0: the agent sleeps after idle_after, a task wakes it
    max_replicas: PositiveInt = 1
    target_load: Positive = 1.0  # running + queued tasks per replica
    upscale_delay: NonNeg = 2.0  # the panic window: more load held this long scales up
    downscale_delay: NonNeg = 120.0  # the stable window: less load held this long scales down
    max_step_up: NonNegInt = 0  # replicas added by one decision at most; 0: no bound
    idle_after: NonNeg = 300.0  # with min_replicas = 0: seconds without work before sleeping

    def within(self, replicas: int) -> int:
        """`replicas` brought within [min_replicas, max_replicas]."""
        return min(max(replicas, self.min_replicas), self.max_replicas)


class CheckSpec(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, omit_defaults=True):
    """[agents.NAME.health.readiness] / [...liveness]: one health check (health.py)."""

    interval: Positive = 10.0  # seconds from the end of one check to the next
    timeout: Positive = 5.0  # a check not answered (a command not exited) by then fails
    failures: PositiveInt = 3  # consecutive failures that make the check failed
    successes: PositiveInt = 1  # consecutive passes that make it passing again
    # the worker's check (`health/check`), all of its checks or the one named here ...
    check: str | None = None
    # ... or a command instead, run beside the worker: exit status 0 passes
    command: list[str] | None = None
    # ... or a connection from the daemon: "HOST:PORT" that accepts one (tcp), or an
    # http:// or https:// URL whose GET answers 200-399 (http) (probes.py)
    tcp: str | None = None
    http: str | None = None
    # what a failed check does (default: readiness drains, liveness restarts)
    recovery: Literal["restart", "drain", "exec", "event"] | None = None
    exec: list[str] | None = None  # recovery = "exec": the command run

    @property
    def probe(self) -> bool:
        """Whether the check is corral's own (a command, tcp or http), not the worker's."""
        return self.command is not None or self.tcp is not None or self.http is not None

    def problem(self) -> tuple[str, str] | None:
        """(the key, what is wrong with it), or None."""
        given = [k if k != "check" else "check (the worker's)"
                 for k in ("check", "command", "tcp", "http") if getattr(self, k) is not None]
        if len(given) == 2:
            return "", f"give either {given[0]} or {given[1]}, not both"
        if len(given) > 2:
            return "", (f"give one of check (the worker's), command, tcp or http, not "
                        f"{', '.join(given[:-1])} and {given[-1]}")
        if self.command is not None and not self.command:
            return "command", "is empty"
        if self.tcp is not None and tcp_address(self.tcp) is None:
            return "tcp", f'{self.tcp!r} is not "HOST:PORT" (a port of 1-65535)'
        if self.http is not None and not re.match(r"^https?://[^/]", self.http):
            return "http", f"{self.http!r} is not an http:// or https:// URL"
        if self.recovery == "exec" and not self.exec:
            return "exec", 'recovery = "exec" needs exec = [the command to run]'
        if self.exec is not None and self.recovery != "exec":
            return "exec", 'is run only with recovery = "exec"'
        return None


def tcp_address(text: str) -> tuple[str, int] | None:
    """("host", port) from "HOST:PORT" ("[::1]:PORT" for IPv6), or None."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isascii() or not port.isdigit():
        return None
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return (host, int(port)) if host and 0 < int(port) < 65536 else None


class HealthSpec(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, omit_defaults=True):
    """[agents.NAME.health]: readiness gates dispatch, liveness restarts (health.py)."""

    # seconds after Ready in which failed checks are not counted (a slow warm-up)
    start_period: NonNeg = 0.0
    readiness: CheckSpec | None = None
    liveness: CheckSpec | None = None

    def check(self) -> None:
        """Raises ConfigError naming the key (below `health`) and the problem."""
        if self.readiness is None and self.liveness is None:
            raise ConfigError("health: give readiness, liveness or both")
        for kind in ("readiness", "liveness"):
            c: CheckSpec | None = getattr(self, kind)
            bad = c.problem() if c is not None else None
            if bad is not None:
                key = ".".join(k for k in ("health", kind, bad[0]) if k)
                raise ConfigError(f"{key}: {bad[1]}")


class AgentSpec(ProcessSpec, kw_only=True, omit_defaults=True):
    name: str = ""
    # "corral": a worker speaking the protocol on its stdio (docs/protocol.md); "none": any
    # program (a web server, a script): supervised alike, but it takes no tasks, and its
    # stdout is a log like its stderr (supervisor/plain.py)
    protocol: Literal["corral", "none"] = "corral"
    # a plain program's readiness: "started" (once spawned; the default) or "notify" (once
    # it sends READY=1 to $NOTIFY_SOCKET, within start_timeout); a readiness check, if
    # any, must pass besides
    ready: Literal["started", "notify"] | None = None
    # a plain program that must send WATCHDOG=1 to $NOTIFY_SOCKET at least this often
    # once ready, else it is restarted as hung; 0: no watchdog
    watchdog_sec: NonNeg = 0
    replicas: NonNegInt = 1
    autostart: bool = True
    # start order (startorder.py): agents whose replicas are up before this one starts,
    # and which stop after it
    after: list[str] = []
    # as `after`, and this agent is stopped when one of them fails for good (restarts
    # given up), and not started once one has (systemd's Requires=, dependents.py)
    requires: list[str] = []
    # the daemon stops (exit status 1) when this agent fails for good: a container's
    # main program (supervisord's event listener that kills it, dependents.py)
    fatal: bool = False
    max_concurrent_tasks: PositiveInt = 1
    max_queue: NonNegInt = 1000
    task_timeout: Positive = 300.0
    cancel_grace: Positive = 5.0  # after task/cancel, then the worker is hung
    # how long `corral pause` waits for the kernel to say a replica is frozen (or
    # stopped), after which it answers with a note that it was not seen so
    pause_timeout: Positive = 2.0
    # a stop drains: the agent's running tasks have this long to finish before they are
    # cancelled and handed to the next daemon; None: [supervisor] drain_timeout
    drain_timeout: NonNeg | None = None
    # a task's attempt that ends in one of `retry_on` runs again, up to `retries` times
    # (tasks/retry.py, docs/tasks.md): after retry_backoff seconds, doubled per retry up
    # to retry_backoff_max, with retry_jitter a random part of it (0: at once)
    retries: NonNegInt = 0
    retry_on: tuple[RetryOutcome, ...] = ("lost",)
    # a task's attempt lost to infrastructure (its worker killed from outside or hung,
    # the daemon restarted, its node died) runs again while the task has had no more
    # lost attempts than this, with no `retries` spent; 0: at most once, a lost task is
    # never retried (tasks/taskmachine.py, docs/durable.md)
    retry_lost: NonNegInt = RETRY_LOST
    retry_backoff: NonNeg = 0.0
    retry_backoff_max: NonNeg = 600.0
    retry_jitter: bool = True
    rate_per_minute: NonNeg = 0
    max_tool_calls_per_task: NonNegInt = 50
    # durable work (docs/durable.md): a retried task's tool calls are answered from its
    # step journal while they match; `replay = false` runs them all again, `replay_tools`
    # (patterns of SERVER__TOOL) those it names (a clock, a random source); a task's
    # journaled results past max_step_bytes refuse its next call (0: no bound)
    replay: bool = True
    replay_tools: list[str] = []
    max_step_bytes: NonNegInt = STEP_BYTES
    # a task's live output (`task/output`, docs/streams.md) past this many bytes is not
    # kept, and its stream says so (0: no bound)
    max_stream_bytes: NonNegInt = STREAM_BYTES
    # approvals (docs/approvals.md): its tasks' tool calls matching one of `approve`
    # (patterns of SERVER__TOOL) wait for a person's decision, at most approve_timeout
    # seconds (0: no deadline); a denial, and a timeout, is a tool error the agent sees
    # ("error") or fails the task ("fail")
    approve: list[str] = []
    approve_timeout: NonNeg = 3600.0
    on_deny: Literal["error", "fail"] = "error"
    on_timeout: Literal["error", "fail"] = "error"
    # its tasks' model calls through the model gateway that wait for a person too: those
    # of the models `approve_models` names (globs of the gateway's model names), and
    # those whose cost may pass approve_cost_over dollars (0: none), their input's
    # tokens estimated and their max output tokens at the model's prices
    approve_models: list[str] = []
    approve_cost_over: NonNeg = 0.0
    # a task that has waited this many seconds for a person gives its attempt (its slot,
    # its process) back, and resumes by replay when what it asked has ended; 0: it keeps
    # them (docs/approvals.md#waiting-without-a-process)
    suspend_after: NonNeg = 0.0
    # code-first orchestration (task/spawn, docs/workflows.md#spawn): the agents (globs)
    # its tasks may start children of, how deep children may spawn, how many per task
    spawns: list[str] = []
    max_spawn_depth: NonNegInt = 3
    max_children: NonNegInt = 1000
    # a session (tasks.run's `session`) idle this many seconds is dropped, state and
    # history: its next task starts it afresh (0: sessions never expire)
    session_ttl: NonNeg = DEFAULT_SESSION_TTL
    # its live sessions: a task naming one more is refused, a checkpoint that would take
    # their states past max_session_bytes too (0: no bound; docs/durable.md#sessions)
    max_sessions: NonNegInt = 10_000
    max_session_bytes: NonNegInt = 1024 * 1024 * 1024
    tools: list[str] = []
    state_ttl: NonNeg = 0
    config: dict[str, Any] = {}  # passed to the worker in `initialize`
    # warm starts (supervisor/zygote.py): fork from a zygote that has imported the worker
    # SDK (warm) and these modules (preload) instead of starting an interpreter
    warm: bool = False
    preload: list[str] = []
    # rolling replacement (restart --rolling, reload, rollback, a deploy): a new process
    # takes tasks only once it has been Ready for min_healthy_time seconds, which must
    # happen within healthy_deadline seconds of its start
    min_healthy_time: NonNeg = 0
    healthy_deadline: Positive = 60.0
    # an agent package (corral deploy, docs/packages.md): the release it runs, as its
    # directory (its venv first on PATH, its source the cwd), and the package's version
    release: str | None = None
    version: str | None = None
    keep_releases: PositiveInt = 5  # releases of the package kept for rollback
    # development mode: restart (rolling) when a file matching one of these globs, under
    # the agent's cwd, changes
    watch: list[str] = []
    # a restart on a schedule (daemon/cronrestart.py), five cron fields (UTC), as PM2's
    # cron_restart: graceful, as `corral restart` is; None: none
    restart_cron: str | None = None
    # elastic fleets (docs/elastic.md): the replica count follows the load; an idle agent
    # hibernates (checkpoint, then stop) after hibernate_after seconds; 0: never
    autoscale: Autoscale | None = None
    hibernate_after: NonNeg = 0
    # isolation (supervisor/sandbox.py, docs/sandbox.md); unset: the tenant's, else
    # "none" and "host" (see `isolation`)
    sandbox: Literal["none", "bwrap"] | None = None
    network: Literal["host", "none", "gateway"] | None = None
    sandbox_paths: list[str] = []  # read-only in the sandbox besides what corral binds
    # the boundary enforced (docs/sandbox.md#egress): "gateways" or "none" runs it
    # sandboxed with only corral's gateways (or nothing) to connect to; the stricter of
    # its own and its tenant's. "warn": run unenforced, with a warning, where this host
    # cannot enforce it (else it does not start)
    egress: Literal["any", "gateways", "none"] | None = None
    egress_fallback: Literal["refuse", "warn"] = "refuse"
    read_paths: list[str] = []  # more it may read in its sandbox (as sandbox_paths)
    write_paths: list[str] = []  # more it may write in its sandbox besides its cwd
    # budgets (tasks/budget.py): from the usage the agent reports (`usage/report`); over
    # one, its waiting tasks wait until the window has room; 0: no budget
    tokens_per_minute: NonNegInt = 0
    tokens_per_day: NonNegInt = 0
    max_cost_usd_per_day: NonNeg = 0
    health: HealthSpec | None = None  # readiness and liveness checks (health.py)
    tenant: str = DEFAULT_TENANT  # whose quotas it counts against ([tenants.NAME])
    # "cluster": the spec is the cluster's, kept in Redis, and its replicas are placed on
    # the cluster's live nodes (docs/cluster.md); needs [cluster]
    placement: Literal["local", "cluster"] = "local"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.retry_backoff_max < self.retry_backoff:
            raise ValueError(f"retry_backoff_max ({self.retry_backoff_max:g}) is below "
                             f"retry_backoff ({self.retry_backoff:g})")
        if self.restart_cron is not None:
            try:
                Cron(self.restart_cron)
            except ScheduleError as exc:
                raise ValueError(f"restart_cron: {exc}") from None

    @property
    def elastic(self) -> bool:
        """Whether corral, not the operator, sets the replica count (and wakes it)."""
        return self.autoscale is not None or self.hibernate_after > 0

    def check_health(self) -> None:
        """Raises ConfigError ("health.liveness.exec: ...") if the health table is wrong."""
        if self.health is not None:
            self.health.check()


LogLevel = Literal["debug", "info", "notice", "warning", "error", "critical", "alert",
                   "emergency"]


class McpServerSpec(ProcessSpec, kw_only=True, omit_defaults=True):
    """A supervised stdio server (`command` + `args`), or a remote one (`url`)."""

    command: list[str] | str = []
    name: str = ""
    args: list[str] = []
    url: str | None = None  # a remote server (Streamable HTTP, or legacy HTTP+SSE)
    headers: dict[str, str] = {}  # for a remote server; values may name ${VARIABLES}
    transport: Literal["stdio", "http", "sse"] | None = None  # default: from command/url
    # "oauth": OAuth 2.1 as the MCP authorization spec describes (`corral mcp login NAME`)
    auth: Literal["oauth"] | None = None
    oauth_client_id: str | None = None  # a pre-registered client; else dynamic registration
    oauth_client_secret: str | None = None  # may name ${VARIABLES}
    oauth_scopes: list[str] = []  # default: what the server asks for
    # "client_credentials": a machine client (oauth_client_id + oauth_client_secret) gets
    # its tokens itself, no login
    oauth_grant: Literal["authorization_code", "client_credentials"] = "authorization_code"
    instances: PositiveInt = 1
    scope: Literal["shared", "per-agent"] = "shared"
    start: Literal["lazy", "eager"] = "lazy"
    timeout: Positive = 30.0
    roots: list[str] = []  # offered to the server as MCP roots (paths or URIs)
    # a gateway client's own roots answer the server's roots/list asked in a call it made
    # (relayed with the call's other input requests), where `roots` would (decision 661)
    relay_roots: bool = False
    log_level: LogLevel | None = None  # sent as logging/setLevel when the server logs
    # the longest message (one stdout line) the server may send: base64 images and file
    # contents make MCP answers far larger than workers' (server-filesystem's 7 MB image
    # is a 34 MB line)
    max_message_mb: PositiveInt = 64
    tenant: str = DEFAULT_TENANT  # whose agents may use it (tenants.md)
    shared: bool = False  # usable by every tenant's agents, not only its own
    # its tools (globs of their own names) whose calls the gateway runs as tasks for a
    # client of the tasks extension (daemon/mcptasks.py), beside those the server says
    # support them (`execution.taskSupport`, 2025-11-25): "optional", "required" (a
    # client without the extension is refused, -32021), or "after_input" (a call asks
    # for its input in plain rounds, and the one that brings the answers is the task)
    task_tools: dict[str, Literal["optional", "required", "after_input"]] = {}
    # taint (docs/security.md#taint): a task that called an untrusted tool (all of the
    # server's, or these of its tools, globs) needs a person's approval for a sensitive one
    untrusted: bool = False
    tools_untrusted: list[str] = []
    sensitive: bool = False
    tools_sensitive: list[str] = []

    @property
    def remote(self) -> bool:
        return self.url is not None

    def argv(self) -> list[str]:
        return super().argv() + list(self.args)

    def check(self) -> None:
        """command xor url, a transport that fits, a url that is http(s); raises
        ConfigError. (${VARIABLES} are read when a remote server connects: the daemon's
        environment, not check-config's, is the one that counts.)"""
        if self.url is not None and self.command:
            raise ConfigError("give either command (a local server) or url (a remote "
                              "one), not both")
        if self.url is None:
            if self.transport not in (None, "stdio"):
                raise ConfigError(f"transport {self.transport!r} needs a url")
            if self.auth is not None or self.headers:
                raise ConfigError("auth and headers are for a remote server (url)")
            self.argv()
            return
        if self.transport == "stdio":
            raise ConfigError("transport 'stdio' needs a command, not a url")
        if not re.match(r"^https?://[^/]", self.url):
            raise ConfigError(f"url {redact.url(self.url)!r} is not an http:// or https:// URL")
        if self.oauth_grant == "client_credentials" and not (
                self.oauth_client_id and self.oauth_client_secret):
            raise ConfigError('oauth_grant = "client_credentials" needs oauth_client_id and '
                              "oauth_client_secret")


VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def expand(value: str) -> str:
    """`${VAR}` replaced by the environment's value; an unset variable is an error (a
    header sent with an empty secret would fail later and less clearly)."""

    def one(m: re.Match[str]) -> str:
        found = os.environ.get(m.group(1))
        if found is None:
            raise ConfigError(f"environment variable {m.group(1)} is not set")
        return found

    return VARIABLE.sub(one, value)


class SupervisorSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    socket: str | None = None
    state_dir: str | None = None
    log_dir: str | None = None
    group: str | None = None
    heartbeat_interval: Positive = 1.0
    heartbeat_timeout: Positive = 5.0
    # a stop (`corral shutdown`, SIGTERM) lets running tasks finish for this long, per
    # agent unless its own drain_timeout says otherwise; 0: no drain (docs/operations.md)
    drain_timeout: NonNeg = 30.0
    include: list[str] = []
    mcp_servers_file: str | None = None
    # "tagged": every file line carries time, agent#replica, pid and stream;
    # "raw": an agent's file holds its stderr exactly as written (corral's own lines for it
    # go, tagged, to corral.log); `corral logs` shows tags either way
    log_format: Literal["tagged", "raw"] = "tagged"
    log_max_bytes: PositiveInt = 10 * 1024 * 1024
    log_backups: NonNegInt = 5
    # log files rotated also at the first line of each period of this many seconds of
    # the wall clock (86400: daily, at midnight UTC); 0: by size alone
    log_rotate_every: NonNeg = 0.0
    log_compress: bool = False  # rotated copies gzipped (NAME.log.1.gz ..)
    log_tail_lines: PositiveInt = 1000
    # the daemon's own lines on stderr (the journal, under systemd) at or above this level
    log_level: Literal["debug", "info", "notice", "warning", "error"] = "info"
    # agents' and MCP servers' lines also to the systemd journal, with CORRAL_AGENT=,
    # CORRAL_REPLICA=, OBJECT_PID= fields: "auto" = when the journal's socket is there
    log_journal: Literal["auto"] | bool = "auto"
    # "auto": a cgroup per replica when systemd delegated corral's cgroup (Delegate=yes);
    # "on": also without systemd's mark, when corral's own cgroup v2 is writable;
    # "off": subreaper and process records only
    cgroups: Literal["auto", "on", "off"] = "auto"
    log_tail_bytes: PositiveInt = 4 * 1024 * 1024  # per source, whatever the line count
    # the control socket's budgets (DESIGN section 9)
    max_connections: PositiveInt = 1000
    control_idle_timeout: Positive = 60.0
    # replicas of all agents together; None: what the machine can hold (see core.py)
    max_replicas: PositiveInt | None = None
    # the task journal (docs/tasks.md): every accepted task in the state database
    task_journal: bool = True
    journal_sync: Literal["normal", "full"] = "normal"  # full: survives power loss too
    # pending asks of the inbox held at once (docs/approvals.md#bounds): the daemon's,
    # and each tenant's (the operator's own agents count as one tenant)
    max_pending_asks: PositiveInt = 10_000
    max_pending_asks_per_tenant: PositiveInt = 1_000
    # asks one task (or one replica incarnation's calls of no task) makes over its life,
    # pending or ended, on this node (docs/approvals.md#bounds)
    max_asks_per_task: PositiveInt = 100
    # tasks' idempotency keys younger than 24 h a tenant holds (corral/taskkeys.py): a
    # new key past it is refused
    idempotency_keys_per_tenant: PositiveInt = 10_000
    # a person's waits (asks' deadlines, suspend_after) and restart_cron's minutes measured
    # by a clock that only `corral clock --advance` moves: for tests, never in production
    manual_clock: bool = False
    journal_max_age: NonNeg = 7 * 86400  # seconds a finished task is kept; 0: no limit
    journal_max_tasks: NonNegInt = 100_000  # finished tasks kept in the journal
    # audit rows kept of each tenant's callers, and of the operator's apart: the oldest
    # of the same party go (a tenant's refused calls never push out another's); 0: all
    audit_max_rows: NonNegInt = 100_000
    # finished tasks kept in memory, and the bytes of their outputs (past it the oldest
    # outputs leave memory: read back from the journal, or gone without one)
    tasks_kept: NonNegInt = 10_000
    tasks_kept_mb: NonNeg = 32
    # sessions' states held in memory (the recently used; the others read back from the
    # state database when their session's next task starts)
    session_memory_mb: NonNeg = 64
    # agents' spec revisions kept of each agent (its tenant's), the newest, and their
    # specs' bytes together (the newest is kept whatever its size); 0: no bound. Pruned
    # by the retention sweeps (docs/operations.md#retention)
    revisions_kept: NonNegInt = 50
    revisions_kept_mb: NonNeg = 8
    # seconds a removed agent's revisions and log files are kept after its removal; 0:
    # at the sweep right after it
    removed_retention: NonNeg = 7 * 86400
    bwrap: str = "bwrap"  # bubblewrap, for agents with sandbox = "bwrap"


class GatewaySettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """[gateway]: the pool served as one MCP server over Streamable HTTP."""

    listen: str | None = None  # "unix:PATH" or "HOST:PORT"; absent: no HTTP gateway
    tokens_file: str | None = None  # [clients.NAME] token_sha256, tools, limits
    allow_remote: bool = False  # listen on a non-loopback address without TLS
    tls_cert: str | None = None  # PEM files; with both, the gateway speaks HTTPS
    tls_key: str | None = None
    # HTTP sessions at once, and of one client (a token, an agent replica, anonymous):
    # at either bound the least recently used idle session makes room (http/mcpsessions.py)
    max_sessions: PositiveInt = 256
    max_sessions_per_client: PositiveInt = 32
    session_idle_timeout: Positive = 600.0  # seconds without a request or an open stream
    max_concurrent: PositiveInt = 16  # calls in flight per client, unless its entry says
    rate_per_minute: NonNegInt = 0  # calls per client per minute; 0: unlimited
    agent_tokens: bool = True  # agents get CORRAL_MCP_URL and a per-replica token
    # set: a request with no token is served as client "anonymous" with this allowlist
    # (for a unix socket whose mode already says who may connect); absent: 401
    anonymous_tools: list[str] | None = None
    # the tasks extension (daemon/mcptasks.py): a client's handles not ended at once, and
    # the seconds an ended one is kept for tasks/get
    max_tasks_per_client: PositiveInt = 64
    task_ttl: Positive = 3600.0
    # the seconds a server's request for input relayed to a client (corral/mcp/relay.py)
    # waits for its answer: a task in input_required, or the state of a plain call's
    input_wait: Positive = 600.0
    # tools/list at /mcp is `search_tools` and the tools matching tool_search_pinned, the
    # rest found by searching (corral/mcp/toolsearch.py); a tenant's own says for its
    # clients
    tool_search: bool = False
    tool_search_pinned: list[str] = msgspec.field(default_factory=list)


class PolicyMatch(msgspec.Struct, forbid_unknown_fields=True, kw_only=True,
                  omit_defaults=True):
    """A `[[policy]]` rule's calls: globs of the tenant, the agent, the tool
    (SERVER__TOOL) and the model (the model gateway's name); absent: any. A rule naming
    a tool matches no model call, one naming a model no tool call."""

    tenant: str | None = None
    agent: str | None = None
    tool: str | None = None
    model: str | None = None


class PolicyTest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True,
                 omit_defaults=True):
    """One test of a call's argument (a rule's `when`): exactly one of these."""

    under: str | None = None  # a path at or under this one (normalised: no `..` escape)
    in_: list[str] | None = msgspec.field(default=None, name="in")  # one of these strings
    below: float | None = None  # a number less than this

    def check(self) -> None:
        given = [k for k in ("under", "in", "below")
                 if getattr(self, "in_" if k == "in" else k) is not None]
        if len(given) != 1:
            raise ConfigError(f"a when test takes exactly one of under, in, below "
                              f"(given: {', '.join(given) or 'none'})")


class PolicyRule(msgspec.Struct, forbid_unknown_fields=True, kw_only=True,
                 omit_defaults=True):
    """`[[policy]]` (and `[[tenants.NAME.policy]]`): a list's first rule matching a
    call decides it (supervisor/policy.py)."""

    name: str = ""  # shown to the agent and in the log; default: where it is written
    match: PolicyMatch = msgspec.field(default_factory=PolicyMatch)
    # "arguments.KEY" (a tool call's, dotted into nested tables) or "max_tokens" (a
    # model call's output bound) = a test; all must hold
    when: dict[str, PolicyTest] = {}
    effect: Literal["allow", "deny", "approve"]

    def check(self) -> None:
        for key, test in self.when.items():
            if key != "max_tokens" and (not key.startswith("arguments.")
                                        or key == "arguments."):
                raise ConfigError(f"when: {key!r} is neither arguments.KEY nor max_tokens")
            test.check()


# what an agent names a model by (its requests' `model`): printable, no spaces or quotes
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,199}$")


class ModelSpec(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, omit_defaults=True):
    """`[models.NAME]`: a model the model gateway serves (docs/models.md); an agent's
    request naming NAME as its `model` goes to this upstream, with corral's key."""

    url: str  # the upstream's base URL, as its own SDK's base_url says it
    format: Literal["openai", "anthropic"]  # its wire format, passed through untranslated
    model: str | None = None  # the upstream's name of it, if not NAME
    # the provider's key, held by the daemon alone: an environment variable of the
    # daemon's, or a file (its first line); neither: the upstream takes no key
    key_env: str | None = None
    key_file: str | None = None
    agents: list[str] = msgspec.field(default_factory=lambda: ["*"])  # who may use it (globs)
    tenant: str = DEFAULT_TENANT  # whose agents may use it
    shared: bool = False  # every tenant's agents may
    # an upstream's 429, 5xx or failed connection, before any of its answer was passed
    # on, is tried again this many times (backoff 0.5 s doubled); then passed on as it came
    retries: NonNegInt = 0
    timeout: Positive = 600.0  # seconds for the whole call upstream
    rate_per_minute: NonNeg = 0  # calls of it per tenant a minute; 0: unlimited
    # prices, for max_cost_usd_per_day: dollars per million tokens
    input_usd_per_mtok: NonNeg = 0
    output_usd_per_mtok: NonNeg = 0
    # a call of it by a task an untrusted tool's output reached waits for a person
    # (docs/security.md#taint)
    sensitive: bool = False

    def check(self) -> None:
        """An http(s) url, one source of the key at most; raises ConfigError."""
        if not re.match(r"^https?://[^/]", self.url):
            raise ConfigError(f"url {redact.url(self.url)!r} is not an http:// or https:// URL")
        if self.key_env is not None and self.key_file is not None:
            raise ConfigError("give key_env or key_file, not both")


class HttpSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """[http]: the daemon's HTTP server (the REST API, /metrics, the dashboard)."""

    listen: str | None = None  # "HOST:PORT" or "unix:PATH"; absent: no HTTP server
    tls_cert: str | None = None  # PEM files; with both, HTTPS
    tls_key: str | None = None
    # a non-loopback address without TLS is refused unless this says so in so many words
    allow_insecure_remote: bool = False
    metrics_public: bool = False  # /metrics without a token (loopback only)
    rate_per_minute: NonNegInt = 600  # requests per token per minute; 0: unlimited
    # hostile clients: open SSE streams overall and per token (past either: 503), and the
    # seconds a connection may hold without a whole request (a slow-loris, an idle one)
    max_streams: PositiveInt = 1000
    max_streams_per_token: PositiveInt = 100
    idle_timeout: Positive = 60.0
    # seconds a stream's client may take nothing it was sent before the stream is cut
    # (its last event, `cut`, names the id to resume from)
    stream_write_timeout: Positive = 60.0
    # metrics history: a sample every history_interval seconds, kept history_raw_hours;
    # rolled up per minute (kept history_minute_days) and per hour (history_hour_days)
    history_interval: Positive = 10.0
    history_raw_hours: Positive = 6.0
    history_minute_days: Positive = 7.0
    history_hour_days: Positive = 90.0


class PackagesSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """[packages]: how `corral deploy` builds releases (docs/packages.md)."""

    dir: str | None = None  # default: STATE_DIR/packages
    cache_dir: str | None = None  # uv's cache, shared by every build; default: DIR/.cache
    build_timeout: Positive = 600.0  # seconds a whole build may take
    max_release_mb: PositiveInt = 2048  # a release bigger than this is refused
    min_free_mb: NonNegInt = 256  # a build needs this much free space to start
    max_source_mb: PositiveInt = 256  # a package's source (what is copied) at most
    # how a release gets its packages' files from uv's cache: "copy" (a release shares
    # nothing), or "hardlink" (a rebuild several times faster; a release's files are then
    # the cache's, made read-only with it)
    link_mode: Literal["copy", "hardlink"] = "copy"


class TenantSpec(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, omit_defaults=True):
    """`[tenants.NAME]`: a tenant's quotas (0: none), checked at admission (quotas.py),
    its socket group, and what its agents run under."""

    group: str | None = None  # socket peers in this Unix group are this tenant's callers
    user: str | None = None  # its processes run as this user (runas.py)
    max_agents: NonNegInt = 0
    max_replicas: NonNegInt = 0
    max_queue: NonNegInt = 0  # tasks waiting, over all its agents
    max_concurrent_tasks: NonNegInt = 0  # tasks running at once; more wait in their queue
    rate_per_minute: NonNeg = 0  # tasks accepted a minute, over all its agents
    max_task_seconds: NonNeg = 0  # a task's timeout is capped at this
    tokens_per_minute: NonNegInt = 0  # one budget shared by all its agents (budget.py)
    # kernel quotas: a cgroup per tenant where delegated (containment.py), else sampled
    # (max_memory_mb, max_cpu_percent) or RLIMIT_NPROC under the tenant's user
    max_memory_mb: NonNegInt = 0
    memory_high_mb: NonNegInt = 0
    max_cpu_percent: NonNeg = 0
    # its processes' nice value (caps.nice_for_weight), where no cgroup weighs CPU
    cpu_weight: Annotated[int, Meta(ge=0, le=10000)] = 0
    max_processes: NonNegInt = 0
    # the sandbox's settings, which the agent's own take over (isolation.py)
    sandbox: Literal["none", "bwrap"] | None = None
    network: Literal["host", "none", "gateway"] | None = None
    egress: Literal["any", "gateways", "none"] | None = None  # the floor of its agents'
    # its agents' directory: one that names no cwd runs here, and a tenant's caller names
    # none outside it (daemon/privilege.py); unset: they run where the config file is
    dir: str | None = None
    # live sessions over its agents, and their states' bytes (docs/durable.md#sessions)
    max_sessions: NonNegInt = 0
    max_session_bytes: NonNegInt = 0
    # HTTP sessions of the MCP gateway its clients (its tokens, its agents' replicas)
    # hold together (daemon/http/mcpsessions.py)
    max_gateway_sessions: NonNegInt = 0
    # [gateway] tool_search for its clients (its tokens, its agents' replicas); unset:
    # the gateway's
    tool_search: bool | None = None
    # step results: one task of its agents may journal (the smaller of this and its
    # agent's max_step_bytes), and its unfinished tasks together (supervisor/tasks/steps.py)
    max_step_bytes: NonNegInt = 0
    max_step_journal_bytes: NonNegInt = 0
    # live output: one task of its agents may keep (the smaller of this and its agent's
    # max_stream_bytes), and its unfinished tasks together (supervisor/tasks/output.py)
    max_stream_bytes: NonNegInt = 0
    max_stream_journal_bytes: NonNegInt = 0
    # tool calls of its agents' tasks that wait for a person besides their agent's own
    # `approve` (docs/approvals.md): an agent's table cannot take these away
    approve: list[str] = []
    # and model calls (the gateway's model names, globs) that do, as approve_models
    approve_models: list[str] = []
    # policy rules of its agents' calls (docs/security.md#policy-rules), judged beside
    # the operator's [[policy]], the stricter verdict holding; default_deny: a call no
    # rule of its allows is denied
    policy: list[PolicyRule] = []
    default_deny: bool = False

    def check(self) -> None:
        for i, rule in enumerate(self.policy):
            try:
                rule.check()
            except ConfigError as exc:
                raise ConfigError(f"policy[{i}]: {exc}") from None
        if self.dir is not None and not os.path.isabs(self.dir):
            raise ConfigError(f"dir: {self.dir} is not an absolute path")
        if self.user is not None and passwd_of(self.user) is None:
            # refused where it is written, not at each of its agents' spawns
            raise ConfigError(f"user: no such user: {self.user} (a tenant's user must "
                              "exist on this host)")
        if self.memory_high_mb and self.max_memory_mb and self.memory_high_mb > self.max_memory_mb:
            raise ConfigError(f"memory_high_mb {self.memory_high_mb} is above max_memory_mb "
                              f"{self.max_memory_mb}")


def passwd_of(user: str) -> pwd.struct_passwd | None:
    """The account a `user` setting names (a name, or a uid in digits); None if none."""
    try:
        return pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
    except (KeyError, ValueError, OverflowError):  # (a NUL, a digit not ASCII, a huge uid)
        return None


# a cluster's and a node's name go into Redis keys: host names (dots) are allowed
CLUSTER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


class ClusterSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """[cluster]: this node shares tasks with the other nodes of a cluster through Redis
    (docs/cluster.md); absent: one node, as before."""

    redis: str = "redis://127.0.0.1:6379/0"  # redis://, rediss:// or unix://
    name: str = "default"  # several clusters may share one Redis
    node: str | None = None  # default: the host name
    node_ttl: Positive = 3.0  # seconds a node counts as alive after its last beat
    beat: Positive = 1.0  # seconds between beats (renewing the membership key)
    # finished cluster tasks' records (outcome, attempts) kept in Redis, readable from
    # every node: the newest tasks_kept of them, each at most tasks_kept_for seconds
    tasks_kept: PositiveInt = 100_000
    tasks_kept_for: Positive = 7 * 86400.0
    # the key the nodes sign and check cluster records with (agent tables, outcomes),
    # which Redis never holds (decision 162); a cluster without one is refused unless
    # `insecure` says so (records are then taken unchecked)
    key_file: str | None = None
    insecure: bool = False
    # Redis with Sentinel (docs/cluster.md#redis-that-fails-over): the Sentinels
    # ("host:port" each) name the primary of `sentinel_master`, and a node follows a
    # failover without a restart; `redis` then gives the scheme, password and database
    sentinels: list[str] = []
    sentinel_master: str | None = None
    # a task, outcome or step is acknowledged once this many replicas have it too
    # (WAIT): absent, 1 with `sentinels`, else 0 (the primary's word alone)
    ack_replicas: NonNegInt | None = None
    ack_timeout: Positive = 1.0  # seconds the replicas have to confirm a write
    # a session's next turn goes to this node when it ran the last one and lives
    # (docs/durable.md#sessions-on-a-cluster); false: to whichever node reads it first
    sticky_sessions: bool = True
    # asks one cluster task makes over its life, pending or ended: Redis keeps each for
    # the task's life, so one more is refused by this name (docs/approvals.md#bounds)
    max_asks_per_task: PositiveInt = 1_000

    @property
    def replicas_acked(self) -> int:
        if self.ack_replicas is not None:
            return self.ack_replicas
        return 1 if self.sentinels else 0

    def check(self, where: str) -> None:
        """What the types cannot say; raises ConfigError naming the key."""
        if not self.redis.startswith(("redis://", "rediss://", "unix://")):
            raise ConfigError(f"{where}: cluster.redis: {redact.url(self.redis)!r} is not a "
                              "redis://, rediss:// or unix:// URL")
        self._check_sentinels(where)
        for key, value in (("name", self.name), ("node", self.node)):
            if value is not None and CLUSTER_NAME.fullmatch(value) is None:
                raise ConfigError(f"{where}: cluster.{key}: {value!r} is not 1-64 "
                                  "characters of letters, digits, '_', '-' and '.' starting "
                                  "with a letter or digit")
        if self.beat * 2 > self.node_ttl:
            # a node must renew at least twice within its TTL, or one late beat kills it
            raise ConfigError(f"{where}: cluster.beat: {self.beat:g} s is more than half of "
                              f"node_ttl ({self.node_ttl:g} s)")
        if self.key_file is None and not self.insecure:
            raise ConfigError(
                f"{where}: cluster.key_file: a cluster needs a key its nodes sign their "
                "records with, the same file on every node and never in Redis (umask 077; "
                "head -c 32 /dev/urandom | base64 > /etc/corral/cluster.key); without "
                "one whoever can write to Redis runs commands on every node: to run so "
                "anyway, say insecure = true in [cluster] (docs/cluster.md#securing-redis)")
        if self.key_file is not None and self.insecure:
            raise ConfigError(f"{where}: cluster.insecure: true, and a key_file is given: "
                              "remove one of them")

    def _check_sentinels(self, where: str) -> None:
        if not self.sentinels:
            if self.sentinel_master is not None:
                raise ConfigError(f"{where}: cluster.sentinel_master: given without "
                                  "sentinels (the Sentinels that name its primary)")
            return
        for address in self.sentinels:
            host, _, port = address.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ConfigError(f"{where}: cluster.sentinels: {address!r} is not "
                                  "HOST:PORT")
        if self.sentinel_master is None:
            raise ConfigError(f"{where}: cluster.sentinel_master: the name the Sentinels "
                              "monitor the cluster's Redis as is needed with sentinels")
        if CLUSTER_NAME.fullmatch(self.sentinel_master) is None:
            raise ConfigError(f"{where}: cluster.sentinel_master: {self.sentinel_master!r} "
                              "is not 1-64 characters of letters, digits, '_', '-' and '.' "
                              "starting with a letter or digit")
        if self.redis.startswith("unix://"):
            raise ConfigError(f"{where}: cluster.redis: a unix:// URL with sentinels (the "
                              "Sentinels name a primary by host and port): use redis:// "
                              "or rediss://")


class ApprovalsSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """[approvals]: the inbox's outbound webhook (docs/approvals.md); absent: none."""

    # each ask made and ended is POSTed here, signed with webhook_secret (HMAC-SHA256 of
    # the body, X-Corral-Signature), retried, in order, never holding the daemon up
    webhook: str
    webhook_secret: str
    webhook_retries: NonNegInt = 5  # attempts after the first, 0.5 s doubling to 30 s
    webhook_queue: PositiveInt = 1000  # deliveries waiting at most; past it, dropped
    webhook_timeout: Positive = 10.0  # seconds an attempt may take

    def check(self) -> None:
        if not re.match(r"^https?://[^/]", self.webhook):
            raise ConfigError(f"approvals.webhook: {self.webhook!r} is not an http:// or "
                              f"https:// URL")
        if len(self.webhook_secret) < 16:
            raise ConfigError("approvals.webhook_secret: give at least 16 characters (the "
                              "receiver checks each delivery's HMAC with it)")


class TracingSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """[tracing]: every task an OpenTelemetry trace (docs/tracing.md); absent: no
    tracing. The standard OTEL_* variables fill what the table leaves out."""

    # OTLP/HTTP traces URL (e.g. http://localhost:4318/v1/traces); absent: the
    # OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, else OTEL_EXPORTER_OTLP_ENDPOINT + /v1/traces,
    # else none (the local store only)
    endpoint: str | None = None
    headers: dict[str, str] = {}  # sent with each export (an API key's header)
    # the share of new traces sampled; absent: OTEL_TRACES_SAMPLER(_ARG), else 1.0
    sample: Annotated[float, Meta(ge=0, le=1)] | None = None
    parent_based: bool | None = None  # a caller's sampled flag decides (default yes)
    slow: Positive = 10.0  # seconds: a task this slow is kept whatever the sampling said
    service_name: str | None = None  # default OTEL_SERVICE_NAME, else "corral"
    buffer: PositiveInt = 65536  # records waiting (a task's spans are one); past it, dropped
    batch: PositiveInt = 512  # records a batch: handed to the exporter when one is ready
    export_interval: Positive = 2.0  # seconds between exports of what is there
    export_timeout: Positive = 5.0
    # the local store (`corral trace`): spans kept at most keep_days, the newest keep_spans
    keep_days: NonNeg = 7.0
    keep_spans: NonNegInt = 200_000


class Config(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    supervisor: SupervisorSettings = msgspec.field(default_factory=SupervisorSettings)
    agents: dict[str, AgentSpec] = {}
    mcp_servers: dict[str, McpServerSpec] = {}
    gateway: GatewaySettings = msgspec.field(default_factory=GatewaySettings)
    http: HttpSettings = msgspec.field(default_factory=HttpSettings)
    packages: PackagesSettings = msgspec.field(default_factory=PackagesSettings)
    tenants: dict[str, TenantSpec] = {}
    cluster: ClusterSettings | None = None
    tracing: TracingSettings | None = None
    approvals: ApprovalsSettings | None = None  # the inbox's webhook (docs/approvals.md)
    # [workflows.NAME]: steps of agents fed by references (docs/workflows.md)
    workflows: dict[str, WorkflowSpec] = {}
    # [teams.NAME]: agents called as one, by route, broadcast or a leader (docs/teams.md)
    teams: dict[str, TeamSpec] = {}
    # [schedules.NAME]: a task of an agent or a run of a workflow on a clock
    schedules: dict[str, ScheduleSpec] = {}
    # [models.NAME]: the model gateway's upstreams (docs/models.md)
    models: dict[str, ModelSpec] = {}
    # [[policy]]: the operator's rules of every call (docs/security.md#policy-rules)
    policy: list[PolicyRule] = []


def default_cwd(tenant: TenantSpec | None, config_dir: str) -> str:
    """Where a process that names no cwd runs: its tenant's `dir`, else where the config
    file is (`config_dir`)."""
    return tenant.dir if tenant is not None and tenant.dir is not None else config_dir
