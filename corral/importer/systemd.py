"""systemd service units: `[Unit]`, `[Service]`, `[Install]` sections, `#` and `;`
comment lines, a trailing backslash continuing a line, a directive given again adding to
a list (Environment=, ExecStartPre=) or replacing it (most others), an empty assignment
resetting it. The unit's name (less `.service`) is the agent's."""

from __future__ import annotations

import json
import os
import re
import shlex
from pathlib import Path
from typing import Any

from ..othernames import target
from ..supervisor.config import ConfigError
from .model import RUN_AS_ROOT, USER_RE, Conversion, How, config_text, named_text, whole

# directives read below (lower case)
CARRIED = {"execstart", "workingdirectory", "user", "group", "environment", "restart",
           "restartsec", "timeoutstopsec", "timeoutstartsec", "timeoutsec", "killsignal",
           "successexitstatus", "startlimitburst", "startlimitintervalsec",
           "startlimitinterval", "type", "watchdogsec", "limitnofile", "nice",
           "description", "documentation", "wantedby", "alias", "killmode",
           "environmentfile", "dynamicuser"}
# an order on other units: an agent's `after` where the unit is imported with it (link)
ORDER = {"after", "requires"}
LISTS = {"environment", "execstartpre", "execstartpost", "execstop", "execstoppost",
         "after", "before", "requires", "wants", "bindsto", "environmentfile"}
NOT_CARRIED = {
    "before": "not carried: corral starts its agents together, in no order",
    "wants": "not carried: corral starts its agents together, with no dependencies",
    "bindsto": "not carried: corral starts its agents together, with no dependencies",
    "partof": "not carried: corral stops each agent on its own",
    "execstartpre": "not carried: corral runs one command per agent",
    "execstartpost": "not carried: corral runs one command per agent",
    "execstop": "not carried: corral stops a program by a signal (stop_signal)",
    "execstoppost": "not carried: corral runs one command per agent",
    "execreload": "not carried: `corral restart NAME` replaces the process",
    "pidfile": "not carried: corral supervises the process it started (Type=forking is "
               "not followed)",
    "restartpreventexitstatus": "not carried: corral's exit_codes are clean exits, which "
                                "on-failure does not restart",
    "memorymax": "not carried: corral's limits.memory_mb is the address space "
                 "(RLIMIT_AS) and limits.rss_mb a soft restart, not a cgroup's "
                 "memory.max",
    "memorylimit": "not carried: corral's limits.memory_mb is the address space "
                   "(RLIMIT_AS), not a cgroup's memory limit",
    "cpuquota": "not carried: corral's limits.cpu_percent restarts a process over it "
                "(sampled), it does not throttle",
}
_RESTART = {"no": "never", "always": "always", "on-failure": "on-failure"}
_SIGNALS = ("TERM", "HUP", "INT", "QUIT", "KILL", "USR1", "USR2")
_UNITS = {"us": 1e-6, "usec": 1e-6, "ms": 0.001, "msec": 0.001, "s": 1.0, "sec": 1.0,
          "second": 1.0, "seconds": 1.0, "m": 60.0, "min": 60.0, "minute": 60.0,
          "minutes": 60.0, "h": 3600.0, "hr": 3600.0, "hour": 3600.0, "hours": 3600.0,
          "d": 86400.0, "day": 86400.0, "days": 86400.0}
# systemd's silence about these changes nothing a program does
QUIET = {"description", "documentation", "wantedby", "alias", "defaultdependencies",
         "conflicts", "standardoutput", "standarderror", "syslogidentifier",
         "remainafterexit", "guessmainpid"}


def parse(text: str, where: str, skipped: list[int] | None = None
          ) -> dict[str, dict[str, list[str]]]:
    """section -> directive (as written) -> its values in order (an empty one resets).
    A line that is not `Key=value` in a section is passed over, as systemd passes over it
    (with a warning), its number put in `skipped`; refused where no list is given."""
    out: dict[str, dict[str, list[str]]] = {}
    section: dict[str, list[str]] | None = None
    lines = iter(text.splitlines())
    number = 0
    for line in lines:
        number += 1
        while line.endswith("\\"):
            nxt = next(lines, None)
            if nxt is None:
                line = line[:-1].rstrip()
                break
            number += 1
            if nxt.lstrip().startswith(("#", ";")):
                continue  # a comment inside a continued line: systemd reads past it
            line = line[:-1].rstrip() + " " + nxt.strip()
        s = line.strip()
        if not s or s.startswith(("#", ";")):
            continue
        if s.startswith("[") and s.endswith("]"):
            section = out.setdefault(s[1:-1], {})
            continue
        key, eq, value = s.partition("=")
        if not eq or section is None:
            if skipped is None:
                raise ConfigError(f"{where}: line {number}: not `Key=value` in a "
                                  "[Section]")
            skipped.append(number)
            continue
        values = section.setdefault(key.strip(), [])
        if value.strip() == "":
            values.clear()  # an empty assignment resets the list
        else:
            values.append(value.strip())
    return out


