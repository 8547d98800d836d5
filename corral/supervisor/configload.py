"""Reading the configuration: a TOML file, its includes and the desktop MCP servers file
into the Structs of config.py, every error naming its file and key, and what the Structs
cannot check one by one."""

from __future__ import annotations

import contextlib
import functools
import glob
import json
import os
import re
import shutil
import tomllib
import types
import typing
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import msgspec.inspect

from ..othernames import hint
from ..text import did_you_mean
from .a2aagents import A2A_SERVER, a2a_server
from .addresses import local_listen
from .config import (
    DEFAULT_TENANT,
    MODEL_NAME,
    VARIABLE,
    A2aAgentSpec,
    A2aSettings,
    AgentSpec,
    ApprovalsSettings,
    ClusterSettings,
    Config,
    ConfigError,
    GatewaySettings,
    HttpSettings,
    McpServerSpec,
    ModelSpec,
    PackagesSettings,
    PolicyRule,
    ProcessSpec,
    SupervisorSettings,
    TenantSpec,
    TracingSettings,
    default_cwd,
    resolved_user,
)
from .dynamicusers import uid_range
from .isolation import gateway_socket, isolation
from .names import name_problem, shown
from .runas import reach_refusal
from .sandbox import exposed, host_refusal, plain
from .schedule import ScheduleError, ScheduleSpec, compile_schedule
from .seccomp import missing as no_filter
from .startorder import order_problem
from .teams import TeamError, TeamSpec, check_team
from .workflows import WorkflowError, WorkflowSpec, compile_workflow

_S = TypeVar("_S", bound=msgspec.Struct)
_T = TypeVar("_T")
_C = TypeVar("_C", TenantSpec, ModelSpec, PolicyRule, McpServerSpec, A2aAgentSpec)


def parse_tenants(data: dict[str, Any], where: str,
                  problems: list[str] | None = None) -> dict[str, TenantSpec]:
    """The `[tenants.NAME]` tables of a document (`tenants.add` takes them too)."""
    def one(name: str, table: Any) -> TenantSpec:
        validate_name("tenants", name, where)
        return _checked_as(table, TenantSpec, where, f"tenants.{name}")

    return _each(data, "tenants", where, problems, one)


def _each(data: dict[str, Any], section: str, where: str, problems: list[str] | None,
          one: Callable[[str, Any], _T]) -> dict[str, _T]:
    """`one(NAME, table)` of each `[SECTION.NAME]` table. With `problems`, a table's error
    is added to it and the table left out, instead of raised (check-config says every
    error of a file at once)."""
    tables = data.get(section, {})
    out: dict[str, _T] = {}
    with _collected(problems):
        if not isinstance(tables, dict):
            raise ConfigError(f"{where}: {section}: expected a table")
        for name, table in tables.items():
            with _collected(problems):
                out[name] = one(name, table)
    return out


def _checked_as(table: Any, kind: type[_C], where: str, key: str) -> _C:
    """`table` as a `kind`, its `check()` passed, each error naming `key`."""
    spec: _C = convert(table, kind, where=where, prefix=key)
    try:
        spec.check()
    except ConfigError as exc:
        raise ConfigError(f"{where}: {key}: {exc}") from None
    return spec


def check_tenants_named(cfg: Config, where: str) -> None:
    """Every agent's and server's tenant is declared (or is the default one)."""
    known = set(cfg.tenants) | {DEFAULT_TENANT}
    kinds: tuple[tuple[str, Mapping[str, AgentSpec | McpServerSpec | ModelSpec]], ...] = (
        ("agents", cfg.agents), ("mcp_servers", cfg.mcp_servers), ("models", cfg.models))
    for kind, specs in kinds:
        for name, spec in specs.items():
            if spec.tenant not in known:
                raise ConfigError(f"{where}: {kind}.{name}.tenant: no tenant "
                                  f"{shown(spec.tenant)} (declared: "
                                  f"{', '.join(sorted(known))})")


def _key_path(exc: msgspec.ValidationError) -> tuple[str, str]:
    """Split msgspec's 'problem - at `$.a.b`' into (problem, 'a.b')."""
    text = str(exc)
    m = re.search(r" - at `\$\.?([^`]*)`$", text)
    if not m:
        return text, ""
    return text[: m.start()], m.group(1)


def convert(data: Any, type: type[Any], *, where: str, prefix: str = "") -> Any:
    """`data` as a `type`, else a ConfigError with every problem of it, one a line (msgspec
    stops at the first: a file with four misspelt keys would take four runs)."""
    try:
        return msgspec.convert(data, type=type, strict=True)
    except msgspec.ValidationError as exc:
        found = every_problem(data, type) or [_key_path(exc)]
        raise ConfigError("\n".join(_said(type, problem, path, where, prefix)
                                     for problem, path in found)) from None


