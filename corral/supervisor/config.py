"""The configuration schema (docs/config.md): the same msgspec Structs validate the TOML
file (read by configload.py), the `agents.add` params and the Python API, so a key means
one thing everywhere. Add keys freely, rename none.
"""

from __future__ import annotations

import os
import pwd
import re
import shlex
import signal
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import msgspec
import msgspec.inspect
from msgspec import Meta

from .. import redact
from ..taskoptions import RetryOutcome
from .egressallow import allowed
from .schedule import Cron, ScheduleError, ScheduleSpec
from .teams.definition import TeamSpec
from .workflows.definition import WorkflowSpec

MIB = 1024 * 1024
DEFAULT_TENANT = "default"  # the tenant of everything that names none
DEFAULT_SESSION_TTL = 7 * 86400

NonNeg = Annotated[float, Meta(ge=0)]
NonNegInt = Annotated[int, Meta(ge=0)]
Positive = Annotated[float, Meta(gt=0)]
PositiveInt = Annotated[int, Meta(ge=1)]
# also the most a tenant's caller may give an agent when its tenant sets none (privilege.py)
STEP_BYTES = 64 * 1024 * 1024
STREAM_BYTES = 16 * 1024 * 1024
# a task survives two losses to infrastructure (a crash in the recovery from a crash
# among them) with no retries written
RETRY_LOST = 2

ExitCode = Annotated[int, Meta(ge=0, le=255)]
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
    exit_codes: tuple[ExitCode, ...] = (0,)  # clean exits, not restarted by "on-failure"
    start_secs: NonNeg = 0.0
    start_retries: NonNegInt = 3
    stop_signal: StopSignal = "TERM"  # SIGKILL follows after stop_timeout as ever
    log_file: str | None = None
    log_max_bytes: PositiveInt | None = None
    log_backups: NonNegInt | None = None
    log_rotate_every: NonNeg | None = None
    log_compress: bool | None = None
    env_file: list[str] = []

    def __post_init__(self) -> None:
        if self.log_file is not None and not self.log_file.startswith("/"):
            raise ValueError(f"log_file {self.log_file!r} is not an absolute path (or "
                             "/dev/stdout, /dev/stderr)")
        relative = next((p for p in self.env_file
                         if not os.path.isabs(p.removeprefix("-"))), None)
        if relative is not None:
            raise ValueError(f"env_file {relative!r} is not an absolute path")
        # (the checks at its start stat these: a NUL there is no path, and no word exec
        # can pass)
        words = [self.command] if isinstance(self.command, str) else self.command
        nul = next((w for w in (*words, self.cwd or "") if "\0" in w), None)
        if nul is not None:
            raise ValueError(f"{nul!r} holds a NUL, which no path nor argument may hold")

    @property
    def stop_signum(self) -> signal.Signals:
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
    """[agents.NAME.autoscale] (docs/elastic.md): the replica count follows the load;
    `replicas` is then the starting count."""

    min_replicas: NonNegInt = 1  # 0: the agent sleeps after idle_after, a task wakes it
    max_replicas: PositiveInt = 1
    target_load: Positive = 1.0  # running + queued tasks per replica
    upscale_delay: NonNeg = 2.0  # the panic window: more load held this long scales up
    downscale_delay: NonNeg = 120.0  # the stable window: less load held this long scales down
    max_step_up: NonNegInt = 0  # replicas added by one decision at most; 0: no bound
    idle_after: NonNeg = 300.0  # with min_replicas = 0: seconds without work before sleeping

    def within(self, replicas: int) -> int:
        return min(max(replicas, self.min_replicas), self.max_replicas)