def _unit_files(path: Path) -> tuple[Path | None, list[Path]]:
    """The unit and its drop-ins (`NAME.service.d/*.conf`, read after it, by name), as
    systemd reads them: a unit given finds its drop-ins beside it, a drop-in given finds
    its unit beside its directory (or stands alone)."""
    if path.parent.name.endswith(".service.d") and path.suffix == ".conf":
        unit = path.parent.parent / path.parent.name.removesuffix(".d")
        if not unit.is_file():
            return None, [path]
        return unit, sorted(path.parent.glob("*.conf"))
    return path, sorted(path.parent.joinpath(path.name + ".d").glob("*.conf"))


def read(path: Path, how: How) -> Conversion:
    skipped: list[int] = []
    unit, dropins = _unit_files(path)
    # the file given is the operator's; those found beside it are read only where they
    # are regular files in their directory (model.named_text), a link to /dev/null
    # being a drop-in masked, as systemd takes it
    masked = [f for f in dropins if f != path and f.is_symlink()
              and os.path.realpath(f) == os.devnull]
    dropins = [f for f in dropins if f not in masked]
    texts = [config_text(f) if f == path else
             named_text(f, f"{path}: {'its unit' if f == unit else 'its drop-in'}")
             for f in ([unit] if unit else []) + dropins]
    sections = parse("\n".join(texts), str(path), skipped)
    if "Service" not in sections:
        raise ConfigError(f"{path}: no [Service] section: not a service unit")
    imp = Conversion(str(path), "systemd")
    for number in skipped:
        imp.note(f"line {number}", "(line)", "not carried: not `Key=value` in a "
                                             "[Section] (systemd passes over it too)")
    for f in dropins if unit else dropins[1:]:
        imp.note("[Service]", "(drop-in)", f"{f}: read over the unit, as systemd reads "
                                           "its drop-ins")
    for f in masked:
        imp.note("[Service]", "(drop-in)", f"{f}: a link to /dev/null: masked, not read "
                                           "(as systemd masks it)")
    name = (unit or path).name.removesuffix(".in").removesuffix(".service")
    if path.parent.name.endswith(".service.d") and unit is None:
        name = path.parent.name.removesuffix(".service.d")
    where = "[Service]"
    if name.endswith("@") and how.instance is not None:
        name += how.instance
        imp.note(where, "%i", f"a template unit: instance {how.instance} (%i), as "
                              f"`systemctl enable {name}` starts it")
    elif name.endswith("@"):  # named as its prefix, each %i of it empty
        imp.note(where, "%i", "a template unit: its instance name (%i) is left empty (give "
                              f"it with --instance NAME, as `systemctl enable {name}NAME` "
                              "does)")
    elif how.instance is not None:
        imp.note(where, "--instance", f"{how.instance}: not read: {name} is not a template "
                                      "unit (NAME@.service)")
    try:
        table = _service(sections, where, imp, name)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    agent = imp.add(where, name.removesuffix("@"), table)
    imp.ordered[agent] = [(f"[{sec}]", key, unit)
                          for sec, keys in sections.items() for key, values in keys.items()
                          if key.lower() in ORDER for v in values for unit in v.split()]
    return imp