def _said(type_: type[Any], problem: str, path: str, where: str, prefix: str) -> str:
    """One problem as check-config says it, with the values an enum takes, corral's key
    for another tool's or the nearest one."""
    info = _type_at(type_, path)
    if problem.startswith("Invalid enum value") and isinstance(
            info, msgspec.inspect.LiteralType):
        problem += " (valid: " + ", ".join(repr(v) for v in info.values) + ")"
    unknown = re.fullmatch(r"Object contains unknown field `(.*)`", problem)
    if unknown:
        keys = ([f.encode_name for f in info.fields]
                if isinstance(info, msgspec.inspect.StructType) else [])
        other = hint(unknown[1], keys)
        problem += did_you_mean(unknown[1], keys) if other is None else other
    full = ".".join(p for p in (prefix, path) if p)
    return f"{where}: {full or '(top level)'}: {problem}"


def every_problem(data: Any, type_: Any) -> list[tuple[str, str]]:
    """Every problem of `data` as a `type_`, as (problem, key path), each key of a table
    checked alone. Empty when none is found key by key (a check of the whole, such as
    __post_init__'s, failed: the caller says that one)."""
    struct = _struct_of(data, type_)
    if struct is None:
        try:
            msgspec.convert(data, type=type_, strict=True)
        except msgspec.ValidationError as exc:
            return [_key_path(exc)]
        return []
    fields = {f.encode_name: f for f in msgspec.structs.fields(struct)}
    out: list[tuple[str, str]] = []
    for key, value in data.items():
        field = fields.get(key)
        if field is None:
            out.append((f"Object contains unknown field `{key}`", ""))
            continue
        for problem, path in every_problem(value, field.type):
            out.append((problem, f"{key}{path}" if path.startswith("[") or not path
                        else f"{key}.{path}"))
    out += [(f"Object missing required field `{name}`", "")
            for name, f in fields.items() if f.required and name not in data]
    return out


def _struct_of(data: Any, type_: Any) -> type[msgspec.Struct] | None:
    """The Struct a table is read as (`X | None` as X), or None when `data` is not a table
    of one."""
    if not isinstance(data, dict):
        return None
    if typing.get_origin(type_) in (typing.Union, types.UnionType):
        structs = [t for t in typing.get_args(type_) if t is not type(None)]
        type_ = structs[0] if len(structs) == 1 else None
    return type_ if isinstance(type_, type) and issubclass(type_, msgspec.Struct) else None


def _type_at(type_: type[Any], path: str) -> Any:
    """The schema (msgspec.inspect) of what is at `path` (dotted) in `type_`, or None."""
    info: Any = msgspec.inspect.type_info(type_)
    for key in path.split(".") if path else []:
        info = _not_none(info)
        if isinstance(info, msgspec.inspect.StructType):
            info = next((f.type for f in info.fields if f.encode_name == key), None)
        elif isinstance(info, msgspec.inspect.DictType):
            info = info.value_type
        else:
            return None
    return _not_none(info)


def _not_none(info: Any) -> Any:
    while isinstance(info, msgspec.inspect.UnionType):  # e.g. `X | None`
        info = next((t for t in info.types if not isinstance(t, msgspec.inspect.NoneType)),
                    None)
    return info


def validate_name(kind: str, name: str, where: str) -> None:
    problem = name_problem(name, server=kind in ("mcp_servers", "mcpServers"))
    if problem:
        raise ConfigError(f"{where}: {kind}.{shown(name)}: {problem}")


def parse_agents(data: dict[str, Any], where: str,
                 problems: list[str] | None = None) -> dict[str, AgentSpec]:
    """The `[agents.NAME]` tables of a document, validated (used by `corral add` too)."""
    return _each(data, "agents", where, problems, functools.partial(_agent, where))


@contextlib.contextmanager
def _collected(problems: list[str] | None) -> Iterator[None]:
    """A ConfigError inside is added to `problems` (None: raised as it is)."""
    try:
        yield
    except ConfigError as exc:
        if problems is None:
            raise
        problems.append(str(exc))


def _agent(where: str, name: str, table: Any) -> AgentSpec:
    validate_name("agents", name, where)
    spec: AgentSpec = convert(table, AgentSpec, where=where, prefix=f"agents.{name}")
    spec.name = name
    problem = elastic_problem(spec, explicit_replicas="replicas" in table) or \
        protocol_problem(spec)
    if problem:
        raise ConfigError(f"{where}: agents.{name}.{problem}")
    try:
        spec.argv()
    except ConfigError as exc:
        raise ConfigError(f"{where}: agents.{name}.command: {exc}") from None
    try:
        spec.check_health()
    except ConfigError as exc:
        raise ConfigError(f"{where}: agents.{name}.{exc}") from None
    return spec


PLAIN = 'a plain program (protocol = "none")'