class CheckSpec(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, omit_defaults=True):
    """[agents.NAME.health.readiness] / [...liveness]: one health check (health.py)."""

    interval: Positive = 10.0  # seconds from the end of one check to the next
    timeout: Positive = 5.0  # a check not answered (a command not exited) by then fails
    failures: PositiveInt = 3  # consecutive failures that make the check failed
    successes: PositiveInt = 1  # consecutive passes that make it passing again
    check: str | None = None
    command: list[str] | None = None
    tcp: str | None = None
    http: str | None = None
    recovery: Literal["restart", "drain", "exec", "event"] | None = None
    exec: list[str] | None = None  # recovery = "exec": the command run

    @property
    def probe(self) -> bool:
        """Whether the check is corral's own, not the worker's."""
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

    start_period: NonNeg = 0.0
    readiness: CheckSpec | None = None
    liveness: CheckSpec | None = None

    def checks(self) -> list[tuple[str, CheckSpec]]:
        """(kind, check) of each check given, readiness first."""
        return [(k, c) for k in ("readiness", "liveness") if (c := getattr(self, k)) is not None]

    def check(self) -> None:
        if self.readiness is None and self.liveness is None:
            raise ConfigError("health: give readiness, liveness or both")
        for kind, c in self.checks():
            bad = c.problem()
            if bad is not None:
                key = ".".join(k for k in ("health", kind, bad[0]) if k)
                raise ConfigError(f"{key}: {bad[1]}")


