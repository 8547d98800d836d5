"""PM2 ecosystem files: JSON (read as JSON5, as data: a `.json` is never run) and
JavaScript, which only node can read: run by node in a sandbox (jsbox.py) with no reach
beyond printing its export. Each app is a plain program (`protocol = "none"`), with PM2's
defaults where they differ from corral's; docs/migrating.md says how each key is carried.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

from ..othernames import target
from ..supervisor.config import ConfigError
from ..supervisor.schedule import Cron, ScheduleError
from . import jsbox
from .model import RUN_AS_ROOT, USER_RE, Conversion, How, config_text, json_data

VERSION_TIMEOUT = 10.0
# the interpreter PM2 runs a script with by its extension (where `interpreter` is unset)
INTERPRETERS = {".js": "node", ".cjs": "node", ".mjs": "node", ".py": "python",
                ".sh": "bash", ".rb": "ruby", ".php": "php", ".pl": "perl",
                ".coffee": "coffee", ".ts": "ts-node", ".tsx": "ts-node"}
# prints the file's export (module.exports, or an ES module's default) as JSON, and the
# packages it requires that are not installed beside it: each stood in by an empty module
# (any property, call or text of it is one again), as an ecosystem file read away from
# its project's node_modules (`require('dotenv').config()`) still says its apps
_PRINT = (
    "import Module from 'node:module'; const missing = []; "
    "const stub = new Proxy(function () {}, {get: (t, k) => (k === Symbol.toPrimitive ? "
    "() => '' : k === 'then' ? undefined : stub), apply: () => stub, construct: () => "
    "stub}); const resolve = Module._resolveFilename; "
    "Module._resolveFilename = function (request, ...rest) { try { return resolve.call("
    "this, request, ...rest); } catch (e) { if (e.code !== 'MODULE_NOT_FOUND' || "
    "/^[./]/.test(request)) throw e; const fake = '/corral-import-missing/' + request; "
    "if (!missing.includes(request)) missing.push(request); Module._cache[fake] = {id: "
    "fake, filename: fake, loaded: true, exports: stub, children: [], paths: []}; "
    "return fake; } }; const m = await import(process.argv[1]); "
    "process.stdout.write(JSON.stringify({exported: m.default ?? m, missing}))")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_SIZES = {"k": 1 / 1024, "m": 1.0, "g": 1024.0}
NOT_CARRIED = {
    "error_file": "corral writes an app's stderr with its stdout, to one log",
    "merge_logs": "corral writes one log per agent, its replicas' lines tagged",
    "log_date_format": "corral's log lines carry an ISO 8601 time (log_format = \"tagged\")",
    "wait_ready": "PM2's process.send('ready') has no equivalent: corral takes "
                  "sd_notify's READY=1 (ready = \"notify\") or a readiness check",
    "shutdown_with_message": "corral stops a program by a signal (stop_signal)",
    "pid_file": "corral writes no pid file of an app (`corral status` shows its pid)",
    "pid": "corral writes no pid file of an app (`corral status` shows its pid)",
    "error": "corral writes an app's stderr with its stdout, to one log",
    "ignore_watch": "corral's watch takes globs of what to watch only",
    "instance_var": "corral gives each replica its number as $CORRAL_REPLICA",
    "vizion": None, "automation": None, "pmx": None, "namespace": None, "time": None,
    "source_map_support": None, "disable_source_map_support": None, "filter_env": None,
    "autodump": None, "treekill": None, "combine_logs": None, "force": None,
    "node_args": None, "interpreter_args": None, "interpreter": None,
}
# keys read below
CARRIED = {"name", "script", "args", "cwd", "instances", "env", "autorestart",
           "stop_exit_codes", "min_uptime", "max_restarts", "restart_delay",
           "exp_backoff_restart_delay", "kill_timeout", "max_memory_restart", "watch",
           "listen_timeout", "uid", "user", "gid", "autostart", "out_file", "log_file",
           "env_file", "exec", "cmd", "exec_interpreter", "output", "log",
           "cron_restart", "exec_mode", "increment_var"}
SCRIPT_KEYS = ("script", "exec", "cmd")


def read(path: Path, how: How) -> Conversion:
    data, missing = _load(path, how.env)
    apps = data.get("apps") if isinstance(data, dict) else data
    if not isinstance(apps, list):
        raise ConfigError(f"{path}: apps: expected a list of apps (PM2's "
                          '{"apps": [...]})')
    imp = Conversion(str(path), "pm2")
    for package in missing:
        imp.note("require", package, "not installed beside the file: read as an empty "
                                     "module (what the file takes from it is left out)")
    for i, app in enumerate(apps):
        where = f"apps[{i}]"
        if not isinstance(app, dict):
            raise ConfigError(f"{path}: {where}: expected an object")
        try:
            _app(app, where, imp, path.parent, how.profile)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None
    profiles = sorted({k[4:] for app in apps if isinstance(app, dict) for k in app
                       if k.startswith("env_") and k != "env_file"})
    if how.profile is not None and how.profile not in profiles:
        # pm2 start --env NAME would run each app on its env alone: a misspelt NAME too
        imp.note("--env", how.profile, f"no app has env_{how.profile}: each has its env "
                 f"alone (the profiles here: {', '.join(profiles) or 'none'})")
    if isinstance(data, dict):
        for k in sorted(set(data) - {"apps"}):
            imp.note(k, "(top level)", "not carried: only apps become agents "
                                      "(deploy is PM2's own)")
    return imp


def _load(path: Path, env: dict[str, str]) -> tuple[Any, list[str]]:
    """The file's apps as PM2 reads them, and the packages it requires that are not
    installed beside it."""
    text = config_text(path)  # a BOM, as node passes over it
    if path.suffix.lower() in (".json", ".json5"):
        return json_data(path, text), []
    return evaluate(path, env)


def evaluate(path: Path, env: dict[str, str]) -> tuple[Any, list[str]]:
    """A JavaScript ecosystem file's export, as node evaluates it in its sandbox."""
    node = shutil.which("node", path=env.get("PATH", os.defpath))
    if node is None:
        raise ConfigError(f"{path}: a JavaScript ecosystem file is read by running node, "
                          "which is not on PATH: install node, or give its JSON "
                          "(`node -p 'JSON.stringify(require(\"./FILE\"))' > "
                          "ecosystem.json`)")
    real = path.resolve()
    try:
        done = jsbox.evaluate(os.path.realpath(node), real, _permission_flag(node, path),
                              _PRINT, env)
    except jsbox.SandboxRefusal as exc:
        raise ConfigError(f"{path}: {exc}") from None
    if done.status != 0:
        last = (done.stderr.strip().splitlines() or ["(nothing on stderr)"])
        said = next((ln for ln in last if "Error" in ln), last[-1])
        raise ConfigError(f"{path}: node could not evaluate it (exit status "
                          f"{done.status}): {said.strip()}")
    try:
        said = json.loads(done.stdout)
        return said["exported"], [str(p) for p in said["missing"]]
    except (ValueError, KeyError, AttributeError, TypeError):
        raise ConfigError(f"{path}: its export is not JSON (a function or undefined)") \
            from None