def protocol_problem(spec: AgentSpec) -> str | None:
    """What the agent's keys ask that its protocol cannot give ("KEY: problem"), or None."""
    if spec.protocol == "corral":
        if spec.ready is not None:
            return ('ready: is for protocol = "none" (a worker is ready when it answers '
                    "initialize)")
        if spec.watchdog_sec:
            return ('watchdog_sec: is for protocol = "none" (a worker is watched by the '
                    "heartbeat: heartbeat_timeout)")
        return None
    if spec.autoscale is not None or spec.hibernate_after:
        key = "autoscale" if spec.autoscale is not None else "hibernate_after"
        return (f"{key}: {PLAIN} takes no tasks, and an elastic agent follows its task "
                "load: set replicas instead")
    if spec.warm or spec.preload:
        key = "warm" if spec.warm else "preload"
        return (f"{key}: {PLAIN} starts cold (a warm start forks a Python worker from a "
                "zygote that has imported the worker SDK)")
    if spec.placement == "cluster":
        return (f'placement: {PLAIN} runs on this node (a cluster places agents for their '
                "tasks)")
    for kind, c in spec.health.checks() if spec.health is not None else ():
        if not c.probe:
            return (f"health.{kind}: {PLAIN} answers no health/check: give command, tcp "
                    "or http")
    return None


def cluster_problem(spec: AgentSpec, clustered: bool) -> str | None:
    """What forbids the agent's `placement = "cluster"` here ("KEY: problem"), or None."""
    if spec.placement != "cluster":
        return None
    if not clustered:
        return ('placement: "cluster" needs a [cluster] table (this daemon is not a node '
                "of a cluster)")
    if spec.elastic:
        return ('placement: a cluster agent is not elastic yet (autoscale, '
                "hibernate_after)")
    return protocol_problem(spec)