class AgentSpec(ProcessSpec, kw_only=True, omit_defaults=True):
    name: str = ""
    description: str = ""  # what it does, for those who call it (its A2A card)
    protocol: Literal["corral", "none"] = "corral"
    ready: Literal["started", "notify"] | None = None
    watchdog_sec: NonNeg = 0  # WATCHDOG=1 at least this often once ready, else hung
    replicas: NonNegInt = 1
    autostart: bool = True
    after: list[str] = []  # started after these are up, stopped before them (startorder.py)
    requires: list[str] = []
    fatal: bool = False  # the daemon exits (status 1) when this agent fails for good
    max_concurrent_tasks: PositiveInt = 1
    max_queue: NonNegInt = 1000
    task_timeout: Positive = 300.0
    cancel_grace: Positive = 5.0  # after task/cancel, then the worker is hung
    pause_timeout: Positive = 2.0  # for the kernel to say a replica is frozen
    drain_timeout: NonNeg | None = None
    retries: NonNegInt = 0
    retry_on: tuple[RetryOutcome, ...] = ("lost",)
    retry_lost: NonNegInt = RETRY_LOST
    retry_backoff: NonNeg = 0.0
    retry_backoff_max: NonNeg = 600.0
    retry_jitter: bool = True
    rate_per_minute: NonNeg = 0
    max_tool_calls_per_task: NonNegInt = 50
    replay: bool = True
    replay_tools: list[str] = []  # SERVER__TOOL patterns always run again (a clock)
    max_step_bytes: NonNegInt = STEP_BYTES
    max_stream_bytes: NonNegInt = STREAM_BYTES  # a task's live output kept (docs/streams.md)
    approve: list[str] = []
    approve_timeout: NonNeg = 3600.0
    on_deny: Literal["error", "fail"] = "error"
    on_timeout: Literal["error", "fail"] = "error"
    approve_models: list[str] = []
    approve_cost_over: NonNeg = 0.0
    suspend_after: NonNeg = 0.0
    spawns: list[str] = []
    max_spawn_depth: NonNegInt = 3
    max_children: NonNegInt = 1000
    session_ttl: NonNeg = DEFAULT_SESSION_TTL  # an idle session is dropped; 0: never
    max_sessions: NonNegInt = 10_000  # live sessions (docs/durable.md#sessions)
    max_session_bytes: NonNegInt = 1024 * 1024 * 1024
    tools: list[str] = []
    state_ttl: NonNeg = 0
    config: dict[str, Any] = {}  # passed to the worker in `initialize`
    warm: bool = False
    preload: list[str] = []
    min_healthy_time: NonNeg = 0
    healthy_deadline: Positive = 60.0
    release: str | None = None
    version: str | None = None
    keep_releases: PositiveInt = 5
    watch: list[str] = []  # globs under cwd whose change restarts it (rolling)
    restart_cron: str | None = None  # five cron fields (UTC): a graceful restart
    autoscale: Autoscale | None = None  # docs/elastic.md
    hibernate_after: NonNeg = 0  # idle this long: checkpoint, then stop; 0: never
    sandbox: Literal["none", "bwrap"] | None = None
    network: Literal["host", "none", "gateway"] | None = None
    sandbox_paths: list[str] = []  # read-only in the sandbox besides what corral binds
    egress: Literal["any", "gateways", "none"] | None = None
    egress_fallback: Literal["refuse", "warn"] = "refuse"
    read_paths: list[str] = []
    write_paths: list[str] = []  # besides its cwd
    tokens_per_minute: NonNegInt = 0
    tokens_per_day: NonNegInt = 0
    max_cost_usd_per_day: NonNeg = 0
    health: HealthSpec | None = None  # readiness and liveness checks (health.py)
    tenant: str = DEFAULT_TENANT
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
    headers: dict[str, str] = {}  # values may name ${VARIABLES}
    transport: Literal["stdio", "http", "sse"] | None = None  # default: from command/url
    auth: Literal["oauth"] | None = None  # OAuth 2.1 (`corral mcp login NAME`)
    oauth_client_id: str | None = None  # a pre-registered client; else dynamic registration
    oauth_client_secret: str | None = None  # may name ${VARIABLES}
    oauth_scopes: list[str] = []  # default: what the server asks for
    oauth_grant: Literal["authorization_code", "client_credentials"] = "authorization_code"
    instances: PositiveInt = 1
    scope: Literal["shared", "per-agent"] = "shared"
    start: Literal["lazy", "eager"] = "lazy"
    timeout: Positive = 30.0
    roots: list[str] = []  # offered to the server as MCP roots (paths or URIs)
    relay_roots: bool = False
    log_level: LogLevel | None = None  # sent as logging/setLevel when the server logs
    # one stdout line at most: base64 images make MCP answers far larger than workers'
    # (server-filesystem's 7 MB image is a 34 MB line)
    max_message_mb: PositiveInt = 64
    tenant: str = DEFAULT_TENANT  # whose agents may use it (tenants.md)
    shared: bool = False  # usable by every tenant's agents, not only its own
    task_tools: dict[str, Literal["optional", "required", "after_input"]] = {}
    untrusted: bool = False
    tools_untrusted: list[str] = []
    sensitive: bool = False
    tools_sensitive: list[str] = []
    # its process's egress (issue 88): "none" reaches nothing but egress_allow's IP:PORTs
    egress: Literal["any", "gateways", "none"] | None = None
    egress_allow: list[str] = []

    @property
    def remote(self) -> bool:
        return self.url is not None

    def argv(self) -> list[str]:
        return super().argv() + list(self.args)

    def check(self) -> None:
        """(${VARIABLES} are read when a remote server connects: the daemon's environment,
        not check-config's, is the one that counts.)"""
        if self.url is not None and self.command:
            raise ConfigError("give either command (a local server) or url (a remote "
                              "one), not both")
        if self.egress_allow or self.egress not in (None, "any"):
            self._check_egress()
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

    def _check_egress(self) -> None:
        if self.url is not None:
            raise ConfigError("egress is a local server's: a remote one is reached by the "
                              "daemon itself")
        if self.egress == "gateways":
            raise ConfigError('egress "gateways" is an agent\'s: an MCP server is given no '
                              'gateway (egress = "none", with egress_allow)')
        if self.egress != "none":
            raise ConfigError('egress_allow needs egress = "none": it names what the '
                              "server may reach besides nothing")
        try:
            allowed(self.egress_allow)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None


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


# why a process whose user names a variable not set is not started, rather than as root
RUN_AS_ROOT = "refused: without its user the program would run as root"


def resolved_user(user: str | None) -> str | None:
    """A `user` with its `${VARIABLES}` read from the daemon's environment, where the
    process starts (as supervisord reads `%(ENV_X)s` from its own); one not set, or set
    empty, refuses the start, never leaving the program to run as root."""
    if user is None or "$" not in user:
        return user
    unset = sorted({n for n in VARIABLE.findall(user) if not os.environ.get(n)})
    if unset:
        raise ConfigError(f"user {user}: {', '.join(unset)} not set in the daemon's "
                          f"environment: {RUN_AS_ROOT}")
    return expand(user)


class SupervisorSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    socket: str | None = None
    state_dir: str | None = None
    log_dir: str | None = None
    group: str | None = None
    heartbeat_interval: Positive = 1.0
    heartbeat_timeout: Positive = 5.0
    drain_timeout: NonNeg = 30.0  # running tasks' time to finish at a stop; 0: none
    include: list[str] = []
    mcp_servers_file: str | None = None
    mcp_registry: str | None = None  # an MCP registry's URL, for `corral mcp add --registry`
    log_format: Literal["tagged", "raw"] = "tagged"
    log_max_bytes: PositiveInt = 10 * 1024 * 1024
    log_backups: NonNegInt = 5
    log_rotate_every: NonNeg = 0.0  # seconds of the wall clock (86400: at midnight UTC)
    log_compress: bool = False
    log_tail_lines: PositiveInt = 1000
    log_level: Literal["debug", "info", "notice", "warning", "error"] = "info"
    log_journal: Literal["auto"] | bool = "auto"  # agents' lines also to the systemd journal
    cgroups: Literal["auto", "on", "off"] = "auto"
    log_tail_bytes: PositiveInt = 4 * 1024 * 1024  # per source, whatever the line count
    max_connections: PositiveInt = 1000
    control_idle_timeout: Positive = 60.0
    max_replicas: PositiveInt | None = None  # None: what the machine can hold (core.py)
    task_journal: bool = True
    journal_sync: Literal["normal", "full"] = "normal"  # full: survives power loss too
    max_pending_asks: PositiveInt = 10_000
    max_pending_asks_per_tenant: PositiveInt = 1_000
    max_asks_per_task: PositiveInt = 100
    idempotency_keys_per_tenant: PositiveInt = 10_000  # keys younger than 24 h
    manual_clock: bool = False
    journal_max_age: NonNeg = 7 * 86400  # seconds a finished task is kept; 0: no limit
    journal_max_tasks: NonNegInt = 100_000
    audit_max_rows: NonNegInt = 100_000
    keep_tasks: NonNegInt = 10_000
    keep_tasks_mb: NonNeg = 32
    session_memory_mb: NonNeg = 64
    keep_revisions: NonNegInt = 50
    keep_revisions_mb: NonNeg = 8
    removed_retention: NonNeg = 7 * 86400  # a removed agent's revisions and log files
    bwrap: str = "bwrap"  # bubblewrap, for agents with sandbox = "bwrap"
    # uids for agents naming no user under a root daemon (systemd's DynamicUser= range);
    # []: they run as the daemon's user
    dynamic_uids: list[int] = msgspec.field(default_factory=lambda: [61184, 65519])


class GatewaySettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """[gateway]: the pool served as one MCP server over Streamable HTTP."""

    listen: str | None = None  # "unix:PATH" or "HOST:PORT"; absent: no HTTP gateway
    tokens_file: str | None = None  # [clients.NAME] token_sha256, tools, limits
    allow_remote: bool = False  # listen on a non-loopback address without TLS
    tls_cert: str | None = None  # PEM files; with both, the gateway speaks HTTPS
    tls_key: str | None = None
    max_sessions: PositiveInt = 256
    max_sessions_per_client: PositiveInt = 32
    session_idle_timeout: Positive = 600.0  # seconds without a request or an open stream
    idle_timeout: Positive = 60.0  # a connection's, without a whole request: then closed
    max_concurrent: PositiveInt = 16  # calls in flight per client, unless its entry says
    rate_per_minute: NonNegInt = 0  # calls per client per minute; 0: unlimited
    agent_tokens: bool = True  # agents get CORRAL_MCP_URL and a per-replica token
    anonymous_tools: list[str] | None = None
    max_tasks_per_client: PositiveInt = 64  # the tasks extension (daemon/mcptasks.py)
    task_ttl: Positive = 3600.0
    input_wait: Positive = 600.0  # for a client's answer to a relayed input request
    tool_search: bool = False
    tool_search_pinned: list[str] = msgspec.field(default_factory=list)
    skills_dir: str | None = None  # the operator's own SEP-2640 skills, served at /mcp


