"""`corral import` on files as they are found (issue 57): what supervisord, systemd, PM2
and foreman pass over or read as their users wrote it is imported and said, not refused
(the shapes below were each met in public repositories' files: tests/data/import/
CORPUS.md names them); and, where the real files are at hand, every file of that corpus
gives a config check-config takes, an agent for each program, app, process type or unit,
and a line on stderr for each key it did not carry."""

from __future__ import annotations

import configparser
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from .daemon_harness import corral_run
from .forkserver import interpreter_settings

ROOT = Path(__file__).resolve().parent.parent
MANIFEST = ROOT / "tests" / "data" / "import" / "CORPUS.md"
MIGRATING = (ROOT / "docs" / "migrating.md").read_text()
# the corpus's files are other projects' own, so they are not kept here: a directory
# holding them by CORPUS.md's names (each `git show COMMIT:PATH` of its repository)
CORPUS_DIR = os.environ.get("CORRAL_IMPORT_CORPUS")
NODE = shutil.which("node")


def corral(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    # (this interpreter's own settings too: forked from the fork server, not started anew)
    return corral_run([*args], env={"PATH": os.environ.get("PATH", os.defpath),
                               **interpreter_settings(os.environ),
                               "PYTHONPATH": str(ROOT)}, cwd=cwd)


def imported(tmp_path: Path, files: dict[str, bytes], *names: str
             ) -> tuple[dict[str, dict[str, object]], list[str]]:
    """The files written in tmp_path and imported: the agents' tables, stderr's lines
    (each less `corral import: `); each config checked by check-config."""
    for name, data in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(data)
    r = corral("import", *(names or [next(iter(files))]), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    (tmp_path / "out.toml").write_text(r.stdout)
    checked = corral("check-config", "--no-check", "out.toml", cwd=tmp_path)
    assert checked.returncode == 0, checked.stderr
    import tomllib
    return (tomllib.loads(r.stdout)["agents"],
            [ln.removeprefix("corral import: ") for ln in r.stderr.splitlines()])


def test_a_supervisord_template_placeholder_is_taken_as_written_and_said(
        tmp_path: Path) -> None:
    """Images' files are often templates a start script fills in (`%HOME%`): supervisord
    would refuse one as it is; corral carries what it can and says the rest."""
    agents, said = imported(tmp_path, {"desktop.conf": (
        b"[program:panel]\ncommand=/usr/bin/panel --home %HOME%\ndirectory=%HOME%\n"
        b"stopsignal=WINCH\n")})
    assert agents == {"panel": {"command": "/usr/bin/panel --home %HOME%",
                                "protocol": "none", "start_secs": 1}}
    why = "(supervisord refuses it: a template filled in before supervisord starts?)"
    assert said == [
        "desktop.conf: [program:panel]: command: taken as written: '/usr/bin/panel --home "
        f"%HOME%' is badly formatted: unsupported format character 'H' (0x48) at index "
        f"23 {why}",
        "desktop.conf: [program:panel]: directory: not carried: '%HOME%' is badly "
        f"formatted: unsupported format character 'H' (0x48) at index 1 {why}",
        "desktop.conf: [program:panel]: stopsignal: WINCH: not carried: corral's "
        "stop_signal is one of TERM, HUP, INT, QUIT, KILL, USR1, USR2 (TERM is sent)",
    ]


def test_depends_on_is_an_order_and_an_include_matching_nothing_is_said(
        tmp_path: Path) -> None:
    """`depends_on` (and the dependent-startup plugin's key), which many images write and
    supervisord alone passes over, is `after`; an absolute [include] that matches nothing
    here (the image's /etc) is said, not silently empty. CRLF lines and a Latin-1 byte
    read as supervisord reads them."""
    agents, said = imported(tmp_path, {"agent.conf": (
        b"[include]\r\nfiles = /etc/supervisor/conf.d/*.conf\r\n"
        b"[program:xvfb]\r\ncommand=Xvfb :1 ; the display\r\n"
        b"[program:vnc]\r\ncommand=x11vnc -display :1\r\ndepends_on=xvfb\r\n"
        b"[program:app]\r\ncommand=python app.py --title caf\xe9\r\n"
        b"dependent_startup_wait_for=vnc:running xvfb:running\r\ndepends_on=ghost\r\n")})
    assert {n: t.get("after") for n, t in agents.items()} == {
        "xvfb": None, "vnc": ["xvfb"], "app": ["vnc", "xvfb"]}
    assert agents["app"]["command"] == "python app.py --title caf\ufffd"
    assert said == [
        "agent.conf: [include]: files: /etc/supervisor/conf.d/*.conf: no file here "
        "matches it: not read (its programs are not imported; give them too)",
        "agent.conf: [program:vnc]: depends_on: xvfb: after = [xvfb] (a plugin's key, "
        "which supervisord alone passes over)",
        "agent.conf: [program:app]: depends_on: ghost: not carried: not a program of this "
        "file",
        "agent.conf: [program:app]: depends_on: vnc: after = [vnc] (a plugin's key, which "
        "supervisord alone passes over)",
        "agent.conf: [program:app]: depends_on: xvfb: after = [xvfb] (a plugin's key, "
        "which supervisord alone passes over)",
    ]


def test_a_procfile_line_that_is_not_a_process_type_is_passed_over_and_said(
        tmp_path: Path) -> None:
    agents, said = imported(tmp_path, {"Procfile": (
        b"web: node web.js\n<<<<<<< HEAD\nworker: node worker.js\n=======\n"
        b"worker: node worker-2.js\n>>>>>>> 5bb7ec3\n")})
    assert list(agents) == ["web", "worker", "worker-2"]
    assert said == [
        "Procfile: line 2: (line): '<<<<<<< HEAD': not carried: not `TYPE: command` "
        "(foreman and honcho pass over it too)",
        "Procfile: line 4: (line): '=======': not carried: not `TYPE: command` (foreman "
        "and honcho pass over it too)",
        "Procfile: line 5 (worker): name: 'worker' is agent worker-2 (corral's names: 1-64 "
        "of [A-Za-z0-9_-], starting with a letter or digit, unique)",
        "Procfile: line 6: (line): '>>>>>>> 5bb7ec3': not carried: not `TYPE: command` "
        "(foreman and honcho pass over it too)",
    ]


def test_pm2s_aliases_a_bom_and_exit_codes_as_text_are_read_as_pm2_reads_them(
        tmp_path: Path) -> None:
    """`cmd` (PM2's Python page writes it) and `exec` are script; stop_exit_codes may be
    text; `output` is out_file; a pid file is said; a BOM is passed over."""
    apps = {"apps": [
        {"name": "echo", "cmd": "hello.py", "args": "a b", "pid": "/run/echo.pid",
         "stop_exit_codes": "0 2"},
        {"name": "api", "exec": "server.js", "output": "/var/log/api.log"}]}
    agents, said = imported(tmp_path, {"ecosystem.json":
                                       b"\xef\xbb\xbf" + json.dumps(apps).encode()})
    assert agents == {
        "echo": {"command": ["python", "hello.py", "a", "b"], "protocol": "none",
                 "restart": "on-failure", "exit_codes": [0, 2], "cwd": str(tmp_path)},
        "api": {"command": ["node", "server.js"], "protocol": "none",
                "restart": "always", "log_file": "/var/log/api.log", "cwd": str(tmp_path)}}
    assert said == ['ecosystem.json: apps[0] (echo): pid: "/run/echo.pid": not carried: '
                    "corral writes no pid file of an app (`corral status` shows its pid)"]


def test_a_pm2_json_with_comments_and_trailing_commas_is_read_as_pm2_reads_it(
        tmp_path: Path) -> None:
    """pm2 evaluates a .json file as a JavaScript expression: comments, trailing commas
    and unquoted keys are its users' JSON too, read as JSON5 (data, never run)."""
    agents, said = imported(tmp_path, {"ecosystem.json": (
        b'// the site\n{\n  apps: [\n    { name: "web", script: "server.js", },'
        b" // its server\n  ],\n}\n")})
    assert (agents, said) == ({"web": {"command": ["node", "server.js"], "protocol": "none",
                                       "restart": "always", "cwd": str(tmp_path)}}, [])


@pytest.mark.skipif(NODE is None, reason="node runs a .js ecosystem file")
def test_a_js_file_requiring_packages_not_installed_here_still_says_its_apps(
        tmp_path: Path) -> None:
    """An ecosystem file read away from its project's node_modules (`require('dotenv')
    .config()`, a date library for its log's name): each such package is an empty module,
    said; what the file takes from it is left out, the apps are read."""
    agents, said = imported(tmp_path, {"ecosystem.config.js": (
        b"require('dotenv').config();\nconst moment = require('moment');\n"
        b"module.exports = {apps: [{name: 'api', script: 'server.js', "
        b"out_file: `/var/log/api-${moment().format('YYYY')}.log`, "
        b"env: {PORT: process.env.PORT_UNSET_HERE || 3000}}]};\n")})
    assert agents == {"api": {"command": ["node", "server.js"], "protocol": "none",
                              "restart": "always", "log_file": "/var/log/api-.log",
                              "env": {"PORT": "3000"}, "cwd": str(tmp_path)}}
    why = "not installed beside the file: read as an empty module (what the file takes " \
          "from it is left out)"
    assert said == [f"ecosystem.config.js: require: dotenv: {why}",
                    f"ecosystem.config.js: require: moment: {why}"]


@pytest.mark.parametrize("codes", ['"two"', "[0, true]", '""'])
def test_pm2_exit_codes_that_are_not_statuses_are_refused_saying_so(
        tmp_path: Path, codes: str) -> None:
    (tmp_path / "eco.json").write_text(
        f'{{"apps": [{{"name": "a", "script": "a.sh", "stop_exit_codes": {codes}}}]}}')
    r = corral("import", "eco.json", cwd=tmp_path)
    assert (r.returncode, r.stdout, r.stderr) == (
        1, "", f"corral: eco.json: apps[0] (a): stop_exit_codes: {codes} is not exit "
               "statuses\n")


def test_a_systemd_unit_is_read_with_its_drop_ins_as_systemd_reads_it(
        tmp_path: Path) -> None:
    """A bad line passed over, a oneshot's several ExecStart= run in turn (`-` one's
    failure not stopping the next), an Environment= with an open quote said, a KillSignal
    corral cannot send said; the drop-in beside the unit read over it (an empty
    ExecStart= resetting it)."""
    agents, said = imported(tmp_path, {
        "prep.service": (b"[Unit]\nDescription=prep\n[Service]\nType=oneshot\n"
                         b"this line is not a directive\n"
                         b"ExecStart=-/usr/bin/mkdir /run/prep\nExecStart=/usr/bin/prep\n"
                         b"Environment=\"OPTS=-a -b\" MODE=fast\nEnvironment=\"BROKEN=1\n"
                         b"KillSignal=SIGWINCH\n"),
        "prep.service.d/override.conf": b"[Service]\nEnvironment=MODE=slow\n",
        "web.service": b"[Service]\nExecStart=/usr/bin/web --old\n",
        "web.service.d/10-new.conf": b"[Service]\nExecStart=\nExecStart=/usr/bin/web --new\n",
    }, "prep.service", "web.service")
    assert agents == {
        "prep": {"command": ["sh", "-c", "{ /usr/bin/mkdir /run/prep || true; } && "
                                         "/usr/bin/prep"],
                 "protocol": "none", "restart": "never",
                 "env": {"OPTS": "-a -b", "MODE": "slow"}},
        "web": {"command": "/usr/bin/web --new", "protocol": "none", "restart": "never"}}
    assert said == [
        "prep.service: line 5: (line): not carried: not `Key=value` in a [Section] "
        "(systemd passes over it too)",
        "prep.service: [Service]: (drop-in): prep.service.d/override.conf: read over the "
        "unit, as systemd reads its drop-ins",
        "prep.service: [Service]: ExecStart: 2 commands: run in turn by `sh -c`, each once "
        "the one before succeeded",
        "prep.service: [Service]: Environment: \"BROKEN=1: not carried: No closing "
        "quotation",
        "prep.service: [Service]: KillSignal: WINCH: not carried: corral's stop_signal is "
        "one of TERM, HUP, INT, QUIT, KILL, USR1, USR2 (TERM is sent)",
        "web.service: [Service]: (drop-in): web.service.d/10-new.conf: read over the unit, "
        "as systemd reads its drop-ins",
    ]


# -- the corpus itself, where its files are at hand ----------------------------------

def manifest() -> list[dict[str, str]]:
    """CORPUS.md's table: file, repository, path, commit, licence, agents."""
    rows = [[c.strip() for c in ln.strip().strip("|").split("|")]
            for ln in MANIFEST.read_text().splitlines() if ln.startswith("| ")]
    head, *body = rows
    return [dict(zip(head, r, strict=True)) for r in body if not r[0].startswith("-")]


def documented(tool: str) -> tuple[set[str], set[str]]:
    """docs/migrating.md's `## tool` table: the keys carried (a corral key beside them)
    and those it says are not said (nothing a program does), in lower case."""
    part = re.search(rf"(?ms)^## {tool}\n(.*?)(?=^## |\Z)", MIGRATING)
    assert part is not None
    carried: set[str] = set()
    quiet: set[str] = set()
    for row in part[1].splitlines():
        cells = [c.strip() for c in row.strip().strip("|").split("|")]
        if not row.startswith("| `") or len(cells) < 3:
            continue
        keys = {k.lower().rstrip("=") for k in re.findall(r"`([^`]+)`", cells[0])}
        (quiet if "not said" in cells[2] else
         carried if cells[1] not in ("—", "") else set()).update(keys)
    return carried, quiet


# keys whose value here is what corral does anyway (the importer says any other value)
SAME = {"stopasgroup": "true", "killasgroup": "true", "redirect_stderr": "true",
        "killmode": "control-group", "process_name": "%(program_name)s"}


def keys_of(path: Path, tool: str) -> dict[str, set[str]]:
    """Each program's, app's or unit's keys as the file writes them (lower case), less
    those set to what corral does anyway."""
    if tool == "supervisord":
        ini = configparser.RawConfigParser(strict=False, interpolation=None,
                                           inline_comment_prefixes=(";", "#"))
        ini.read_string(path.read_text(encoding="utf-8", errors="replace"))
        return {s: {k.lower() for k, v in ini[s].items() if SAME.get(k.lower()) != v.lower()}
                for s in ini.sections() if s.startswith("program:")}
    if tool == "systemd":
        text = path.read_text(encoding="utf-8", errors="replace")
        return {"unit": {k.lower() for k, v in re.findall(r"(?m)^\s*([A-Za-z]+)=(.*)$", text)
                         if SAME.get(k.lower()) != v.strip().lower()}}
    if tool == "PM2":
        if path.suffix == ".json":
            data = json.loads(path.read_text(encoding="utf-8-sig"))
        else:
            assert NODE is not None
            data = json.loads(subprocess.run(
                [NODE, "-e", "process.stdout.write(JSON.stringify(require(process.argv[1])))",
                 str(path.resolve())], capture_output=True, text=True, check=True).stdout)
        apps = data["apps"] if isinstance(data, dict) else data
        return {str(i): {k.lower() for k in app} for i, app in enumerate(apps)}
    return {}


def tool_of(name: str) -> str:
    return ("systemd" if name.endswith(".service") else
            "PM2" if name.endswith((".js", ".json", ".cjs")) else
            "Procfile" if "procfile" in name.lower() else "supervisord")


@pytest.mark.skipif(CORPUS_DIR is None, reason="the corpus's files are other projects': "
                    "CORRAL_IMPORT_CORPUS names a directory holding them (CORPUS.md)")
@pytest.mark.parametrize("row", manifest(), ids=lambda r: r["file"])
def test_every_file_of_the_corpus_imports_whole(row: dict[str, str], tmp_path: Path
                                                ) -> None:
    path = Path(CORPUS_DIR or ".") / row["file"]
    if path.suffix == ".js" and NODE is None:
        pytest.skip("node is not installed: a .js ecosystem file is run by node")
    r = corral("import", path.name, cwd=path.parent)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "corral.toml"
    out.write_text(r.stdout)
    checked = corral("check-config", "--no-check", str(out), cwd=tmp_path)
    assert checked.returncode == 0, checked.stderr
    import tomllib
    agents = sorted(tomllib.loads(r.stdout).get("agents", {}))
    assert agents == sorted(row["agents"].replace("—", "").split())
    tool = tool_of(row["file"])
    carried, quiet = documented(tool) if tool != "Procfile" else (set(), set())
    said = r.stderr.lower()
    unsaid = sorted({f"{where}: {k}" for where, keys in keys_of(path, tool).items()
                     for k in keys - carried - quiet
                     if not k.startswith("env_") and f": {k}:" not in said})
    assert unsaid == [], "keys neither carried nor said"


def test_a_profile_no_app_has_is_said_with_those_there_are(tmp_path: Path) -> None:
    """`--env prod` where the apps say env_production: pm2 would run them on env alone,
    silently; corral says so, naming the profiles there are. On a file that is not PM2's
    the flag is said not read."""
    apps = {"apps": [{"name": "a", "script": "a.sh", "env": {"X": "1"},
                      "env_production": {"X": "2"}},
                     {"name": "b", "script": "b.sh", "env_staging": {"Y": "1"}}]}
    (tmp_path / "eco.json").write_text(json.dumps(apps))
    (tmp_path / "Procfile").write_text("web: serve\n")
    r = corral("import", "--env", "prod", "eco.json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stderr.splitlines()[-1] == (
        "corral import: eco.json: --env: prod: no app has env_prod: each has its env alone "
        "(the profiles here: production, staging)")
    assert 'X = "1"' in r.stdout
    r = corral("import", "--env", "production", "Procfile", cwd=tmp_path)
    assert (r.returncode, r.stderr) == (0, "corral import: --env production: not read: a "
                                           "PM2 profile, and no file here is a PM2 "
                                           "ecosystem file\n")


def test_an_unset_variable_in_an_environment_and_a_comment_in_a_continued_line(
        tmp_path: Path) -> None:
    """`C=%(ENV_X)s` with X unset where corral import runs is read where the program
    starts (it was an environment refused as cut short, then an empty value); a comment
    line inside a continued ExecStart= is read past, as systemd reads past it (the line
    after it was passed over)."""
    agents, said = imported(tmp_path, {
        "w.conf": b"[program:w]\ncommand=/bin/w\nenvironment=A=\"1\",C=%(ENV_UNSET_HERE)s\n",
        "app.service": (b"[Service]\nExecStart=/usr/bin/app \\\n  --port 8000 \\\n"
                        b"  # the port the proxy expects\n  --debug\n")},
        "w.conf", "app.service")
    assert (agents["w"]["env"], agents["w"]["command"], agents["app"]["command"]) == (
        {"A": "1"}, ["sh", "-c", 'exec env "C=${UNSET_HERE}" "$0" "$@"', "/bin/w"],
        "/usr/bin/app --port 8000 --debug")
    assert said == ["w.conf: [program:w]: environment: C=%(ENV_UNSET_HERE)s: set as the "
                    "program starts, by `sh -c`, UNSET_HERE read from the daemon's "
                    "environment then (as supervisord reads it from its own), not where "
                    "corral import ran"]


def test_a_byte_order_mark_and_utf_16_are_read_as_their_text(tmp_path: Path) -> None:
    """Files saved by Windows editors: UTF-8 with a BOM (whose first section or line was
    not seen), UTF-16 with CRLF lines."""
    agents, said = imported(tmp_path, {
        "bom.conf": b"\xef\xbb\xbf[program:bom]\ncommand=/bin/bom\nstartsecs=0\n",
        "Procfile.windows": "web: serve\r\nworker: work\r\n".encode("utf-16"),
        "bom.service": b"\xef\xbb\xbf[Unit]\nDescription=x\n[Service]\nExecStart=/bin/x\n"},
        "bom.conf", "Procfile.windows", "bom.service")
    assert {n: t["command"] for n, t in agents.items()} == {
        "bom": "/bin/bom", "web": ["sh", "-c", "exec serve"],
        "worker": ["sh", "-c", "exec work"], "bom-2": "/bin/x"}
    # two files' agents of one name: the later one's renamed
    assert said == ["bom.service: (file): name: 'bom' is agent bom-2 (a file imported "
                    "before it has an agent of that name)"]