def elastic_problem(spec: AgentSpec, *, explicit_replicas: bool = True) -> str | None:
    """What is wrong with the agent's autoscale bounds ("KEY: problem"), or None. A
    `replicas` the table does not give is brought within them."""
    auto = spec.autoscale
    if auto is None:
        return None
    lo, hi = auto.min_replicas, auto.max_replicas
    if lo > hi:
        return (f"autoscale: min_replicas ({lo}) is above max_replicas ({hi})")
    if not explicit_replicas:
        spec.replicas = auto.within(spec.replicas)
    elif not lo <= spec.replicas <= hi:
        return (f"replicas: {spec.replicas} is outside autoscale's min_replicas..max_replicas "
                f"({lo}..{hi})")
    return None


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        # tomllib's message carries "(at line L, column C)"
        raise ConfigError(f"{path}: syntax error: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None


Spec = TypeVar("Spec", WorkflowSpec, TeamSpec, ScheduleSpec)


def _decoded(data: dict[str, Any], where: str, section: str, spec_type: type[Spec],
             problems: list[str]) -> dict[str, Spec]:
    """The `[SECTION.NAME]` tables, each decoded; a problem goes to `problems`."""
    def one(name: str, table: Any) -> Spec:
        validate_name(section, name, where)
        spec: Spec = convert(table, spec_type, where=where, prefix=f"{section}.{name}")
        return spec

    return _each(data, section, where, problems, one)


def _checked(specs: dict[str, Spec], where: str,
             check: Callable[[str, Spec], object], problems: list[str]) -> dict[str, Spec]:
    """Those of `specs` that `check` passes (its error goes to `problems`)."""
    out: dict[str, Spec] = {}
    for name, spec in specs.items():
        try:
            check(name, spec)
        except (WorkflowError, TeamError, ScheduleError) as exc:
            problems.append(f"{where}: {exc}")
            continue
        out[name] = spec
    return out


def parse_workflows(data: dict[str, Any], where: str, agents: set[str],
                    problems: list[str]) -> dict[str, WorkflowSpec]:
    """Each checked whole against the agents and the other (nested) workflows."""
    specs = _decoded(data, where, "workflows", WorkflowSpec, problems)
    return _checked(specs, where, lambda name, spec: compile_workflow(
        name, spec, agents.__contains__, specs), problems)


def parse_teams(data: dict[str, Any], where: str, agents: dict[str, AgentSpec],
                servers: Collection[str], problems: list[str]) -> dict[str, TeamSpec]:
    tables = data.get("teams", {})
    return _checked(_decoded(data, where, "teams", TeamSpec, problems), where,
                    lambda name, spec: check_team(
                        name, spec, teams=tables, servers=servers, tenant_of=lambda a: (
                            agents[a].tenant if a in agents else None)), problems)


def parse_schedules(data: dict[str, Any], where: str, agents: set[str], workflows: set[str],
                    problems: list[str]) -> dict[str, ScheduleSpec]:
    return _checked(_decoded(data, where, "schedules", ScheduleSpec, problems), where,
                    lambda name, spec: compile_schedule(name, spec, agents, workflows),
                    problems)


def parse_models(data: dict[str, Any], where: str,
                 problems: list[str]) -> dict[str, ModelSpec]:
    """A model's name is as agents' requests give it (dots and slashes allowed)."""
    def one(name: str, table: Any) -> ModelSpec:
        if not MODEL_NAME.match(name):
            raise ConfigError(f"{where}: models.{shown(name)}: a model's name is 1 to 200 "
                              "letters, digits and . _ : / @ + -, beginning with a letter "
                              "or a digit")
        return _checked_as(table, ModelSpec, where, f"models.{name}")

    return _each(data, "models", where, problems, one)


def parse_policy(data: dict[str, Any], where: str, problems: list[str]) -> list[PolicyRule]:
    """Each rule checked alone, its problems named by its place (`policy[2].effect`)."""
    tables = data.get("policy", [])
    if not isinstance(tables, list):
        problems.append(f"{where}: policy: expected an array of tables ([[policy]])")
        return []
    rules: list[PolicyRule] = []
    for i, table in enumerate(tables):
        with _collected(problems):
            rules.append(_checked_as(table, PolicyRule, where, f"policy[{i}]"))
    return rules


def load_config(path: str | os.PathLike[str], commands: bool = False) -> Config:
    """Read the main file and its includes; every error is said at once, one a line. With
    `commands`, a file with errors has its commands checked too and said with them, so
    that `check-config` lists everything at once."""
    path = Path(path)
    data = read_toml(path)
    where = str(path)
    problems: list[str] = []
    errors = functools.partial(_collected, problems)

    def table(key: str, kind: type[_S]) -> _S:
        got = _optional(data, key, kind, where, problems)
        return got if got is not None else kind()

    sup = table("supervisor", SupervisorSettings)
    gateway = table("gateway", GatewaySettings)
    http = table("http", HttpSettings)
    a2a = table("a2a", A2aSettings)
    packages = table("packages", PackagesSettings)
    cluster = _optional(data, "cluster", ClusterSettings, where, problems)
    if cluster is not None:
        with errors():
            cluster.check(where)
    tracing = _optional(data, "tracing", TracingSettings, where, problems)
    approvals = _optional(data, "approvals", ApprovalsSettings, where, problems)
    if approvals is not None:
        with errors():
            approvals.check()
    tables = [f.encode_name for f in msgspec.structs.fields(Config)]
    for key in sorted(set(data) - set(tables)):
        problems.append(f"{where}: {key}: unknown top-level key{did_you_mean(key, tables)}")
    agents = parse_agents(data, where, problems)
    tenants = parse_tenants(data, where, problems)
    declared = data.get("mcp_servers", {})
    overlays = {n: t for n, t in declared.items() if isinstance(t, dict)
                and "command" not in t and "url" not in t} if isinstance(declared, dict) else {}
    for name in overlays:
        with errors():
            validate_name("mcp_servers", name, where)
    servers = parse_servers({"mcp_servers": {n: t for n, t in declared.items()
                                             if n not in overlays}}
                            if overlays else data, where, problems)
    # which file declared each name, so a second declaration can say where the first is
    origin = {f"agents.{n}": where for n in agents} | {f"mcp_servers.{n}": where
                                                       for n in servers}
    base = path.parent
    for pattern in sup.include:
        for inc in sorted(glob.glob(str(base / pattern))):
            with errors():
                _include(Path(inc), agents, servers, origin, problems)
    if sup.mcp_servers_file:
        mpath = Path(sup.mcp_servers_file)
        mpath = mpath if mpath.is_absolute() else base / mpath
        with errors():
            for name, sspec in load_mcp_servers_file(mpath).items():
                if name in servers:
                    raise ConfigError(f"{mpath}: mcpServers.{name}: already defined in {path}")
                servers[name] = sspec
        # [mcp_servers.NAME] tables without command or url tune imported servers
        for name, overlay in overlays.items():
            with errors():
                if name not in servers:
                    raise ConfigError(f"{where}: mcp_servers.{name}: needs a command or a "
                                      f"url (no server {name} in {mpath} to apply it to)")
                merged = {**msgspec.to_builtins(servers[name]), **overlay}
                servers[name] = _server(name, merged, where, f"mcp_servers.{name}")
    else:
        for name in overlays:
            problems.append(f"{where}: mcp_servers.{name}: needs a command or a url")
    order = order_problem(agents)
    if order is not None:
        problems.append(f"{origin[f'agents.{order[0]}']}: agents.{order[0]}.{order[1]}: "
                        f"{order[2]}")
    for name, aspec in agents.items():
        problem = isolation_problem(aspec, gateway, tenants.get(aspec.tenant)) or \
            cluster_problem(aspec, cluster is not None)
        if problem:
            problems.append(f"{origin[f'agents.{name}']}: agents.{name}.{problem}")
    workflows = parse_workflows(data, where, set(agents), problems)
    teams = parse_teams(data, where, agents, servers, problems)
    problems += _skill_twins(skill_names(gateway, base), agents, teams, origin, where)
    schedules = parse_schedules(data, where, set(agents), set(workflows), problems)
    models = parse_models(data, where, problems)
    policy = parse_policy(data, where, problems)
    a2a_agents = parse_a2a_agents(data, where, servers, base, problems)
    _resolve_paths(base, agents, servers, tenants, packages)
    if problems and commands:
        problems += command_problems(agents, servers, origin, where)
    if problems:
        raise ConfigError("\n".join(problems))
    cfg = Config(supervisor=sup, agents=agents, mcp_servers=servers, gateway=gateway, http=http,
                 a2a=a2a, packages=packages, cluster=cluster, tenants=tenants, tracing=tracing,
                 approvals=approvals, workflows=workflows, teams=teams, schedules=schedules,
                 models=models, policy=policy, a2a_agents=a2a_agents)
    check_tenants_named(cfg, where)
    return cfg


def _optional(data: dict[str, Any], key: str, kind: type[_S], where: str,
              problems: list[str]) -> _S | None:
    """The `[KEY]` table as a `kind`; None when absent, or refused (said in `problems`)."""
    if key not in data:
        return None
    with _collected(problems):
        got: _S = convert(data[key], kind, where=where, prefix=key)
        return got
    return None


def _resolve_paths(base: Path, agents: dict[str, AgentSpec], servers: dict[str, McpServerSpec],
                   tenants: dict[str, TenantSpec], packages: PackagesSettings) -> None:
    """A process runs where the file that declares it is, unless told otherwise; a
    cluster agent's table is the cluster's: each node resolves its paths against its own
    config file's directory when it runs it."""
    local = [a for a in agents.values() if a.placement != "cluster"]
    for pspec in [*local, *servers.values()]:
        pspec.cwd = str((base / pspec.cwd).resolve()) if pspec.cwd else default_cwd(
            tenants.get(getattr(pspec, "tenant", DEFAULT_TENANT)), str(base.resolve()))
    for aspec in local:
        aspec.sandbox_paths = [str((base / sp).resolve()) for sp in aspec.sandbox_paths]
        aspec.read_paths = [str((base / sp).resolve()) for sp in aspec.read_paths]
        aspec.write_paths = [str((base / sp).resolve()) for sp in aspec.write_paths]
    for sspec in servers.values():
        sspec.roots = [r if "://" in r else str((base / r).resolve()) for r in sspec.roots]
    if packages.dir is not None:
        packages.dir = str((base / packages.dir).resolve())
    if packages.cache_dir is not None:
        packages.cache_dir = str((base / packages.cache_dir).resolve())


def _include(inc: Path, agents: dict[str, AgentSpec], servers: dict[str, McpServerSpec],
             origin: dict[str, str], problems: list[str]) -> None:
    idata = read_toml(inc)
    bad = set(idata) - {"agents", "mcp_servers"}
    if bad:
        key = sorted(bad)[0]
        raise ConfigError(f"{inc}: {key}: not allowed in an included file (it holds "
                          f"[agents] and [mcp_servers] tables)"
                          f"{did_you_mean(key, ['agents', 'mcp_servers'])}")
    for name, spec in parse_agents(idata, str(inc), problems).items():
        with _collected(problems):
            _define(origin, f"agents.{name}", str(inc))
            agents[name] = spec
    for name, sspec in parse_servers(idata, str(inc), problems).items():
        with _collected(problems):
            _define(origin, f"mcp_servers.{name}", str(inc))
            servers[name] = sspec


def skill_twin(names: Iterable[str], skills: Iterable[str], kind: str = "agent"
               ) -> str | None:
    """The first agent (or team: `kind`) named as one of the operator's own skills
    (`[gateway] skills_dir`), as `agents.NAME: problem`, or None. Both are the server
    corral's, so an allowlist's `corral__NAME` would admit starting the one's tasks and
    reading the other (decision 1741): each name names one thing."""
    both = sorted(set(names) & set(skills))
    if not both:
        return None
    name = both[0]
    return (f"{kind}s.{name}: its name is the operator's skill {name}'s too ([gateway] "
            f"skills_dir): an allowlist's corral__{name} would admit both starting the "
            f"{kind}'s tasks and reading the skill; rename one")


def skill_names(gateway: GatewaySettings, base: Path) -> list[str]:
    """The names of the operator's own skills, as ownskills.py reads `skills_dir` (each a
    directory, not a link, named as its skill): none where it is unset or no directory
    (the gateway says that, reading it)."""
    if not gateway.skills_dir:
        return []
    root = base / gateway.skills_dir
    return [sub.name for sub in root.iterdir() if sub.is_dir() and not sub.is_symlink()] \
        if root.is_dir() else []


def _skill_twins(skills: list[str], agents: Mapping[str, Any], teams: Mapping[str, Any],
                 origin: dict[str, str], where: str) -> list[str]:
    """The first agent and the first team named as one of the operator's skills, each
    said where it is declared (`skill_twin`)."""
    twins = [(skill_twin(agents, skills), origin), (skill_twin(teams, skills, "team"), {})]
    return [f"{found.get(twin.split(':')[0], where)}: {twin}"
            for twin, found in twins if twin is not None]


def isolation_problem(spec: AgentSpec, gateway: GatewaySettings,
                      tenant: TenantSpec | None = None) -> str | None:
    """What is wrong with an agent's isolation keys, as `KEY: problem`, or None."""
    iso = isolation(spec, tenant)
    if iso.sandbox == "none" and iso.network != "host":
        return (f'network: network = "{iso.network}" needs sandbox = "bwrap" (without a '
                f"sandbox an agent shares the host's network)")
    for kind, c in spec.health.checks() if spec.health is not None else ():
        for key in ("tcp", "http"):
            if getattr(c, key) is not None and iso.network != "host":
                return (f'health.{kind}.{key}: connects from the host, which cannot reach '
                        f'the agent\'s own network (network = "{iso.network}"): use a '
                        "command check")
    if iso.network == "gateway" and gateway_socket(gateway) is None:
        return ('network: network = "gateway" needs [gateway] listen = "unix:PATH" (its '
                "socket is the only one bound into the sandbox's empty network namespace)")
    if iso.network == "gateway" and not gateway.agent_tokens:
        return ('network: network = "gateway" needs [gateway] agent_tokens = true (the '
                "agent is given the gateway's socket with its own token)")
    if iso.network == "gateways" and not local_listen(gateway.listen):
        return ('egress: egress = "gateways" needs [gateway] listen on a loopback address '
                'or "unix:PATH" (the gateways are relayed into the sandbox\'s empty '
                "network namespace from there)")
    if iso.network == "gateways" and not gateway.agent_tokens:
        return ('egress: egress = "gateways" needs [gateway] agent_tokens = true (the '
                "agent reaches the gateways with its own token)")
    return None


def config_files(cfg: Config, path: Path) -> list[tuple[str, str]]:
    """The files corral reads its own orders from, as (path, what it is): a sandboxed
    agent may not hold one in its writable directory (it would rewrite them), nor reach
    one through what it may read (sandbox.py masks them)."""
    base = path.parent
    out = [(str(path.absolute()), "corral's config file")]
    out += [(str((base / pattern).parent.absolute()), "the config's includes")
            for pattern in cfg.supervisor.include]
    for file, what in ((cfg.supervisor.mcp_servers_file, "the MCP servers file"),
                       (cfg.gateway.tokens_file, "the gateway's tokens file"),
                       (cfg.cluster.key_file if cfg.cluster else None, "the cluster's key")):
        if file:
            out.append((str((base / file).absolute()), what))
    # a provider's key is corral's to hold (docs/security.md): masked as its config is, in
    # a root agent's read_paths too (issue 88)
    out += [(str((base / m.key_file).absolute()), f"model {name}'s key_file")
            for name, m in cfg.models.items() if m.key_file]
    return out


def check_sandboxes(agents: dict[str, AgentSpec], program: str, where: str,
                    protected: Iterable[tuple[str, str]] = (),
                    tenants: Mapping[str, TenantSpec] | None = None,
                    dynamic: range | None = None) -> None:
    """Every agent's user may reach its command and cwd (runas.reach_refusal; `dynamic`:
    the uids of agents naming no user), every sandboxed agent can be sandboxed on this
    host (bubblewrap there, and user namespaces allowed where it needs them), and its
    writable directory holds none of corral's own files (`protected`), else a
    ConfigError saying why."""
    protected = list(protected)
    for name, spec in agents.items():
        tenant = (tenants or {}).get(spec.tenant)
        why = reach_refusal(spec, tenant, dynamic)
        if why:
            raise ConfigError(f"{where}: agents.{name}.user: {why}")
        if isolation(spec, tenant).sandbox != "bwrap":
            continue
        try:
            user = resolved_user(spec.user or (tenant.user if tenant else None))
        except ConfigError:
            user = None  # a ${VARIABLE} unset: its start is refused, saying so
        egress = isolation(spec, tenant).egress
        # (an egress sandbox's socket filter is one of its layers: none built, it fails
        # closed as a missing sandbox does)
        why = host_refusal(program, user) or (no_filter() if egress != "any" else None)
        if why and egress != "any":
            if spec.egress_fallback == "warn":
                continue  # it starts unenforced, saying so (replica.py)
            raise ConfigError(
                f'{where}: agents.{name}.egress: egress = "{egress}" cannot be enforced on '
                f'this host: {why} (egress_fallback = "warn" runs it unenforced)')
        if why:
            raise ConfigError(f"{where}: agents.{name}.sandbox: {why}")
        for key, place in (("cwd", spec.cwd or os.getcwd()),
                           *(("write_paths", w) for w in spec.write_paths)):
            why = exposed(place, protected)
            if why:
                raise ConfigError(f"{where}: agents.{name}.{key}: {why}")


def _define(origin: dict[str, str], key: str, where: str) -> None:
    if key in origin:
        raise ConfigError(f"{where}: {key}: already defined in {origin[key]}")
    origin[key] = where


def check_command(spec: ProcessSpec) -> str | None:
    """Why `spec`'s command cannot be run here, or None. A name is looked up on the
    agent's own PATH if its env sets one, as exec would."""
    program = spec.argv()[0]
    if "/" in program:
        # joined as str, shown as pathlib would: pathlib interns each part it parses, and
        # this runs at every add and reload of an agent
        path = plain(program if os.path.isabs(program)
                     else os.path.join(spec.cwd or ".", program))
        if not os.path.isfile(path):
            return f"{program}: no such file ({path})"
        if not os.access(path, os.X_OK):
            return f"{program}: not executable ({path})"
        return None
    search = spec.env.get("PATH", os.environ.get("PATH", os.defpath))
    if shutil.which(program, path=search) is None:
        return f"{program}: not an executable on PATH ({search})"
    return None


def command_problems(agents: Mapping[str, AgentSpec], servers: Mapping[str, McpServerSpec],
                     origin: Mapping[str, str], where: str) -> list[str]:
    problems: list[str] = []
    for kind, specs in (("agents", agents), ("mcp_servers", servers)):
        for name, pspec in specs.items():
            if kind == "mcp_servers" and not pspec.command:
                continue
            key = f"{kind}.{name}"
            with _collected(problems):
                why = check_command(pspec)
                if why:
                    problems.append(f"{origin.get(key, where)}: {key}.command: {why}")
    return problems


def check_commands(cfg: Config, where: str) -> None:
    problems = command_problems(cfg.agents, cfg.mcp_servers, {}, where)
    if problems:
        raise ConfigError("\n".join(problems))
    check_sandboxes(cfg.agents, cfg.supervisor.bwrap, where, config_files(cfg, Path(where)),
                    cfg.tenants, uid_range(cfg.supervisor.dynamic_uids))


# what the clients write of a server that is theirs alone, and why corral has no place for
# it: passed over here, said by `corral import`
CLIENT_KEYS: dict[str, str | None] = {
    "autoApprove": "corral asks for approval by its own policies ([approvals])",
    "alwaysAllow": "corral asks for approval by its own policies ([approvals])",
    "timeout": "a client's own timeout; corral's is the server's `timeout` (seconds)",
    "description": None, "gallery": None, "version": None, "name": None,
}
# the keys of a client's server corral carries (Cursor's envFile, Windsurf's serverUrl)
CARRIED = frozenset({"command", "args", "env", "cwd", "url", "serverUrl", "headers", "type",
                     "transport", "disabled", "envFile"})
TRANSPORTS = {"stdio": "stdio", "http": "http", "streamable-http": "http",
              "streamableHttp": "http", "sse": "sse"}
UNKNOWN = "not a key corral import knows of an MCP server"
Note = Callable[[str, str], None]


def client_server(entry: Any, where: str, base: Path, note: Note | None = None
                  ) -> dict[str, Any] | None:
    """One server of a desktop MCP client's file as a `[mcp_servers.NAME]` table (None: it
    is disabled), for `mcp_servers_file` and for `corral import` (importer/mcpjson.py).
    `base`: the file's directory, where a relative envFile is. `note(key, why)` is told
    what is not carried, and what is with an effect to know of; without it (the daemon's
    own file) a key no client writes is refused."""
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: expected an object")
    if entry.get("disabled") is True:
        if note is not None:
            note("disabled", "true: not imported (the client does not start it)")
        return None
    url, command = entry.get("url") or entry.get("serverUrl"), entry.get("command")
    if (command is None) == (url is None):
        raise ConfigError(f"{where}: give either command (a local server) or url (a "
                          "remote one)")
    table: dict[str, Any] = {}
    said = "type" if "type" in entry else "transport"
    kind = entry.get(said)
    if kind is not None:
        if kind not in TRANSPORTS:
            raise ConfigError(f"{where}: {said}: {json.dumps(kind)} is not one of "
                              f"{', '.join(TRANSPORTS)}")
        if TRANSPORTS[kind] != "stdio" or url is not None:  # (stdio: a command's own)
            table["transport"] = TRANSPORTS[kind]
    if command is not None:
        if "headers" in entry:
            raise ConfigError(f"{where}.headers: headers are for a url, not a command")
        # a list: a command string would be split at its spaces (a path may hold one)
        table["command"] = [_text(command, where, "command")]
        args = entry.get("args", [])
        if not isinstance(args, list):
            raise ConfigError(f"{where}: args: expected a list")
        table["args"] = [_text(a, where, "args") for a in args]
        if "cwd" in entry:
            table["cwd"] = _text(entry["cwd"], where, "cwd")
        env = _pairs(entry.get("env", {}), where, "env")
        if env:
            table["env"] = env
        if "envFile" in entry:
            env_file = _text(entry["envFile"], where, "envFile")
            table["env_file"] = [str(base.resolve() / env_file)]
            if note is not None:  # (what it holds is read at each start, unseen here: said)
                note("envFile", f"{json.dumps(env_file)}: carried as env_file: the server "
                                "is given every variable that file holds when it starts, as "
                                "the daemon reads it")
    else:
        if any(k in entry for k in ("args", "env", "envFile", "cwd")):
            raise ConfigError(f"{where}: args, env, envFile and cwd are for a command, not "
                              "a url")
        table["url"] = _text(url, where, "url")
        headers = _pairs(entry.get("headers", {}), where, "headers")
        if headers:
            table["headers"] = headers
        sent = [(header, variable) for header, value in headers.items()
                for variable in sorted({m[1] for m in VARIABLE.finditer(value)})]
        if note is not None:
            for header, variable in sent:
                note(f"headers.{header}", f"${{{variable}}}: the daemon's environment "
                     f"variable {variable} is sent to {table['url']} in it (not set, the "
                     "server is not reached, the daemon saying so)")
    for k, v in entry.items():
        if k in CARRIED:
            continue
        why = CLIENT_KEYS.get(k, UNKNOWN)
        if note is None and why is UNKNOWN:
            raise ConfigError(f"{where}: Object contains unknown field `{k}`")
        if note is not None and why is not None:
            note(k, f"{json.dumps(v)}: not carried: {why}")
    return table


def _text(v: Any, where: str, key: str) -> str:
    if isinstance(v, bool) or not isinstance(v, (str, int, float)):
        raise ConfigError(f"{where}: {key}: {json.dumps(v)} is not a text")
    return v if isinstance(v, str) else json.dumps(v)


def _pairs(v: Any, where: str, key: str) -> dict[str, str]:
    if not isinstance(v, dict):
        raise ConfigError(f"{where}: {key}: expected an object of names and texts")
    return {str(k): _text(x, where, f"{key}.{k}") for k, x in v.items()}


def load_mcp_servers_file(path: Path) -> dict[str, McpServerSpec]:
    try:
        data = msgspec.json.decode(path.read_bytes())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except msgspec.DecodeError as exc:
        raise ConfigError(f"{path}: not JSON: {exc}") from None
    entries = data.get("mcpServers") if isinstance(data, dict) else None
    if not isinstance(entries, dict):
        raise ConfigError(f"{path}: mcpServers: expected an object of servers")
    out: dict[str, McpServerSpec] = {}
    for name, entry in entries.items():
        validate_name("mcpServers", name, str(path))
        key = f"mcpServers.{name}"
        table = client_server(entry, f"{path}: {key}", path.parent)
        if table is not None:
            out[name] = _server(name, table, str(path), key)
    return out


def parse_a2a_agents(data: dict[str, Any], where: str, servers: dict[str, McpServerSpec],
                     base: Path, problems: list[str]) -> dict[str, A2aAgentSpec]:
    """The `[a2a_agents.NAME]` tables, and their server put among `servers`."""
    agents = _each(data, "a2a_agents", where, problems, functools.partial(_a2a_agent, where))
    if agents and A2A_SERVER in servers:
        problems.append(f"{where}: mcp_servers.{A2A_SERVER}: the name is [a2a_agents]' "
                        f"server (their tools are {A2A_SERVER}__NAME): give it another")
    elif agents:
        servers[A2A_SERVER] = a2a_server(agents, base)
    return agents


def _a2a_agent(where: str, name: str, table: Any) -> A2aAgentSpec:
    validate_name("a2a_agents", name, where)
    return _checked_as(table, A2aAgentSpec, where, f"a2a_agents.{name}")


def _server(name: str, table: dict[str, Any], where: str, key: str) -> McpServerSpec:
    spec = _checked_as({k: v for k, v in table.items() if v is not None and k != "name"},
                       McpServerSpec, where, key)
    spec.name = name
    return spec


def parse_servers(data: dict[str, Any], where: str,
                  problems: list[str] | None = None) -> dict[str, McpServerSpec]:
    def one(name: str, table: Any) -> McpServerSpec:
        validate_name("mcp_servers", name, where)
        if not isinstance(table, dict):
            raise ConfigError(f"{where}: mcp_servers.{name}: expected a table")
        return _server(name, table, where, f"mcp_servers.{name}")

    return _each(data, "mcp_servers", where, problems, one)