class PolicyMatch(msgspec.Struct, forbid_unknown_fields=True, kw_only=True,
                  omit_defaults=True):
    """A `[[policy]]` rule's calls: globs of the tenant, the agent, the tool (SERVER__TOOL)
    and the model (the model gateway's name); absent: any. A rule naming a tool matches no
    model call, one naming a model no tool call."""

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
        if self.under is not None and not self.under.startswith("/"):
            raise ConfigError(f"a when test's under is an absolute path (given: "
                              f"{self.under!r})")


class PolicyRule(msgspec.Struct, forbid_unknown_fields=True, kw_only=True,
                 omit_defaults=True):
    """`[[policy]]` (and `[[tenants.NAME.policy]]`): a list's first rule matching a
    call decides it (supervisor/policy.py)."""

    name: str = ""  # shown to the agent and in the log; default: where it is written
    match: PolicyMatch = msgspec.field(default_factory=PolicyMatch)
    when: dict[str, PolicyTest] = {}  # "arguments.KEY" or "max_tokens": all must hold
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
    """`[models.NAME]`: a model the model gateway serves (docs/models.md)."""

    url: str  # the upstream's base URL, as its own SDK's base_url says it
    format: Literal["openai", "anthropic"]  # its wire format, passed through untranslated
    model: str | None = None  # the upstream's name of it, if not NAME
    key_env: str | None = None
    key_file: str | None = None
    agents: list[str] = msgspec.field(default_factory=lambda: ["*"])  # who may use it (globs)
    tenant: str = DEFAULT_TENANT  # whose agents may use it
    shared: bool = False  # every tenant's agents may
    retries: NonNegInt = 0
    timeout: Positive = 600.0  # seconds for the whole call upstream
    rate_per_minute: NonNeg = 0  # calls of it per tenant a minute; 0: unlimited
    input_usd_per_mtok: NonNeg = 0
    output_usd_per_mtok: NonNeg = 0
    sensitive: bool = False  # docs/security.md#taint

    def check(self) -> None:
        if not re.match(r"^https?://[^/]", self.url):
            raise ConfigError(f"url {redact.url(self.url)!r} is not an http:// or https:// URL")
        if self.key_env is not None and self.key_file is not None:
            raise ConfigError("give key_env or key_file, not both")


class HttpSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """[http]: the daemon's HTTP server (the REST API, /metrics, the dashboard)."""

    listen: str | None = None  # "HOST:PORT" or "unix:PATH"; absent: no HTTP server
    tls_cert: str | None = None  # PEM files; with both, HTTPS
    tls_key: str | None = None
    allow_insecure_remote: bool = False  # a non-loopback address without TLS
    metrics_public: bool = False  # /metrics without a token (loopback only)
    rate_per_minute: NonNegInt = 600  # requests per token per minute; 0: unlimited
    max_streams: PositiveInt = 1000
    max_streams_per_token: PositiveInt = 100
    idle_timeout: Positive = 60.0
    stream_write_timeout: Positive = 60.0  # a stream's client taking nothing: it is cut
    event_ring: PositiveInt = 10_000  # the newest events kept for streams' reconnects
    history_interval: Positive = 10.0
    history_raw_hours: Positive = 6.0
    history_minute_days: Positive = 7.0
    history_hour_days: Positive = 90.0


class A2aSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """[a2a]: the agents served over A2A at /a2a/AGENT of [http] (docs/a2a.md)."""

    anonymous: list[str] = []  # agents callable without a token (as anonymous_tools)
    anonymous_remote: bool = False  # and from other hosts than this one's loopback
    push_private: bool = False  # push notifications to loopback and private addresses
    # the public base URL the cards name (behind a reverse proxy or a CDN), whatever Host
    # a request names: an agent's is URL/a2a/AGENT; None, the request's own
    url: str | None = None

    def __post_init__(self) -> None:
        if self.url is None:
            return
        parts, shown = urlsplit(self.url), redact.url(self.url)
        try:
            port_ok = parts.port is not None or ":" not in parts.netloc.rpartition(
                "@")[2].rpartition("]")[2]  # (`host:`, a port of nothing)
        except ValueError:  # (a port past 65535, or not a number)
            port_ok = False
        if parts.scheme not in ("http", "https") or not parts.hostname or not port_ok or \
                not self.url.isprintable() or " " in self.url:
            raise ValueError(f"url {shown!r} is not an absolute http:// or https:// URL")
        if parts.query or parts.fragment or "?" in self.url or "#" in self.url:
            raise ValueError(f"url {shown!r} carries a query or a fragment: the cards' "
                              "URLs are under it, as a path")
        if parts.username is not None:
            raise ValueError(f"url {shown!r} carries a user name: every card's "
                              "reader would read it")
        self.url = self.url.rstrip("/")


class PackagesSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """[packages]: how `corral deploy` builds releases (docs/packages.md)."""

    dir: str | None = None  # default: STATE_DIR/packages
    cache_dir: str | None = None  # uv's cache, shared by every build; default: DIR/.cache
    build_timeout: Positive = 600.0  # seconds a whole build may take
    max_release_mb: PositiveInt = 2048  # a release bigger than this is refused
    min_free_mb: NonNegInt = 256  # a build needs this much free space to start
    max_source_mb: PositiveInt = 256  # a package's source (what is copied) at most
    link_mode: Literal["copy", "hardlink"] = "copy"


class TenantSpec(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, omit_defaults=True):
    """`[tenants.NAME]`: a tenant's quotas (0: none), its socket group, and what its agents
    run under (docs/tenants.md)."""

    group: str | None = None  # socket peers in this Unix group are this tenant's callers
    user: str | None = None  # its processes run as this user (runas.py)
    max_agents: NonNegInt = 0
    max_replicas: NonNegInt = 0
    max_queue: NonNegInt = 0  # tasks waiting, over all its agents
    max_concurrent_tasks: NonNegInt = 0  # tasks running at once; more wait in their queue
    rate_per_minute: NonNeg = 0  # tasks accepted a minute, over all its agents
    max_task_seconds: NonNeg = 0  # a task's timeout is capped at this
    tokens_per_minute: NonNegInt = 0  # one budget shared by all its agents (budget.py)
    max_memory_mb: NonNegInt = 0
    memory_high_mb: NonNegInt = 0
    max_cpu_percent: NonNeg = 0
    cpu_weight: Annotated[int, Meta(ge=0, le=10000)] = 0  # a nice value without a cgroup
    max_processes: NonNegInt = 0
    sandbox: Literal["none", "bwrap"] | None = None
    network: Literal["host", "none", "gateway"] | None = None
    egress: Literal["any", "gateways", "none"] | None = None  # the floor of its agents'
    dir: str | None = None
    max_sessions: NonNegInt = 0
    max_session_bytes: NonNegInt = 0
    max_gateway_sessions: NonNegInt = 0
    tool_search: bool | None = None  # unset: the gateway's
    max_step_bytes: NonNegInt = 0
    max_step_journal_bytes: NonNegInt = 0
    max_stream_bytes: NonNegInt = 0
    max_stream_journal_bytes: NonNegInt = 0
    approve: list[str] = []
    approve_models: list[str] = []
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
    (docs/cluster.md)."""

    redis: str = "redis://127.0.0.1:6379/0"  # redis://, rediss:// or unix://
    name: str = "default"  # several clusters may share one Redis
    node: str | None = None  # default: the host name
    node_ttl: Positive = 3.0  # seconds a node counts as alive after its last beat
    beat: Positive = 1.0  # seconds between beats (renewing the membership key)
    keep_tasks: PositiveInt = 100_000
    keep_tasks_for: Positive = 7 * 86400.0
    key_file: str | None = None
    insecure: bool = False
    sentinels: list[str] = []
    sentinel_master: str | None = None
    ack_replicas: NonNegInt | None = None
    ack_timeout: Positive = 1.0
    sticky_sessions: bool = True  # a session's next turn goes to the node of its last
    max_asks_per_task: PositiveInt = 1_000

    @property
    def replicas_acked(self) -> int:
        if self.ack_replicas is not None:
            return self.ack_replicas
        return 1 if self.sentinels else 0

    def check(self, where: str) -> None:
        if not self.redis.startswith(("redis://", "rediss://", "unix://")):
            raise ConfigError(f"{where}: cluster.redis: {redact.url(self.redis)!r} is not a "
                              "redis://, rediss:// or unix:// URL")
        self._check_sentinels(where)
        for key, value in (("name", self.name), ("node", self.node),
                           ("sentinel_master", self.sentinel_master)):
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
        bad = next((a for a in self.sentinels if tcp_address(a) is None), None)
        if bad is not None:
            raise ConfigError(f"{where}: cluster.sentinels: {bad!r} is not HOST:PORT")
        if self.sentinel_master is None:
            raise ConfigError(f"{where}: cluster.sentinel_master: the name the Sentinels "
                              "monitor the cluster's Redis as is needed with sentinels")
        if self.redis.startswith("unix://"):
            raise ConfigError(f"{where}: cluster.redis: a unix:// URL with sentinels (the "
                              "Sentinels name a primary by host and port): use redis:// "
                              "or rediss://")


class ApprovalsSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """[approvals]: the inbox's outbound webhook (docs/approvals.md); absent: none."""

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
    """[tracing]: every task an OpenTelemetry trace (docs/tracing.md). The standard OTEL_*
    variables fill what the table leaves out."""

    endpoint: str | None = None  # OTLP/HTTP traces URL; none: the local store only
    headers: dict[str, str] = {}  # sent with each export (an API key's header)
    sample: Annotated[float, Meta(ge=0, le=1)] | None = None
    parent_based: bool | None = None  # a caller's sampled flag decides (default yes)
    slow: Positive = 10.0  # seconds: a task this slow is kept whatever the sampling said
    service_name: str | None = None  # default OTEL_SERVICE_NAME, else "corral"
    buffer: PositiveInt = 65536  # records waiting (a task's spans are one); past it, dropped
    batch: PositiveInt = 512  # records a batch: handed to the exporter when one is ready
    export_interval: Positive = 2.0  # seconds between exports of what is there
    export_timeout: Positive = 5.0
    keep_days: NonNeg = 7.0
    keep_spans: NonNegInt = 200_000


