"""supervisord's INI files as supervisord reads them (RawConfigParser, `[include]`,
`%(name)s` expansions), each `[program:x]` a plain program (`protocol = "none"`);
docs/migrating.md says how each key is carried."""

from __future__ import annotations

import configparser
import glob
import json
import platform
import re
import shlex
from pathlib import Path
from typing import Any, NamedTuple

from ..othernames import target
from ..supervisor.config import ConfigError
from .model import RUN_AS_ROOT, USER_RE, Conversion, How, config_text, named_text, whole

PROGRAM_KEYS_CARRIED = (
    "command", "process_name", "numprocs", "numprocs_start", "directory", "environment",
    "user", "autostart", "autorestart", "exitcodes", "startsecs", "startretries",
    "stopsignal", "stopwaitsecs", "priority", "stopasgroup", "killasgroup",
    "stdout_logfile", "stdout_logfile_maxbytes", "stdout_logfile_backups",
    "redirect_stderr", "depends_on", "dependent_startup_wait_for", "dependent_startup",
)
# not supervisord's own: the start order its plugins (and many images' files) give
DEPENDS = ("depends_on", "dependent_startup_wait_for")
_SIZE = re.compile(r"\s*(\d+)\s*(KB|MB|GB)?\s*", re.IGNORECASE)
_SIZES = {"": 1, "KB": 1024, "MB": 1024 ** 2, "GB": 1024 ** 3}
ONE_LOG = "corral writes a program's stderr with its stdout, to one log"
# what else a [program:x] may say, and why it is not carried
NOT_CARRIED = {
    "stderr_logfile": ONE_LOG, "stderr_logfile_maxbytes": ONE_LOG,
    "stderr_logfile_backups": ONE_LOG,
    **{f"{stream}_{key}": why for stream in ("stdout", "stderr") for key, why in (
        ("capture_maxbytes", "corral has no capture mode (supervisor events)"),
        ("events_enabled", "corral sends no supervisor events"),
        ("syslog", "corral sends agents' lines to the systemd journal (log_journal), not "
                   "syslog"))},
    "umask": "corral sets no umask of its own: the process inherits the daemon's",
    "serverurl": "supervisorctl's; corral's CLI finds the daemon's socket itself",
}
# [supervisord] keys about supervisord itself, not its programs
DAEMON_ONLY = {"nodaemon", "identifier", "nocleanup", "silent", "strip_ansi"}
# those of supervisord's own output and files, each said: corral has its own
_OWN_LOG = ("supervisord's own log; corral's daemon logs to its stderr (the journal "
            "under systemd)")
DAEMON_OWN = {
    "logfile": _OWN_LOG, "logfile_maxbytes": _OWN_LOG, "logfile_backups": _OWN_LOG,
    "loglevel": _OWN_LOG,
    "pidfile": "corral writes no pid file of its own (systemd, or `corral status`, "
               "knows its pid)",
    "childlogdir": "programs' logs (AUTO) are in corral's [supervisor] log_dir",
}
SIGNALS = ("TERM", "HUP", "INT", "QUIT", "KILL", "USR1", "USR2")
_PROCESS_NUM = re.compile(r"%\(process_num\)([-#0 +]*\d*)d")
_RESTART = {"true": "always", "false": "never", "unexpected": "on-failure"}