def _service(sections: dict[str, dict[str, list[str]]], where: str, imp: Conversion,
             name: str) -> dict[str, Any]:
    # lower -> (section, key, values)
    given = {key.lower(): (sec, key, values) for sec, keys in sections.items()
             for key, values in keys.items()}

    def one(key: str) -> str | None:
        got = given.get(key)
        return _specifiers(got[2][-1], name) if got and got[2] else None

    starts = [_specifiers(v, name) for v in given.get("execstart", ("", "", []))[2]]
    if not starts:
        raise ConfigError(f"{where}: ExecStart: is required")
    table: dict[str, Any] = {"command": _command(starts, where, imp), "protocol": "none"}
    kind = (one("type") or "simple").lower()
    if kind == "notify":
        table["ready"] = "notify"
    elif kind == "oneshot":
        table["restart"] = "never"
    elif kind == "forking":
        imp.note(where, "Type", "forking: not carried: corral supervises the process it "
                                "starts, which must stay in the foreground")
    if cwd := one("workingdirectory"):
        table["cwd"] = cwd.lstrip("-")
    _user(given, table, where, imp, name)
    env: dict[str, str] = {}
    for assignment in (given.get("environment", ("", "", []))[2]):
        try:
            words = shlex.split(assignment)
        except ValueError as exc:  # systemd passes over such a line too
            imp.note(where, "Environment", f"{assignment}: not carried: {exc}")
            continue
        for word in words:
            k, eq, v = word.partition("=")
            if eq:
                env[k] = _specifiers(v, name)
    if env:
        table["env"] = env
    files = [_specifiers(v, name) for v in given.get("environmentfile", ("", "", []))[2]]
    if files:
        table["env_file"] = files
        if env:
            imp.note(where, "EnvironmentFile", "env_file: a variable set in both is env's "
                                               "(systemd's file won over Environment=)")
    restart = (one("restart") or "no").lower()
    if restart in _RESTART:
        if restart != "no" or kind != "oneshot":
            table["restart"] = _RESTART[restart]
    else:
        table["restart"] = "on-failure"
        imp.note(where, "Restart", f"{restart}: on-failure (corral restarts after any "
                                   "exit but a clean one)")
    for key in ("restartsec", "timeoutstopsec", "timeoutstartsec", "startlimitintervalsec"):
        if one(key) and (secs := seconds(one(key) or "", where, given[key][1])) > 0:
            table[target(key)] = secs
    if span := one("timeoutsec"):
        secs = seconds(span, where, "TimeoutSec")
        table.setdefault("start_timeout", secs)
        table.setdefault("stop_timeout", secs)
    if (span := one("startlimitinterval")) and "restart_window" not in table:
        table["restart_window"] = seconds(span, where, "StartLimitInterval")
    if burst := one("startlimitburst"):
        table[target("startlimitburst")] = whole(burst, where, "StartLimitBurst")
    if killsignal := one("killsignal"):
        sig = killsignal.upper().removeprefix("SIG")
        if sig not in _SIGNALS:
            imp.note(where, "KillSignal", f"{sig}: not carried: corral's stop_signal is "
                                          f"one of {', '.join(_SIGNALS)} (TERM is sent)")
        elif sig != "TERM":
            table[target("killsignal")] = sig
    codes = _exit_codes(given.get("successexitstatus", ("", "", []))[2], where, imp)
    if codes != [0]:
        table[target("successexitstatus")] = codes
    if (span := one("watchdogsec")) and kind == "notify":
        table[target("watchdogsec")] = seconds(span, where, "WatchdogSec")
    mode = (one("killmode") or "control-group").lower()
    if mode != "control-group":
        imp.note(where, "KillMode", f"{mode}: not carried: corral signals the program's "
                                    "whole process group (control-group)")
    limits = _limits(one, where, imp)
    if limits:
        table["limits"] = limits
    for low, (sec, key, values) in given.items():
        if low in CARRIED or low in QUIET or low in ORDER or not values:
            continue
        why = NOT_CARRIED.get(low, f"not carried: not a directive corral import maps "
                                   f"([{sec}])")
        for v in values if low in LISTS else values[-1:]:
            imp.note(where, key, f"{v}: {why}")
    return table


_YES = {"yes", "true", "on", "1"}


def _user(given: dict[str, tuple[str, str, list[str]]], table: dict[str, Any],
          where: str, imp: Conversion, name: str) -> None:
    """User= and Group= as written, or the unit refused: a user corral import cannot
    resolve (a template's %i, a host's specifier) is never left out; DynamicUser= of no
    User= is corral's agent of no user, a uid of its own under a root daemon."""
    for low, key in (("user", "User"), ("group", "Group")):
        values = given.get(low, ("", key, []))[2]
        if not values:
            continue
        value = _specifiers(values[-1], name)
        if not USER_RE.fullmatch(value):
            said = repr(value) if value else "nothing"
            hint = f" (give the instance: --instance NAME, as `systemctl enable {name}NAME`" \
                " does)" if name.endswith("@") and re.search(r"%[iI]", values[-1]) else ""
            raise ConfigError(f"{where}: {key}: {values[-1]!r} is {said} where corral "
                              "import runs (a template's instance or a host's specifier "
                              f"is not known to it): {RUN_AS_ROOT}{hint}")
        table[low] = value
    dynamic = given.get("dynamicuser", ("", "", []))[2]
    if dynamic and dynamic[-1].lower() in _YES and "user" not in table:
        imp.note(where, "DynamicUser", f"{dynamic[-1]}: no user: under a root daemon it runs "
                 "as a uid of its own ([supervisor] dynamic_uids), as under systemd; with "
                 "dynamic_uids = [] or a daemon not root, as the daemon's user")
    elif dynamic and dynamic[-1].lower() in _YES:
        imp.note(where, "DynamicUser", f"{dynamic[-1]}: user = {json.dumps(table['user'])}"
                                       ", which must exist on this host (corral makes no "
                                       "dynamic user)")