class A2aAgentSpec(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """[a2a_agents.NAME]: a remote A2A agent, the gateway's tool `a2a__NAME` (docs/a2a.md):
    the operator's (default tenant's), served by one supervised server, `a2a`."""

    url: str  # where its card is: URL/.well-known/agent-card.json
    token_file: str | None = None  # its bearer token, read at each call (relative: config's)
    description: str = ""  # the tool's; default: its card's
    timeout: Positive = 300.0  # seconds a call waits for the remote task to settle
    untrusted: bool = True  # its output is text from outside: it taints what reads it

    def check(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise ConfigError(f"url: expected an http:// or https:// URL, got {self.url!r}")


class Config(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    supervisor: SupervisorSettings = msgspec.field(default_factory=SupervisorSettings)
    agents: dict[str, AgentSpec] = {}
    mcp_servers: dict[str, McpServerSpec] = {}
    gateway: GatewaySettings = msgspec.field(default_factory=GatewaySettings)
    http: HttpSettings = msgspec.field(default_factory=HttpSettings)
    a2a: A2aSettings = msgspec.field(default_factory=A2aSettings)
    packages: PackagesSettings = msgspec.field(default_factory=PackagesSettings)
    tenants: dict[str, TenantSpec] = {}
    cluster: ClusterSettings | None = None
    tracing: TracingSettings | None = None
    approvals: ApprovalsSettings | None = None
    workflows: dict[str, WorkflowSpec] = {}
    teams: dict[str, TeamSpec] = {}
    schedules: dict[str, ScheduleSpec] = {}
    models: dict[str, ModelSpec] = {}
    policy: list[PolicyRule] = []  # the operator's rules of every call
    a2a_agents: dict[str, A2aAgentSpec] = {}  # remote A2A agents, the tools a2a__NAME


def default_cwd(tenant: TenantSpec | None, config_dir: str) -> str:
    """Where a process that names no cwd runs."""
    return tenant.dir if tenant is not None and tenant.dir is not None else config_dir