def read(path: Path, how: How) -> Conversion:
    """The programs of a supervisord config file and the files it includes."""
    missing: list[str] = []
    parser = _parser()
    _read(parser, path, set(), missing)
    imp = Conversion(str(path), "supervisord")
    for pattern in missing:
        imp.note("[include]", "files", f"{pattern}: no file here matches it: not read "
                                       "(its programs are not imported; give them too)")
    here = str(path.parent.resolve())
    base = {f"ENV_{k}": v for k, v in how.env.items()} | {
        "here": here, "host_node_name": platform.node()}
    common = _daemon_section(parser, imp, base)
    groups = _groups(parser, imp)
    priorities: dict[str, tuple[int, str, list[str]]] = {}
    listeners: list[str] = []
    for section in parser.sections():
        kind, _, name = section.partition(":")
        if kind == "program" and name:
            try:
                _program(parser, section, name, imp, base, common,
                         groups.get(name, name), priorities)
            except ConfigError as exc:
                raise ConfigError(f"{imp.source}: {exc}") from None
        elif kind == "eventlistener" and _on_fatal(parser, section):
            listeners.append(section)
        elif kind in ("eventlistener", "fcgi-program"):
            imp.note(f"[{section}]", "(section)", _SECTIONS_NOT_CARRIED[kind])
        elif kind not in ("program", "group", "supervisord", "include", "unix_http_server",
                          "inet_http_server", "supervisorctl", "rpcinterface",
                          "ctlplugin"):
            imp.note(f"[{section}]", "(section)", "not a section supervisord knows: "
                                                  "not carried")
    _chain(priorities, imp)
    for section in listeners:
        _fatal(section, imp)
    return imp


def _on_fatal(parser: configparser.RawConfigParser, section: str) -> bool:
    """Whether an event listener hears a program's PROCESS_STATE_FATAL: the listener a
    container plants to stop supervisord when a program fails for good."""
    events = parser.get(section, "events", fallback="").replace(",", " ").split()
    return "PROCESS_STATE_FATAL" in events or "PROCESS_STATE" in events


def _fatal(section: str, imp: Conversion) -> None:
    """A listener of PROCESS_STATE_FATAL as `fatal = true` on every program (the event
    is any program's: the listener's own code says what it does with it)."""
    for table in imp.agents.values():
        table["fatal"] = True
    imp.note(f"[{section}]", "events", "PROCESS_STATE_FATAL: fatal = true on every "
             "program (the daemon stops, exit status 1, when one fails for good): as a "
             "listener that stops supervisord does; its command is not run, check that is "
             "what it did")


def _chain(priorities: dict[str, tuple[int, str, list[str]]], imp: Conversion) -> None:
    """supervisord's priorities as start order: an agent starts after those of the
    priority just below its own are up (supervisord only started them first)."""
    levels = sorted({p for p, _, _ in priorities.values()})
    programs = {where.removeprefix("[program:").removesuffix("]"): n
                for n, (_, where, _) in priorities.items()}
    for name, (prio, where, needs) in priorities.items():
        below = levels.index(prio)
        before = [] if below == 0 else sorted(
            n for n, (p, _, _) in priorities.items() if p == levels[below - 1])
        if before:
            imp.note(where, "priority", f"{prio}: after = [{', '.join(before)}] (started "
                                        "once they are up; supervisord only started them "
                                        "first)")
        for program in needs:
            other = programs.get(program)
            if other is None or other == name:
                imp.note(where, "depends_on", f"{program}: not carried: not a program of "
                                              "this file")
            else:
                before += [] if other in before else [other]
                imp.note(where, "depends_on", f"{program}: after = [{other}] (a plugin's "
                                              "key, which supervisord alone passes over)")
        if before:
            imp.agents[name]["after"] = before


_SECTIONS_NOT_CARRIED = {
    "eventlistener": "not carried: corral sends no supervisor events to a listener (one "
                     "of PROCESS_STATE_FATAL is carried as fatal = true)",
    "fcgi-program": "not carried: corral does not hold a FastCGI socket for its programs",
}