def _permission_flag(node: str, path: Path) -> str:
    """The flag that turns node's permission model on: `--permission` from node 23,
    `--experimental-permission` in 20-22; an older node has none, and is not run."""
    try:
        said = subprocess.run([node, "--version"], capture_output=True, text=True,
                              timeout=VERSION_TIMEOUT).stdout
    except (OSError, subprocess.TimeoutExpired):
        said = ""
    m = re.match(r"v(\d+)\.", said.strip())
    major = int(m[1]) if m else 0
    if major < 20:
        raise ConfigError(f"{path}: node {said.strip() or '(no version)'} has no "
                          "permission model to run the file under (node 20 or later), "
                          "so it is not run: give its JSON instead")
    return "--permission" if major >= 23 else "--experimental-permission"


def _app(app: dict[str, Any], where: str, imp: Conversion, base: Path,
         profile: str | None) -> None:
    # `exec` is PM2's alias of script, and `cmd` the one its Python page shows
    script = next((app[k] for k in SCRIPT_KEYS if app.get(k)), None)
    if not isinstance(script, str) or not script:
        raise ConfigError(f"{where}: script: is required (a string)")
    name = str(app.get("name") or Path(script).stem)
    where = f"{where} ({name})"
    table: dict[str, Any] = {"command": _command(app, script, where),
                             "protocol": "none"}
    # PM2 runs an app in its cwd, relative to the ecosystem file's directory, else in that
    # directory; corral's are relative to the config's: made absolute, the config may be
    # saved anywhere
    table["cwd"] = str(base.resolve() / app["cwd"] if isinstance(app.get("cwd"), str)
                       else base.resolve())
    replicas = _instances(app.get("instances", 1), where, imp)
    if replicas != 1:
        table[target("instances")] = replicas
    for key, corral in (("uid", "user"), ("user", "user"), ("gid", "group")):
        value = app.get(key)
        if value is None or corral in table:
            continue
        if isinstance(value, bool) or not USER_RE.fullmatch(str(value)):
            raise ConfigError(f"{where}: {key}: {json.dumps(value)} is not a user's name "
                              f"or number: {RUN_AS_ROOT}")
        table[corral] = str(value)
    if app.get("autostart") is False:
        table["autostart"] = False
    codes = app.get("stop_exit_codes")
    if app.get("autorestart", True) is False:
        table["restart"] = "never"
        if codes is not None:
            imp.note(where, "stop_exit_codes", f"{json.dumps(codes)}: not carried: "
                     "autorestart is false, so it is never restarted, whatever its status")
    elif codes is not None:
        codes = _statuses(codes, where)
        table["restart"] = "on-failure"  # restarted after any status but these
        if codes != [0]:
            table[target("stop_exit_codes")] = codes
    else:
        table["restart"] = "always"  # PM2's default: restarted after any exit
    for key in ("min_uptime", "kill_timeout", "listen_timeout", "restart_delay",
                "exp_backoff_restart_delay"):  # milliseconds, or a text with a unit
        if key in app:
            secs = duration(app[key], 0.001, where, key)
            if secs > 0 or key == "min_uptime":
                table[target(key)] = secs
    if "max_restarts" in app or "min_uptime" in app:
        # PM2's max_restarts: unstable restarts (up less than min_uptime) in a row
        table["start_retries"] = _whole(app.get("max_restarts", 16), where,
                                        "max_restarts")  # PM2's default: 16
        table.setdefault("start_secs", 1.0)  # PM2's min_uptime default
    if "max_memory_restart" in app:
        table["limits"] = {"rss_mb": megabytes(app["max_memory_restart"], where)}
    watch = app.get("watch")
    if watch:
        table["watch"] = (["**/*"] if watch is True else
                          [f"{w.rstrip('/')}/**/*" for w in
                           ([watch] if isinstance(watch, str) else watch)])
    _log_file(app, table, where, imp, base)
    _cron(app.get("cron_restart"), table, where, imp)
    # its env, then the profile's over it, as `pm2 start --env NAME` sets it
    for env in (app.get("env"), app.get(f"env_{profile}") if profile else None):
        if isinstance(env, dict):
            table["env"] = table.get("env", {}) | {str(k): _text(v) for k, v in env.items()}
    _ports(app, table, replicas, where, imp)
    if isinstance(app.get("env_file"), str):
        # PM2 reads it from the app's directory (its cwd, else the file's)
        table["env_file"] = [str(Path(table["cwd"]) / app["env_file"])
                             if not app["env_file"].startswith("/") else app["env_file"]]
    for k in app:
        if k in CARRIED:
            continue
        if k.startswith("env_"):
            if k[4:] != profile:
                imp.note(where, k, f"not carried: another profile (`corral import --env "
                                   f"{k[4:]}` sets it over env, as `pm2 start --env "
                                   f"{k[4:]}` does)")
            continue
        why = NOT_CARRIED.get(k, "not a key of a PM2 app")
        if why is not None:
            imp.note(where, k, f"{json.dumps(app[k])}: not carried: {why}")
    imp.add(where, name, table)


