"""`corral import` (issue 57): supervisord, PM2, Procfile and systemd files as corral's
config. A corpus of files in the shapes those tools' users write (tests/data/import/),
each turned into exactly the config and the notes beside it in expected/; each config
passes check-config; one runs under a real daemon; every refusal says why."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from corral.supervisor.configload import load_config

from .daemon_harness import corral_run, running_daemon, shared_tmpdir
from .forkserver import interpreter_settings
from .test_daemon_cli import wait_until

ROOT = Path(__file__).resolve().parent.parent
CORPUS = Path(__file__).resolve().parent / "data" / "import"
EXPECTED = CORPUS / "expected"
FILES = ["desktop-agent.conf", "queue-workers.conf", "ecosystem.config.js", "ecosystem.json",
         "Procfile", "agent-runner@.service", "mcp-gateway.service", "redis.service",
         "runnable.conf"]
# the environment the expected files were made in: what %(ENV_X)s reads
ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "WIDTH": "1280", "HEIGHT": "800",
       "MODEL": "claude", "QUEUES": "default", "WORKERS": "4", "POOL": "blue"}
NODE = shutil.which("node", path=ENV["PATH"])


def corral(*args: str, env: dict[str, str] | None = None, cwd: Path = CORPUS
           ) -> subprocess.CompletedProcess[str]:
    # and this interpreter's own settings, which no file of the corpus names: the CLI is
    # forked from the fork server, not started and its modules imported anew each time
    return corral_run([*args], env={**(env or ENV), **interpreter_settings(os.environ),
                                    "PYTHONPATH": str(ROOT)}, cwd=cwd)


def needs_node(name: str) -> object:
    js = name.endswith(".js")
    return pytest.param(name, marks=pytest.mark.skipif(
        js and NODE is None, reason="node is not installed: a .js ecosystem file is run "
                                    "by node"))


@pytest.mark.parametrize("name", [needs_node(n) for n in FILES])
def test_each_file_gives_exactly_its_config_and_its_notes(name: str, tmp_path: Path) -> None:
    r = corral("import", name)
    # (a PM2 app's cwd is made absolute: the corpus's directory, wherever it is)
    assert (r.returncode, r.stdout, r.stderr) == (
        0, (EXPECTED / f"{name}.toml").read_text().replace("@CORPUS@", str(CORPUS)),
        (EXPECTED / f"{name}.stderr").read_text())
    # and corral takes it (the programs are not on this machine: --no-check)
    out = tmp_path / "corral.toml"
    out.write_text(r.stdout)
    checked = corral("check-config", "--no-check", str(out))
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.startswith(f"{out}: ok (")


def test_every_program_app_type_and_unit_is_an_agent() -> None:
    agents = {name: sorted(load_config(EXPECTED / f"{name}.toml").agents)
              for name in FILES}
    assert agents == {
        "desktop-agent.conf": ["agent", "novnc", "x11vnc", "xvfb"],
        "queue-workers.conf": ["queue", "scheduler"],
        "ecosystem.config.js": ["api", "mcp-fetch", "mcp-filesystem"],
        "ecosystem.json": ["web-app", "worker"],
        "Procfile": ["release", "web", "worker"],
        "agent-runner@.service": ["agent-runner"],
        "mcp-gateway.service": ["mcp-gateway"],
        "redis.service": ["redis"],
        "runnable.conf": ["display", "drain", "worker"],
    }


def test_the_imported_config_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """The runnable file, imported and run: replicas numbered as supervisord numbered
    them in their arguments, the environment read as they start, the one-shot's exit
    status 2 a clean exit (not restarted, not failed)."""
    monkeypatch.setenv("POOL", "blue")
    r = corral("import", "runnable.conf")
    assert r.returncode == 0, r.stderr
    with running_daemon(shared_tmpdir(), r.stdout) as d:
        wait_until(lambda: {k: v["state"] for k, v in d.status().items()} == {
            "display#0": "ready", "worker#0": "ready", "worker#1": "ready",
            "drain#0": "terminated"}, what="display and workers ready, drain done")
        st = d.status()["drain#0"]
        # its log says why, should it have been restarted (corral's own lines in it)
        assert (st["restarts"], st["last_exit"]) == (0, "exited with status 2"), \
            d.cli("logs", "drain", "-n", "20").stdout
        said = lambda: d.cli("logs", "worker", "-n", "10").stdout  # noqa: E731
        wait_until(lambda: "worker 01 of blue: hello, world" in said()
                   and "worker 02 of blue: hello, world" in said(), what="both workers")


def test_a_file_that_exists_is_not_replaced_but_with_force(tmp_path: Path) -> None:
    out = tmp_path / "corral.toml"
    out.write_text("[agents.old]\ncommand = 'true'\n")
    r = corral("import", "Procfile", "-o", str(out))
    assert r.returncode == 1
    assert out.read_text() == "[agents.old]\ncommand = 'true'\n"  # untouched
    lines = r.stderr.splitlines()
    assert lines[-1] == (f"corral: {out} exists: not replaced (--force replaces it; the "
                         "difference is above)")
    assert f"--- {out}" in lines and "-[agents.old]" in lines and "+[agents.web]" in lines
    r = corral("import", "Procfile", "-o", str(out), "--force")
    assert r.returncode == 0 and r.stdout == ""
    assert r.stderr.splitlines()[-1] == f"{out}: 3 agents written"
    assert out.read_text() == (EXPECTED / "Procfile.toml").read_text()
    fresh = tmp_path / "new.toml"
    r = corral("import", "mcp-gateway.service", "-o", str(fresh))
    assert r.returncode == 0 and r.stderr.splitlines()[-1] == f"{fresh}: 1 agent written"


@pytest.mark.parametrize("name,text,said", [
    ("bad.conf", "[program:a]\ncommand=x\nautorestart=sometimes\n",
     "[program:a]: autorestart: 'sometimes' is not true, false or unexpected"),
    ("bad.conf", "[program:a]\nautostart=true\n", "[program:a]: command: is required"),
    ("bad.conf", "[program:a]\ncommand=x\nenvironment=A=1,B\n",
     "[program:a]: environment: unexpected end of KEY=value pairs in 'A=1,B'"),
    ("bad.conf", "[program:a\ncommand=x\n",
     "not an INI file supervisord reads: File contains no section headers."),
    ("eco.json", '{"apps": [{"name": "a"}]}', "apps[0]: script: is required (a string)"),
    ("eco.json", '{"apps": {"a": 1}}',
     'apps: expected a list of apps (PM2\'s {"apps": [...]})'),
    # a .json is data (JSON5 at most), never run as pm2 runs it (issue 74)
    ("eco.json", "{apps: [}",
     'not JSON (nor JSON5; a .json file is data, never run): line 1 column 9: Unexpected '
     '"}"'),
    ("eco.json", "// a comment\n{apps: [{name: 'a', script: process.env.APP}]}",
     'not JSON (nor JSON5; a .json file is data, never run): line 2 column 29: Unexpected '
     '"p"'),
    ("eco.json", "[" * 500 + "]" * 500,
     "not JSON (nor JSON5; a .json file is data, never run): nested too deep"),
    ("eco.json", '{"apps": [{"script": "a", "instances": "lots"}]}',
     'apps[0] (a): instances: "lots" is not a number or "max"'),
    ("Procfile", "web gunicorn\n", "no process types (`TYPE: command` lines)"),
    ("x.service", "[Unit]\nDescription=x\n", "no [Service] section: not a service unit"),
    ("x.service", "[Service]\nType=simple\n", "[Service]: ExecStart: is required"),
    ("x.service", "[Service]\nExecStart=/bin/x\nRestartSec=soon\n",
     "[Service]: RestartSec: 'soon' is not a time span"),
    ("notes.txt", "just some text\n",
     "not a file corral import knows (a supervisord .conf, a PM2 ecosystem file, a "
     "Procfile or a systemd .service unit): give --from"),
])
def test_a_file_it_cannot_read_is_refused_saying_why(tmp_path: Path, name: str, text: str,
                                                     said: str) -> None:
    (tmp_path / name).write_text(text)
    r = corral("import", name, cwd=tmp_path)
    assert (r.returncode, r.stdout, r.stderr) == (1, "", f"corral: {name}: {said}\n")


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    r = corral("import", "--from", "supervisord", "nope.conf", cwd=tmp_path)
    assert (r.returncode, r.stderr) == (1, "corral: nope.conf: cannot read: No such file or "
                                           "directory\n")


@pytest.mark.skipif(NODE is None, reason="node is not installed")
@pytest.mark.parametrize("body", [
    "require('child_process').execSync('touch pwned');",
    "require('fs').writeFileSync('pwned', 'x');",
    "require('fs').readFileSync('/etc/passwd', 'utf8');",
])
def test_a_js_file_runs_under_nodes_permission_model(tmp_path: Path, body: str) -> None:
    """It may read its own directory (a helper it requires), nothing else: no child
    process, no write, no read elsewhere."""
    (tmp_path / "eco.config.js").write_text(
        body + "\nmodule.exports = {apps: [{name: 'a', script: 'sleep'}]};\n")
    r = corral("import", "eco.config.js", cwd=tmp_path)
    assert (r.returncode, r.stdout) == (1, "")
    assert r.stderr == ("corral: eco.config.js: node could not evaluate it (exit status 1): "
                        "Error: Access to this API has been restricted\n")
    assert not (tmp_path / "pwned").exists()


@pytest.mark.skipif(NODE is None, reason="node is not installed")
def test_a_js_file_may_require_its_neighbours(tmp_path: Path) -> None:
    (tmp_path / "ports.js").write_text("module.exports = {port: 4000};\n")
    (tmp_path / "eco.config.js").write_text(
        "const {port} = require('./ports');\n"
        "module.exports = {apps: [{name: 'a', script: 'sleep', args: ['9'], "
        "env: {PORT: port}}]};\n")
    r = corral("import", "eco.config.js", cwd=tmp_path)
    assert (r.returncode, r.stderr) == (0, "")
    assert r.stdout == ("# imported from eco.config.js (pm2) by corral import\n\n"
                        '[agents.a]\ncommand = ["sleep", "9"]\nprotocol = "none"\n'
                        f'cwd = "{tmp_path}"\nrestart = "always"\n\n[agents.a.env]\n'
                        'PORT = "4000"\n')


def test_a_js_file_without_node_is_refused_saying_what_to_do(tmp_path: Path) -> None:
    (tmp_path / "eco.config.js").write_text("module.exports = {apps: []};\n")
    bare = tmp_path / "bin"
    bare.mkdir()
    r = corral("import", "eco.config.js", cwd=tmp_path, env={"PATH": str(bare)})
    assert (r.returncode, r.stderr) == (1, (
        "corral: eco.config.js: a JavaScript ecosystem file is read by running node, which "
        "is not on PATH: install node, or give its JSON (`node -p "
        "'JSON.stringify(require(\"./FILE\"))' > ecosystem.json`)\n"))


def test_names_corral_cannot_take_are_made_valid_and_said(tmp_path: Path) -> None:
    (tmp_path / "s.conf").write_text("[program:my.app]\ncommand=sleep 9\nstartsecs=0\n"
                                     "[program:corral]\ncommand=sleep 9\nstartsecs=0\n")
    r = corral("import", "s.conf", cwd=tmp_path)
    assert r.returncode == 0
    assert r.stderr.splitlines() == [
        "corral import: s.conf: [program:my.app]: name: 'my.app' is agent my-app (corral's "
        "names: 1-64 of [A-Za-z0-9_-], starting with a letter or digit, unique)",
        "corral import: s.conf: [program:corral]: name: 'corral' is agent corral-agent "
        "(corral's names: 1-64 of [A-Za-z0-9_-], starting with a letter or digit, unique)"]
    assert "[agents.my-app]" in r.stdout and "[agents.corral-agent]" in r.stdout


def test_a_variable_not_set_where_it_is_imported_is_said_not_fatal(tmp_path: Path) -> None:
    """A container's file names variables its runtime sets: the import still gives a
    config corral takes, each key it could not expand named."""
    (tmp_path / "s.conf").write_text(
        '[supervisord]\nenvironment=A="%(ENV_NOPE1)s",B=2\n'
        "[program:w]\ncommand=run --n %(ENV_NOPE2)s\nnumprocs=%(ENV_NOPE3)s\n"
        'environment=X="%(ENV_NOPE5)s"\nstartsecs=0\n')
    r = corral("import", "s.conf", cwd=tmp_path)
    assert (r.returncode, r.stderr.splitlines()) == (0, [
        "corral import: s.conf: [program:w]: numprocs: '%(ENV_NOPE3)s': not carried: "
        "$NOPE3 not set where corral import ran (supervisord reads it as it starts)",
        "corral import: s.conf: [program:w]: command: run by `sh -c`: ${NOPE2} read as the "
        "process starts",
        # an environment's variables are read where the program starts (issue 88)
        "corral import: s.conf: [program:w]: environment: A=%(ENV_NOPE1)s, "
        "X=%(ENV_NOPE5)s: set as the program starts, by `sh -c`, NOPE1, NOPE5 read from the "
        "daemon's environment then (as supervisord reads it from its own), not where corral "
        "import ran"])
    assert r.stdout == (
        "# imported from s.conf (supervisord) by corral import\n\n[agents.w]\n"
        'command = ["sh", "-c", "exec env \\"A=${NOPE1}\\" \\"X=${NOPE5}\\" run --n '
        '\\"${NOPE2}\\""]\nprotocol = "none"\n\n[agents.w.env]\nB = "2"\n')
    (tmp_path / "corral.toml").write_text(r.stdout)
    assert corral("check-config", "--no-check", "corral.toml", cwd=tmp_path).returncode == 0


def test_a_pm2_script_runs_under_the_interpreter_its_extension_names(tmp_path: Path) -> None:
    (tmp_path / "e.json").write_text(json.dumps({"apps": [
        {"name": "p", "script": "bot.py"}, {"name": "s", "script": "run.sh"},
        {"name": "b", "script": "/usr/bin/bin"},
        {"name": "i", "script": "app.py", "interpreter": "/opt/py/bin/python3"}]}))
    r = corral("import", "e.json", cwd=tmp_path)
    commands = [ln for ln in r.stdout.splitlines() if ln.startswith("command = ")]
    assert (r.returncode, commands) == (0, [
        'command = ["python", "bot.py"]', 'command = ["bash", "run.sh"]',
        'command = ["/usr/bin/bin"]', 'command = ["/opt/py/bin/python3", "app.py"]'])


def test_keys_lists_the_other_tools_names_for_corrals() -> None:
    r = corral("import", "--keys")
    assert r.returncode == 0
    lines = r.stdout.splitlines()
    assert "restart            autorestart (supervisord, PM2)" in lines
    assert ("exit_codes         exitcodes (supervisord), stop_exit_codes (PM2), "
            "SuccessExitStatus (systemd)") in lines
    assert ("after              priority (supervisord), depends_on (supervisord), "
            "After (systemd)") in lines
    assert "restart_cron       cron_restart (PM2)" in lines
    r = corral("import")
    assert (r.returncode, r.stderr.splitlines()[-1]) == (
        2, "Error: give the files to import (or --keys)")


def test_units_imported_together_keep_their_order(tmp_path: Path) -> None:
    """agent-runner's After=/Requires=redis.service is an order among the units imported
    with it: its agent's `after` and `requires`; a target, or a unit not imported, is
    said."""
    r = corral("import", "redis.service", "agent-runner@.service")
    assert r.returncode == 0
    assert 'after = ["redis"]' in r.stdout.splitlines()
    assert 'requires = ["redis"]' in r.stdout.splitlines()
    assert r.stderr.splitlines()[-3:] == [
        "corral import: agent-runner@.service: [Service]: MemoryMax: 2G: not carried: "
        "corral's limits.memory_mb is the address space (RLIMIT_AS) and limits.rss_mb a "
        "soft restart, not a cgroup's memory.max",
        "corral import: agent-runner@.service: [Unit]: After: network-online.target: not "
        "carried: not a unit imported with it (corral orders its own agents only)",
        "corral import: agent-runner@.service: [Unit]: Requires: redis.service: requires "
        "= [redis] (started once it serves, stopped if it fails for good)"]
    out = tmp_path / "corral.toml"
    out.write_text(r.stdout)
    checked = corral("check-config", "--no-check", str(out))
    assert (checked.returncode, checked.stdout) == (0, f"{out}: ok (2 agents, 0 MCP servers)\n")


@pytest.mark.skipif(NODE is None, reason="node is not installed")
def test_a_js_file_reaches_no_network(tmp_path: Path) -> None:
    """node 20's permission model leaves the network open: a file handed to corral import
    sent the environment it runs in (the operator's, keys and all) to a listener of its
    choosing (decision 471). It runs in a network namespace of its own: no connection
    is made, and its export is still read."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.setblocking(False)
        port = listener.getsockname()[1]
        (tmp_path / "eco.config.js").write_text(
            f"const s = require('net').connect({port}, '127.0.0.1');\n"
            "s.on('connect', () => s.end(JSON.stringify(process.env)));\n"
            "s.on('error', () => {});\n"
            "module.exports = {apps: [{name: 'a', script: 'sleep', args: ['9']}]};\n")
        r = corral("import", "eco.config.js", cwd=tmp_path, env={**ENV, "SECRET_KEY": "k-4711"})
        assert (r.returncode, r.stderr) == (0, "")
        assert '[agents.a]\ncommand = ["sleep", "9"]' in r.stdout
        with pytest.raises(BlockingIOError):
            listener.accept()


def test_a_pm2_profile_is_picked_by_env_as_pm2_start_env_picks_it(tmp_path: Path) -> None:
    eco = tmp_path / "ecosystem.json"
    eco.write_text(json.dumps({"apps": [{
        "name": "api", "script": "/srv/api/server.js",
        "env": {"NODE_ENV": "development", "PORT": 3000},
        "env_production": {"NODE_ENV": "production", "WORKERS": 4},
        "env_staging": {"NODE_ENV": "staging"}}]}))
    r = corral("import", "--env", "production", str(eco))
    assert r.returncode == 0, r.stderr
    said = [ln for ln in r.stdout.splitlines() if ln.startswith(("NODE_ENV", "PORT", "WORK"))]
    assert said == ['NODE_ENV = "production"', 'PORT = "3000"', 'WORKERS = "4"']
    assert r.stderr == (
        f"corral import: {eco}: apps[0] (api): env_staging: not carried: another profile "
        "(`corral import --env staging` sets it over env, as `pm2 start --env staging` "
        "does)\n")
    # without it, env alone, as `pm2 start` without --env
    r = corral("import", str(eco))
    assert 'NODE_ENV = "development"' in r.stdout.splitlines()
    assert r.stderr.count("not carried: another profile") == 2