def _parser() -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(inline_comment_prefixes=(";", "#"),
                                          strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys as written
    return parser


def _read(parser: configparser.RawConfigParser, path: Path, seen: set[Path],
          missing: list[str], by: str | None = None) -> None:
    """`path` into `parser`, then the files its [include] names (relative to it); a
    pattern that matches none put in `missing`. An included file (`by` the file naming
    it) is read only where it is a regular file in the directory its pattern names
    (model.named_text)."""
    real = path.resolve()
    if real in seen:
        return
    seen.add(real)
    text = named_text(path, by) if by is not None else config_text(path)
    included = _parser()
    try:
        included.read_string(text, str(path))
    except configparser.Error as exc:
        raise ConfigError(f"{path}: not an INI file supervisord reads: "
                          f"{str(exc).splitlines()[0]}") from None
    files = included.get("include", "files", fallback="")
    for section in included.sections():
        if section == "include":
            continue
        if not parser.has_section(section):
            parser.add_section(section)
        for k, v in included[section].items():
            # %(here)s is the directory of the file that says it
            parser.set(section, k, v.replace("%(here)s", str(path.parent.resolve())))
    for pattern in files.split():
        full = pattern if pattern.startswith("/") else str(path.parent / pattern)
        found = sorted(glob.glob(full))
        if not found:
            missing.append(pattern)
        for inc in found:
            _read(parser, Path(inc), seen, missing, f"{path}: [include] files")


def expand(text: str, expansions: dict[str, Any], where: str) -> str:
    """supervisord's `%(name)s` expansion of one value (`%%` is `%`)."""
    try:
        return text % expansions
    except KeyError as exc:
        names = ", ".join(sorted(k for k in expansions if not k.startswith("ENV_")))
        raise ConfigError(f"{where}: {text!r} names {exc} which cannot be expanded "
                          f"(names there: ENV_*, {names})") from None
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{where}: {text!r} is badly formatted: {exc}") from None


class Common(NamedTuple):
    """What [supervisord] gives every program: its environment, and its user (the one
    supervisord switched to as it started, and so ran them as)."""

    env: dict[str, str]
    user: str | None


def _daemon_section(parser: configparser.RawConfigParser, imp: Conversion,
                    base: dict[str, Any]) -> Common:
    """[supervisord]'s environment and user (every program's), and a note for each
    setting of it that changes what its programs do or where its own output went."""
    if not parser.has_section("supervisord"):
        return Common({}, None)
    env: dict[str, str] = {}
    user: str | None = None
    try:
        for k, v in parser["supervisord"].items():
            if k == "environment":
                env = environment_of(v, base, "[supervisord]", imp)
            elif k == "user":
                user = user_of(v, base, "[supervisord]", imp)
                if user in ("root", "0"):
                    imp.note("[supervisord]", k, f"{user}: not carried: a program "
                                                 "naming no user runs as a uid of its own under "
                                                 'a root daemon (dynamic_uids); user = "root" '
                                                 "keeps one root")
                    user = None
                elif user:
                    imp.note("[supervisord]", k, f"{user}: user = {json.dumps(user)} on "
                                                 "each program that names no user of its "
                                                 "own (supervisord ran as it, and them)")
            elif k in DAEMON_OWN:
                imp.note("[supervisord]", k, f"{v!r}: not carried: {DAEMON_OWN[k]}")
            elif k not in DAEMON_ONLY:
                imp.note("[supervisord]", k, "not carried: a setting of supervisord "
                                             "itself (corral's own are [supervisor] in "
                                             "corral.toml)")
    except ConfigError as exc:
        raise ConfigError(f"{imp.source}: {exc}") from None
    return Common(env, user)


# a variable of the environment in a user: supervisord's own, and a start script's
_USER_VARIABLE = re.compile(r"%\(ENV_([A-Za-z_][A-Za-z0-9_]*)\)s|\$\{([A-Za-z_][A-Za-z0-9_]*)\}"
                            r"|\$([A-Za-z_][A-Za-z0-9_]*)")


def user_of(text: str, ex: dict[str, Any], where: str, imp: Conversion) -> str:
    """A user= with its `%(name)s` expanded now, but a variable of the environment
    (`%(ENV_X)s`, `$X`) carried as `${X}`: read from the daemon's environment as the
    program starts, as supervisord reads it from its own, never from the importing
    shell's; the start is refused while it is unset (the program would run as root)."""
    named: list[str] = []

    def mark(m: re.Match[str]) -> str:
        named.append(m[1] or m[2] or m[3])
        return f"\0{named[-1]}\0"

    try:
        user = expand(_USER_VARIABLE.sub(mark, text), ex, f"{where} user").strip()
    except ConfigError as exc:
        raise ConfigError(f"{where}: user: {text!r} cannot be resolved "
                          f"({str(exc).split(': ', 1)[-1]}): {RUN_AS_ROOT}") from None
    user = re.sub("\0([^\0]*)\0", r"${\1}", user)
    if user and not USER_RE.fullmatch(re.sub(r"\$\{\w+\}", "x", user)):
        raise ConfigError(f"{where}: user: {user!r} is not a user's name or number: "
                          f"{RUN_AS_ROOT}")
    if named:
        imp.note(where, "user", f"{text}: user = {json.dumps(user)}, "
                 f"{', '.join(dict.fromkeys(named))} read from the daemon's environment as "
                 "the program starts (as supervisord reads it from its own): its start is "
                 "refused while unset")
    return user


def _groups(parser: configparser.RawConfigParser, imp: Conversion) -> dict[str, str]:
    out: dict[str, str] = {}
    for section in parser.sections():
        kind, _, group = section.partition(":")
        if kind != "group":
            continue
        for program in parser.get(section, "programs", fallback="").split(","):
            if program.strip():
                out[program.strip()] = group
        imp.note(f"[{section}]", "programs", "not carried: corral has no groups (start, "
                 "stop and restart each agent, or all: `corral start --all`)")
        if parser.has_option(section, "priority"):
            imp.note(f"[{section}]", "priority", "not carried: corral has no groups to "
                                                 "order (a program's own priority is "
                                                 "carried as after)")
    return out


# %(ENV_X)s in an environment value: marked (of env_pairs' word characters) to be read
# where the program starts, never expanded with the importing shell's value (issue 88)
_ENV_REF = re.compile(r"%\(ENV_([A-Za-z_][A-Za-z0-9_]*)\)s")
_MARKED = re.compile(r"\{corral-env:([A-Za-z_][A-Za-z0-9_]*)\}")


def _marked(text: str) -> str:
    return _ENV_REF.sub(lambda m: "{corral-env:" + m[1] + "}", text)


def environment_of(text: str, ex: dict[str, Any], where: str, imp: Conversion
                   ) -> dict[str, str]:
    """An environment=, its `%(name)s` expanded now but for `%(ENV_X)s`, kept marked
    (`_read_at_start`)."""
    env = env_pairs(expand_value(_marked(text), ex, where, "environment", imp) or "",
                    where)
    dollars(env, where, imp)
    return env


def _read_at_start(command: str | list[str], values: dict[str, str], directory: str,
                   where: str, imp: Conversion) -> list[str]:
    """The command under `sh -c`, which goes to `directory` and sets each of `values` as
    the program starts, their `%(ENV_X)s` read from the daemon's environment then (as
    supervisord reads its own as it starts), not from the shell corral import ran in."""
    def quoted(text: str, unset: str = "") -> str:
        parts = _MARKED.split(text)
        return "".join("${" + p + unset + "}" if n % 2 else
                       re.sub(r'([\\"$`])', r"\\\1", p) for n, p in enumerate(parts))

    def said(text: str) -> str:
        return _MARKED.sub(lambda m: "%(ENV_" + m[1] + ")s", text)

    def read(texts: list[str]) -> str:
        names = sorted({n for t in texts for n in _MARKED.findall(t)})
        return (f"{', '.join(names)} read from the daemon's environment then (as "
                "supervisord reads it from its own), not where corral import ran")

    if directory:
        imp.note(where, "directory", f"{said(directory)}: gone to as the program starts, "
                                     f"by `sh -c`, {read([directory])}")
    if values:
        imp.note(where, "environment", ", ".join(f"{k}={said(v)}" for k, v in values.items())
                 + f": set as the program starts, by `sh -c`, {read(list(values.values()))}")
    assigns = [f'"{quoted(f"{k}={v}")}"' for k, v in values.items()]
    # a directory not set: the start fails saying so (supervisord would not start it)
    gone = quoted(directory, ":?not set in the daemon's environment")
    run = (f'cd "{gone}" && ' if directory else "") + "exec " + \
        (f"env {' '.join(assigns)} " if assigns else "")
    if isinstance(command, list) and command[:2] == ["sh", "-c"] and len(command) == 3 \
            and command[2].startswith("exec "):  # _command's script: one shell is enough
        return ["sh", "-c", run + command[2][len("exec "):]]
    argv = shlex.split(command) if isinstance(command, str) else list(command)
    return ["sh", "-c", run + '"$0" "$@"', *argv]


def dollars(env: dict[str, str], where: str, imp: Conversion) -> None:
    """Each value that names a $VARIABLE, said: supervisord expands none in an
    environment (it read `USER=$USER_NAME` as USER="$"); nor does corral's env."""
    for k, v in env.items():
        if re.search(r"\$\{?[A-Za-z_]", v):
            names = ", ".join(sorted(set(re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", v))))
            imp.note(where, "environment", f"{k}={v}: taken as written (supervisord "
                     "expands no $VARIABLE here, nor does corral's env: "
                     + ", ".join(f"%(ENV_{n})s" for n in names.split(", "))
                     + " is read from the environment)")


def env_pairs(text: str, where: str) -> dict[str, str]:
    """supervisord's KEY=val,KEY2="val, with a comma" (its dict_of_key_value_pairs); a
    value left empty (`C=`: a variable not set where corral import runs) is empty."""
    lexer = shlex.shlex(text)
    # supervisord's own word characters, and those it splits a value at and then keeps
    # part of (`USER=$USER_NAME` is its USER="$"): here, a value is taken whole
    lexer.wordchars += "/.+-():$@%*!?~^&[]{}<>|;#"
    lexer.commenters = ""
    tokens = list(lexer)
    out: dict[str, str] = {}
    i = 0
    while i < len(tokens):
        if i + 1 >= len(tokens) or tokens[i + 1] != "=":
            raise ConfigError(f"{where}: environment: unexpected end of "
                              f"KEY=value pairs in {text!r}")
        key, i = tokens[i], i + 2
        value = ""
        if i < len(tokens) and tokens[i] != ",":
            value, i = tokens[i].strip("'\""), i + 1
        if i < len(tokens) and tokens[i] != ",":
            raise ConfigError(f"{where}: environment: unexpected end of "
                              f"KEY=value pairs in {text!r}")
        out[key] = value
        i += 1
    return out


def _program(parser: configparser.RawConfigParser, section: str, name: str, imp: Conversion,
             base: dict[str, Any], common: Common, group: str,
             priorities: dict[str, tuple[int, str, list[str]]]) -> None:
    where = f"[{section}]"
    raw = dict(parser[section])
    ex = base | {"program_name": name, "group_name": group}
    get = _getter(raw, ex, where, imp)
    numprocs = whole(get("numprocs", "1"), where, "numprocs")
    start = whole(get("numprocs_start", "0"), where, "numprocs_start")
    ex |= {"numprocs": numprocs, "process_num": start}
    table: dict[str, Any] = {"command": _command(raw, ex, where, start, imp),
                             "protocol": "none"}
    if numprocs != 1:
        table[target("numprocs")] = numprocs
    name_given = raw.get("process_name")
    if name_given is not None and numprocs > 1:
        imp.note(where, "process_name", f"{name_given!r}: replicas are named "
                 f"AGENT#0..#{numprocs - 1} (the number is $CORRAL_REPLICA)")
    elif name_given is not None and name_given.strip() != "%(program_name)s":
        # one process (numprocs 1, or one not resolved here): its name is the agent's
        imp.note(where, "process_name", f"{name_given!r}: not carried: the agent is named "
                 "after the program (its replicas AGENT#0.., the number is "
                 "$CORRAL_REPLICA)")
    directory = ""  # one naming %(ENV_X)s: gone to as the program starts
    if _ENV_REF.search(raw.get("directory", "")):
        directory = expand_value(_marked(raw["directory"]), ex, where, "directory",
                                 imp) or ""
    elif cwd := get("directory", ""):
        table[target("directory")] = cwd
    env = dict(common.env)
    if "environment" in raw:
        env |= environment_of(raw["environment"], ex, where, imp)
    user = user_of(raw["user"], ex, where, imp) if "user" in raw else common.user
    if user:
        table["user"] = user
    if "autostart" in raw:
        table["autostart"] = _bool(get("autostart", "true"), where, "autostart")
    restart = get("autorestart", "unexpected").lower()
    if restart not in _RESTART:
        raise ConfigError(f"{where}: autorestart: {restart!r} is not true, "
                          "false or unexpected")
    if restart != "unexpected":
        table[target("autorestart")] = _RESTART[restart]
    codes = [whole(c, where, "exitcodes") for c in get("exitcodes", "0").split(",")]
    if codes != [0]:
        table[target("exitcodes")] = codes
    secs = whole(get("startsecs", "1"), where, "startsecs")  # supervisord's default: 1
    if secs:
        table[target("startsecs")] = secs
    if "startretries" in raw:
        table[target("startretries")] = whole(get("startretries", "3"), where, "startretries")
    signal = get("stopsignal", "TERM").upper().removeprefix("SIG")
    if signal not in SIGNALS:
        imp.note(where, "stopsignal", f"{signal}: not carried: corral's stop_signal is "
                                      f"one of {', '.join(SIGNALS)} (TERM is sent)")
    elif signal != "TERM":
        table[target("stopsignal")] = signal
    if "stopwaitsecs" in raw:
        table[target("stopwaitsecs")] = whole(get("stopwaitsecs", "10"), where, "stopwaitsecs")
    prio = whole(get("priority", "999"), where, "priority")
    # what a program waits for, as the plugins that give supervisord an order spell it
    needs = [w.split(":")[0] for k in DEPENDS for w in re.split(r"[\s,]+", get(k, ""))
             if w]
    for k in ("stopasgroup", "killasgroup"):
        if k in raw and not _bool(get(k, "false"), where, k):
            imp.note(where, k, "false: not carried: corral signals the program's whole "
                               "process group")
    _logs(raw, get, table, where, imp, numprocs)
    at_start = {k: v for k, v in env.items() if _MARKED.search(v)}
    if at_start or directory:
        table["command"] = _read_at_start(table["command"], at_start, directory, where, imp)
        env = {k: v for k, v in env.items() if k not in at_start}
    if env:
        table["env"] = env
    for k in raw:
        if k in PROGRAM_KEYS_CARRIED:
            continue
        why = NOT_CARRIED.get(k, "not a key of supervisord's [program:x]")
        imp.note(where, k, f"{raw[k]!r}: not carried: {why}")
    priorities[imp.add(where, name, table)] = (prio, where, needs)


def _getter(raw: dict[str, str], ex: dict[str, Any], where: str, imp: Conversion) -> Any:
    def get(k: str, default: str) -> str:
        if k not in raw:
            return default
        got = expand_value(raw[k], ex, where, k, imp)
        return default if got is None else got
    return get


def expand_value(text: str, ex: dict[str, Any], where: str, key: str, imp: Conversion
                ) -> str | None:
    """A value expanded with the environment corral import runs in (an environment's
    `%(ENV_X)s` is not: environment_of). A variable not set there (a container's, set
    where it runs) leaves the key out (None), said."""
    unset = sorted({v for v in re.findall(r"%\(ENV_([A-Za-z_][A-Za-z0-9_]*)\)", text)
                    if f"ENV_{v}" not in ex})
    if unset:
        names = ", ".join(f"${v}" for v in unset)
        imp.note(where, key, f"{text!r}: not carried: {names} not set where corral "
                             "import ran (supervisord reads it as it starts)")
        return None
    try:
        return expand(text, ex, f"{where} {key}")
    except ConfigError as exc:  # a template's placeholder (`%HOME%`), filled in elsewhere
        imp.note(where, key, f"not carried: {_unexpandable(exc)}")
        return None


def _unexpandable(exc: ConfigError) -> str:
    """Why a value supervisord would refuse is taken as it is, or left out: files in
    images are often templates a start script fills in before supervisord reads them."""
    return (f"{str(exc).split(': ', 1)[-1]} (supervisord refuses it: a template filled "
            "in before supervisord starts?)")


def _command(raw: dict[str, str], ex: dict[str, Any], where: str, start: int,
             imp: Conversion) -> str | list[str]:
    """The command: expanded now, but for the replica's number and the environment's
    variables, which a shell reads as the process starts. Its words are supervisord's
    (shlex's), each quoted for `sh -c` around what the shell is to read, so that the
    number reaches an argument inside quotes too."""
    text = raw.get("command")
    if not text:
        raise ConfigError(f"{where}: command: is required")
    text = _PROCESS_NUM.sub(lambda m: f"\0R{m[1]}\0", text)
    text = re.sub(r"%\(ENV_([A-Za-z_][A-Za-z0-9_]*)\)s", lambda m: f"\0E{m[1]}\0", text)
    # continuation lines are words of the command, as supervisord splits it
    try:
        expanded = " ".join(expand(text, ex, f"{where} command").split("\n"))
    except ConfigError as exc:
        imp.note(where, "command", f"taken as written: {_unexpandable(exc)}")
        expanded = " ".join(raw["command"].split("\n"))
    if "\0" not in expanded:
        return expanded
    try:
        words = shlex.split(expanded)
    except ValueError as exc:
        raise ConfigError(f"{where}: command: cannot be split into words: {exc}") from None
    number = f"$((CORRAL_REPLICA + {start}))" if start else "$CORRAL_REPLICA"
    read: set[str] = set()

    def shell(part: str) -> str:
        if part.startswith("R"):
            read.add("the replica's number ($CORRAL_REPLICA)")
            return f'"$(printf %{part[1:]}d {number})"' if part[1:] else f'"{number}"'
        read.add(f"${{{part[1:]}}}")
        return f'"${{{part[1:]}}}"'

    script = " ".join("".join(shell(p) if n % 2 else (shlex.quote(p) if p else "")
                              for n, p in enumerate(re.split("\0([^\0]*)\0", w)))
                      for w in words)
    imp.note(where, "command", f"run by `sh -c`: {' and '.join(sorted(read))} read as "
                               "the process starts")
    return ["sh", "-c", f"exec {script}"]


def _bool(text: str, where: str, key: str) -> bool:
    """supervisord's booleans (true/false, yes/no, on/off, 1/0): configparser's own."""
    try:
        return configparser.RawConfigParser.BOOLEAN_STATES[text.strip().lower()]
    except KeyError:
        raise ConfigError(f"{where}: {key}: {text!r} is not true or false") from None


def _logs(raw: dict[str, str], get: Any, table: dict[str, Any], where: str,
          imp: Conversion, numprocs: int) -> None:
    """stdout_logfile as the agent's log_file (/dev/stdout as the daemon's stdout), its
    size and backups as its rotation; stderr goes with it (`redirect_stderr` or not)."""
    out = get("stdout_logfile", "AUTO")
    if out.upper() in ("NONE", "OFF"):
        imp.note(where, "stdout_logfile", f"{out}: not carried: corral keeps every "
                                          "program's log (LOG_DIR/NAME.log)")
        return
    if out.upper() == "AUTO" or out.upper() == "SYSLOG":
        return
    if not out.startswith("/"):
        imp.note(where, "stdout_logfile", f"{out!r}: not carried: not an absolute path "
                                          "(corral's log_file is one)")
        return
    table["log_file"] = out
    if numprocs > 1 and _PROCESS_NUM.search(raw.get("stdout_logfile", "")):
        imp.note(where, "stdout_logfile", f"{raw['stdout_logfile']!r}: one file for "
                 f"every replica, {out} (corral's log_file is the agent's, each line "
                 "tagged with its replica), not one a process")
    if out in ("/dev/stdout", "/dev/stderr"):
        return  # the daemon's stream: nothing to rotate (maxbytes = 0, as it must be)
    for key, corral in (("stdout_logfile_maxbytes", "log_max_bytes"),
                        ("stdout_logfile_backups", "log_backups")):
        if key in raw:
            m = _SIZE.fullmatch(get(key, ""))
            if m is None:
                raise ConfigError(f"{where}: {key}: {raw[key]!r} is not a size")
            n = int(m[1]) * _SIZES[(m[2] or "").upper()]
            if n or corral == "log_backups":
                table[corral] = n
            else:
                imp.note(where, key, "0: not carried: corral rotates a log file at "
                                     "log_max_bytes (its [supervisor] default, unless set)")