def _limits(one: Any, where: str, imp: Conversion) -> dict[str, int]:
    out: dict[str, int] = {}
    nofile = one("limitnofile")
    if nofile:
        soft = nofile.split(":")[0]
        if soft.lower() != "infinity":
            out[target("limitnofile").split(".")[1]] = whole(soft, where, "LimitNOFILE")
    nice = one("nice")
    if nice:
        n = whole(nice, where, "Nice")
        if n > 0:
            out["nice"] = n
        elif n < 0:
            imp.note(where, "Nice", f"{n}: not carried: corral's limits.nice is 0-19 (a "
                                    "lower priority only)")
    return out


def _command(starts: list[str], where: str, imp: Conversion) -> str | list[str]:
    """ExecStart= less its prefixes (`-`, `@`, `+`, `!`, `:`); a command that reads
    variables ($X, ${X}) runs under `sh -c`, as systemd expands them from the
    environment it gives. Several (a oneshot's) run in turn under `sh -c`, each once the
    one before succeeded (or failed, with `-`), as systemd runs them."""
    cut = [len(start) - len(start.lstrip("-@+!:")) for start in starts]
    words = [(start[n:], "-" in start[:n]) for start, n in zip(starts, cut, strict=True)]
    if len(words) > 1:
        imp.note(where, "ExecStart", f"{len(words)} commands: run in turn by `sh -c`, "
                                     "each once the one before succeeded")
        return ["sh", "-c", " && ".join(f"{{ {cmd} || true; }}" if failing_ok else cmd
                                        for cmd, failing_ok in words)]
    text = words[0][0]
    if re.search(r"\$\{?[A-Za-z_]", text):
        imp.note(where, "ExecStart", "run by `sh -c` so that its $VARIABLES are read as "
                                     "the process starts")
        return ["sh", "-c", f"exec {text}"]
    return text


def _specifiers(text: str, name: str) -> str:
    """systemd's %n, %N, %p, %i, %I, %% of the unit `name` (`PREFIX@INSTANCE` for a
    template's instance); the others are the host's, kept as written."""
    prefix, _, instance = name.partition("@")
    unescaped = re.sub(r"\\x([0-9a-fA-F]{2})", lambda m: chr(int(m[1], 16)),
                       instance.replace("-", "/"))
    subs = {"n": f"{name}.service", "N": name, "p": prefix, "i": instance, "I": unescaped,
            "%": "%"}
    return re.sub(r"%([nNpiI%])", lambda m: subs[m[1]], text)


def _exit_codes(values: list[str], where: str, imp: Conversion) -> list[int]:
    codes = [0]
    for v in values:
        for word in v.split():
            if word.isdigit():
                codes.append(int(word))
            else:
                imp.note(where, "SuccessExitStatus", f"{word}: not carried: corral's "
                                                     "exit_codes are exit statuses, not "
                                                     "signals")
    return sorted(set(codes))


def seconds(text: str, where: str, key: str) -> float:
    """A systemd time span ("90", "5s", "1min 30s", "500ms", "infinity": 0) in seconds."""
    t = text.strip().lower()
    if t == "infinity":
        return 0.0
    if re.fullmatch(r"\d+(\.\d+)?", t):
        return float(t)
    total, pos = 0.0, 0
    for m in re.finditer(r"\s*(\d+(?:\.\d+)?)\s*([a-z]+)", t):
        if m.start() != pos or m[2] not in _UNITS:
            raise ConfigError(f"{where}: {key}: {text!r} is not a time span")
        total += float(m[1]) * _UNITS[m[2]]
        pos = m.end()
    if pos != len(t) or pos == 0:
        raise ConfigError(f"{where}: {key}: {text!r} is not a time span")
    return round(total, 3)