def _ports(app: dict[str, Any], table: dict[str, Any], replicas: int, where: str,
           imp: Conversion) -> None:
    """Replicas that would all listen on one port. PM2's cluster mode has its
    replicas share one listening socket; corral runs each as a process of its own, so
    each is given its own port instead: the app's `increment_var` (PM2's own way of
    that), else PORT, set to its value plus the replica's number as the process starts
    (a `sh -c` reading $CORRAL_REPLICA). Where the port is not in the app's env, each
    replica must pick its own, said."""
    mode = str(app.get("exec_mode", "fork"))
    cluster = mode.removesuffix("_mode") == "cluster"
    var = app.get("increment_var") or ("PORT" if cluster else None)
    if not cluster and var is None:
        return
    if replicas <= 1:
        if cluster:
            imp.note(where, "exec_mode", f"{json.dumps(mode)}: one replica, a process of "
                                         "its own, as corral runs each")
        return
    key = "increment_var" if app.get("increment_var") else "exec_mode"
    base = table.get("env", {}).get(str(var))
    if not isinstance(var, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", var) or \
            base is None or not base.isdigit():
        imp.note(where, key, f"{json.dumps(app[key])}: not carried: {replicas} replicas, "
                 f"each a process of its own (corral has no shared listening socket), and "
                 f"{json.dumps(var)} is not a port in the app's env to give each its own: "
                 "each must choose its own port, or the second fails with EADDRINUSE")
        return
    first, last = int(base), int(base) + replicas - 1
    command = table["command"]
    argv = command if isinstance(command, list) else ["sh", "-c", f"exec {command}"]
    table["command"] = ["sh", "-c", f'export {var}=$(({var} + CORRAL_REPLICA)); exec "$@"',
                        "sh", *argv]
    why = ("PM2's cluster mode shared one listening socket among them; corral has none, "
           "so put a balancer in front" if cluster else "as PM2's increment_var did")
    imp.note(where, key, f"{json.dumps(app[key])}: each replica listens on its own port: "
                         f"{var} = {first} + $CORRAL_REPLICA ({first}..{last}), set by "
                         f"`sh -c` as it starts ({why})")


def _command(app: dict[str, Any], script: str, where: str) -> list[str]:
    argv = _words(app.get("args", []), where, "args")
    interpreter = app.get("interpreter") or app.get("exec_interpreter")
    extra = _words(app.get("interpreter_args") or app.get("node_args") or [], where,
                   "interpreter_args")
    if interpreter in (None, ""):  # PM2's choice by the script's extension
        interpreter = INTERPRETERS.get(Path(script).suffix.lower())
    if interpreter in (None, "", "none"):
        return [script, *argv]
    return [str(interpreter), *extra, script, *argv]


def _cron(v: Any, table: dict[str, Any], where: str, imp: Conversion) -> None:
    """cron_restart as restart_cron: five fields; PM2's seconds field (six) has no place
    in corral's cron, nor has a cron its parser refuses, each said."""
    if v is None:
        return
    try:
        Cron(str(v))
    except ScheduleError as exc:
        imp.note(where, "cron_restart", f"{json.dumps(v)}: not carried: {exc} (corral's "
                                        "restart_cron is five fields, minutes first)")
        return
    table["restart_cron"] = str(v)


def _statuses(v: Any, where: str) -> list[int]:
    """stop_exit_codes: a status, a list of them, or their text ("0", "0 2", "0,2")."""
    items = v if isinstance(v, list) else [v]
    words = [w for x in items for w in
             (re.split(r"[\s,]+", x.strip()) if isinstance(x, str) else [x])]
    if not words or not all((isinstance(w, int) and not isinstance(w, bool))
                            or (isinstance(w, str) and w.isdigit()) for w in words):
        raise ConfigError(f"{where}: stop_exit_codes: {json.dumps(v)} is not exit "
                          "statuses")
    return [int(w) for w in words]


def _words(v: Any, where: str, key: str) -> list[str]:
    import shlex

    if isinstance(v, str):
        try:
            return shlex.split(v)
        except ValueError as exc:
            raise ConfigError(f"{where}: {key}: {exc}") from None
    if isinstance(v, list):
        return [_text(x) for x in v]
    raise ConfigError(f"{where}: {key}: expected a string or a list")


def _instances(v: Any, where: str, imp: Conversion) -> int:
    if v in ("max", 0, -1, "0", "-1"):
        n = os.cpu_count() or 1
        imp.note(where, "instances", f"{json.dumps(v)}: {n} replicas, the CPUs of this "
                                     "machine (PM2 counts them where it runs)")
        return n
    if isinstance(v, str) and re.fullmatch(r"-?\d+", v):
        v = int(v)
    if isinstance(v, int) and v < 0:
        n = max((os.cpu_count() or 1) + v, 1)
        imp.note(where, "instances", f"{v}: {n} replicas (this machine's CPUs less "
                                     f"{-v})")
        return n
    if not isinstance(v, int) or isinstance(v, bool):
        raise ConfigError(f"{where}: instances: {json.dumps(v)} is not a number or "
                          '"max"')
    return v


def duration(v: Any, unit: float, where: str, key: str) -> float:
    """PM2's durations: a number (in `unit` seconds) or a text such as "10s", "1m"."""
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return round(v * unit, 3)
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*", str(v))
    if not m:
        raise ConfigError(f"{where}: {key}: {json.dumps(v)} is not a duration")
    return round(float(m[1]) * (_UNITS[m[2]] if m[2] else unit), 3)


def megabytes(v: Any, where: str) -> int:
    """PM2's max_memory_restart ("300M", "1G", "200K", or bytes) in MiB."""
    if isinstance(v, int) and not isinstance(v, bool):
        return max(1, v // (1024 * 1024))
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGkmg])?[Bb]?\s*", str(v))
    if not m:
        raise ConfigError(f"{where}: max_memory_restart: {json.dumps(v)} is not a size")
    size = float(m[1]) * _SIZES[m[2].lower()] if m[2] else float(m[1]) / (1024 * 1024)
    return max(1, round(size))


def _whole(v: Any, where: str, key: str) -> int:
    if isinstance(v, int) and not isinstance(v, bool) and v >= 0:
        return v
    raise ConfigError(f"{where}: {key}: {json.dumps(v)} is not a whole number")


def _text(v: Any) -> str:
    """An env value or argument as PM2 passes it: a text (numbers and booleans as JSON)."""
    return v if isinstance(v, str) else json.dumps(v)


def _log_file(app: dict[str, Any], table: dict[str, Any], where: str,
              imp: Conversion, base: Path) -> None:
    """PM2's log_file (both streams), else its out_file, as the agent's log_file; a
    relative path is PM2's, resolved from the app's directory (its cwd, else the
    file's), as env_file is."""
    # `log` and `output` are PM2's aliases of log_file and out_file
    key = next((k for k in ("log_file", "log", "out_file", "output") if app.get(k)),
               "out_file")
    path = app.get(key)
    if not path:
        return
    if isinstance(path, str) and path.startswith("~/"):
        path = os.path.expanduser(path)
    if not isinstance(path, str) or path in ("/dev/null", "NULL"):
        imp.note(where, key, f"{json.dumps(path)}: not carried: corral's log_file is a "
                             "path (and every app keeps a log)")
        return
    if not path.startswith("/"):
        path = os.path.normpath(Path(table["cwd"]) / path)
        imp.note(where, key, f"{json.dumps(app[key])}: log_file = {json.dumps(path)} "
                             "(resolved from the app's directory, as PM2 does)")
    table["log_file"] = path
