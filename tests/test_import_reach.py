"""`corral import` reads, never runs with reach (issue 74): a JavaScript ecosystem file is
evaluated in a sandbox with no socket, no file outside its directory tree, no signal to
the host's processes, bounded memory and output; a `.json` is data, never run; what one
file names (an include, a drop-in) is read only as a regular file in its directory; `-o`
never writes through a link; a program's user is never lost (root by omission); any text
gives TOML corral loads. Each refusal is asserted by its message."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import tomllib
from pathlib import Path

import pytest

from .test_daemon_cli import wait_until
from .test_import import NODE, corral

needs_node = pytest.mark.skipif(NODE is None, reason="node is not installed")
APPS = "module.exports = {apps: [{name: 'a', script: 'sleep', args: ['9']}]};\n"


@needs_node
def test_a_js_file_connects_to_no_unix_socket_in_its_own_directory(tmp_path: Path) -> None:
    """A socket in the file's own tree (corral's control socket, were the file beside
    it) is visible there, read-only, which is no guard for connect(2): socket(2) itself
    is refused in the sandbox, so nothing reaches the listener; the export is read."""
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(tmp_path / "corral.sock"))
        listener.listen()
        listener.setblocking(False)
        (tmp_path / "eco.config.js").write_text(
            "const s = require('net').connect('./corral.sock');\n"
            "s.on('connect', () => s.end('{\"method\": \"agents/add\"}'));\n"
            "s.on('error', () => {});\n" + APPS)
        r = corral("import", "eco.config.js", cwd=tmp_path)
        assert (r.returncode, r.stderr) == (0, "")
        assert '[agents.a]\ncommand = ["sleep", "9"]' in r.stdout
        with pytest.raises(BlockingIOError):
            listener.accept()


@needs_node
def test_a_link_in_its_directory_to_a_root_only_file_finds_no_file(tmp_path: Path) -> None:
    secret = tmp_path / "outside" / "secret"
    secret.parent.mkdir()
    secret.write_text("s3cret-4711\n")
    secret.chmod(0o600)
    app = tmp_path / "app"
    app.mkdir()
    (app / "secret").symlink_to(secret)
    (app / "eco.config.js").write_text(
        "const t = require('fs').readFileSync('./secret', 'utf8');\n"
        "module.exports = {apps: [{name: 'a', script: 'sleep', args: [t]}]};\n")
    r = corral("import", "eco.config.js", cwd=app)
    assert (r.returncode, r.stdout) == (1, "")
    assert r.stderr == ("corral: eco.config.js: node could not evaluate it (exit status 1): "
                        "Error: ENOENT: no such file or directory, open './secret'\n")
    assert "s3cret" not in r.stderr


@needs_node
def test_a_js_file_signals_no_process_of_the_host(tmp_path: Path) -> None:
    """In a pid namespace of its own, a host's pid names no process (ESRCH): the file
    that tried still gives its export, and the process it aimed at lives on."""
    target = subprocess.Popen(["sleep", "60"])
    try:
        (tmp_path / "eco.config.js").write_text(
            f"let said = 'none';\ntry {{ process.kill({target.pid}, 'SIGKILL'); said = "
            "'killed'; } catch (e) { said = e.code; }\n"
            "module.exports = {apps: [{name: 'a', script: 'sleep', args: [said]}]};\n")
        r = corral("import", "eco.config.js", cwd=tmp_path)
        assert (r.returncode, r.stderr) == (0, "")
        assert 'command = ["sleep", "ESRCH"]' in r.stdout.splitlines()
        assert target.poll() is None
    finally:
        target.kill()
        target.wait()


@needs_node
@pytest.mark.parametrize("body,said", [
    ("const a = []; for (;;) a.push(new Array(1e6).fill(1.5));\n",
     "node ran out of memory evaluating it (it may use 256 MiB of heap, 2048 MiB in all)"),
    ("const a = []; for (;;) a.push(Buffer.alloc(1e8, 1));\n",
     "node ran out of memory evaluating it (it may use 256 MiB of heap, 2048 MiB in all)"),
    ("const s = 'x'.repeat(1e6); for (let i = 0; i < 40; i++) process.stdout.write(s);\n"
     + APPS, "node's output passed 16 MiB: not read"),
])
def test_a_js_file_is_bounded_in_memory_and_output(tmp_path: Path, body: str,
                                                   said: str) -> None:
    (tmp_path / "eco.config.js").write_text(body)
    r = corral("import", "eco.config.js", cwd=tmp_path)
    assert (r.returncode, r.stdout, r.stderr) == (1, "", f"corral: eco.config.js: {said}\n")


def _running_with(text: str) -> list[int]:
    """The pids of processes whose command line holds `text`."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and text.encode() in (entry / "cmdline").read_bytes():
                pids.append(int(entry.name))
        except OSError:
            continue  # gone meanwhile
    return pids


@needs_node
def test_a_js_file_that_never_ends_is_stopped_with_its_sandbox(tmp_path: Path) -> None:
    (tmp_path / "eco.config.js").write_text("for (;;) {}\n" + APPS)
    r = corral("import", "eco.config.js", cwd=tmp_path)
    assert (r.returncode, r.stdout, r.stderr) == (1, "", (
        "corral: eco.config.js: node did not finish evaluating it within 10 s (it was "
        "stopped)\n"))
    # neither bwrap nor node outlives it (node, in a session of its own, ends by its
    # parent-death signal at bwrap's kill: a moment after corral's exit at most)
    wait_until(lambda: _running_with(str(tmp_path)) == [], timeout=5,
               what="the sandbox's processes gone")


@needs_node
def test_without_bubblewrap_a_js_file_is_not_run(tmp_path: Path) -> None:
    """A PATH with node on it and no bwrap: no sandbox, so node is not run at all."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    assert NODE is not None
    (bin_dir / "node").symlink_to(NODE)
    (tmp_path / "eco.config.js").write_text(
        "require('fs').writeFileSync('ran', 'x');\n" + APPS)
    r = corral("import", "eco.config.js", cwd=tmp_path, env={"PATH": str(bin_dir)})
    assert (r.returncode, r.stdout, r.stderr) == (1, "", (
        "corral: eco.config.js: a JavaScript ecosystem file is evaluated only in a sandbox "
        "(bubblewrap), which is not installed here (Debian's package is bubblewrap): give "
        "its JSON (`node -p 'JSON.stringify(require(\"./FILE\"))' > ecosystem.json`)\n"))
    assert not (tmp_path / "ran").exists()


def test_a_json_file_is_data_never_run(tmp_path: Path) -> None:
    """pm2 would evaluate it (and write the file); corral import reads JSON5 and stops
    where the text stops being data."""
    (tmp_path / "ecosystem.json").write_text(
        "{apps: (require('fs').writeFileSync('pwned', 'x'), [])}\n")
    r = corral("import", "ecosystem.json", cwd=tmp_path)
    assert (r.returncode, r.stdout, r.stderr) == (1, "", (
        "corral: ecosystem.json: not JSON (nor JSON5; a .json file is data, never run): "
        'line 1 column 8: Unexpected "("\n'))
    assert not (tmp_path / "pwned").exists()


def _include(tmp_path: Path, name: str, target: str) -> None:
    (tmp_path / "app" / "conf.d").mkdir(parents=True)
    (tmp_path / "app" / "conf.d" / name).symlink_to(target)
    (tmp_path / "app" / "s.conf").write_text("[include]\nfiles = conf.d/*.conf\n"
                                             "[program:a]\ncommand=sleep 9\n")


def test_an_include_linked_out_of_its_directory_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside.conf"
    outside.write_text("[program:b]\ncommand=cat /etc/shadow\n")
    outside.chmod(0o600)
    _include(tmp_path, "x.conf", str(outside))
    r = corral("import", "s.conf", cwd=tmp_path / "app")
    assert (r.returncode, r.stdout, r.stderr) == (1, "", (
        f"corral: s.conf: [include] files: conf.d/x.conf: a link to {outside}, outside its "
        "directory: not read (move or copy the file there)\n"))


@pytest.mark.parametrize("files,said", [
    ("/dev/zero", "/dev/zero: not a regular file: not read"),
    ("conf.d", "conf.d: not a regular file: not read"),
])
def test_an_include_that_is_not_a_regular_file_is_refused(tmp_path: Path, files: str,
                                                          said: str) -> None:
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "s.conf").write_text(f"[include]\nfiles = {files}\n"
                                     "[program:a]\ncommand=sleep 9\n")
    r = corral("import", "s.conf", cwd=tmp_path)
    assert (r.returncode, r.stdout, r.stderr) == (
        1, "", f"corral: s.conf: [include] files: {said}\n")


def test_a_file_given_that_is_a_device_or_too_large_is_not_read(tmp_path: Path) -> None:
    r = corral("import", "--from", "supervisord", "/dev/zero", cwd=tmp_path)
    assert (r.returncode, r.stderr) == (1, "corral: /dev/zero: cannot read: not a regular "
                                           "file (a character device): not read\n")
    (tmp_path / "big.conf").write_bytes(b"; " + b"x" * (4 << 20) + b"\n")
    r = corral("import", "big.conf", cwd=tmp_path)
    assert (r.returncode, r.stderr) == (1, "corral: big.conf: cannot read: larger than 4 "
                                           "MiB: not a config file corral import reads\n")


def test_a_drop_in_linked_out_of_its_directory_is_refused_and_a_masked_one_said(
        tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere.conf"
    outside.write_text("[Service]\nExecStart=/bin/evil\n")
    d = tmp_path / "app" / "web.service.d"
    d.mkdir(parents=True)
    (tmp_path / "app" / "web.service").write_text("[Service]\nExecStart=/usr/bin/web\n")
    (d / "10-masked.conf").symlink_to(os.devnull)
    r = corral("import", "web.service", cwd=tmp_path / "app")
    assert (r.returncode, r.stderr) == (0, (
        "corral import: web.service: [Service]: (drop-in): web.service.d/10-masked.conf: a "
        "link to /dev/null: masked, not read (as systemd masks it)\n"))
    assert 'command = "/usr/bin/web"' in r.stdout.splitlines()
    (d / "20-out.conf").symlink_to(outside)
    r = corral("import", "web.service", cwd=tmp_path / "app")
    assert (r.returncode, r.stdout, r.stderr) == (1, "", (
        f"corral: web.service: its drop-in: web.service.d/20-out.conf: a link to {outside}, "
        "outside its directory: not read (move or copy the file there)\n"))


def test_output_is_never_written_through_a_link(tmp_path: Path) -> None:
    """A dangling link would have had the file made wherever it points (as root, often);
    a link is refused, and --force replaces the link itself, never what it names."""
    (tmp_path / "Procfile").write_text("web: sleep 9\n")
    aimed = tmp_path / "elsewhere" / "cron.d-job"
    aimed.parent.mkdir()
    out = tmp_path / "corral.toml"
    out.symlink_to(aimed)
    r = corral("import", "Procfile", "-o", "corral.toml", cwd=tmp_path)
    assert (r.returncode, r.stderr) == (1, (
        "corral: corral.toml: a link: not written through (--force replaces the link itself "
        "with the file)\n"))
    assert out.is_symlink() and not aimed.exists()
    r = corral("import", "Procfile", "-o", "corral.toml", "--force", cwd=tmp_path)
    assert (r.returncode, r.stderr) == (0, "corral.toml: 1 agent written\n")
    assert not out.is_symlink() and not aimed.exists()
    assert (out.stat().st_mode & 0o777) == 0o600  # its env may hold secrets
    assert tomllib.loads(out.read_text())["agents"]["web"]["command"][0] == "sh"
    r = corral("import", "Procfile", "-o", "/dev/null", "--force", cwd=tmp_path)
    assert (r.returncode, r.stderr) == (1, "corral: /dev/null: not a regular file: not "
                                           "written\n")


def test_supervisords_user_is_every_programs_that_names_none(tmp_path: Path) -> None:
    (tmp_path / "s.conf").write_text(
        "[supervisord]\nuser=appuser\n[program:a]\ncommand=sleep 9\nstartsecs=0\n"
        "[program:b]\ncommand=sleep 9\nstartsecs=0\nuser=other\n")
    r = corral("import", "s.conf", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    agents = tomllib.loads(r.stdout)["agents"]
    assert (agents["a"]["user"], agents["b"]["user"]) == ("appuser", "other")
    assert r.stderr == ('corral import: s.conf: [supervisord]: user: appuser: user = '
                        '"appuser" on each program that names no user of its own '
                        "(supervisord ran as it, and them)\n")


@pytest.mark.parametrize("name,text,said", [
    ("s.conf", "[program:w]\ncommand=sleep 9\nuser=%USER%\n",
     "[program:w]: user: '%USER%' cannot be resolved ('%USER%' is badly formatted: "
     "unsupported format character 'U' (0x55) at index 1): refused: without its user the "
     "program would run as root"),
    ("w@.service", "[Service]\nExecStart=/usr/bin/w\nUser=%i\n",
     "[Service]: User: '%i' is nothing where corral import runs (a template's instance or "
     "a host's specifier is not known to it): refused: without its user the program would "
     "run as root (give the instance: --instance NAME, as `systemctl enable w@NAME` "
     "does)"),
    ("w.service", "[Service]\nExecStart=/usr/bin/w\nUser=%u\n",
     "[Service]: User: '%u' is '%u' where corral import runs (a template's instance or a "
     "host's specifier is not known to it): refused: without its user the program would "
     "run as root"),
    ("eco.json", '{"apps": [{"name": "a", "script": "a.sh", "uid": ""}]}',
     'apps[0] (a): uid: "" is not a user\'s name or number: refused: without its user '
     "the program would run as root"),
])
def test_a_user_that_cannot_be_resolved_refuses_the_import(tmp_path: Path, name: str,
                                                           text: str, said: str) -> None:
    (tmp_path / name).write_text(text)
    r = corral("import", name, cwd=tmp_path)
    assert (r.returncode, r.stdout, r.stderr) == (1, "", f"corral: {name}: {said}\n")


def test_any_text_gives_toml_corral_loads(tmp_path: Path) -> None:
    """An emoji (past the BMP: JSON's surrogate pairs are no TOML), an accent, a control
    character and DEL, in a command, an env value and an env name."""
    args = ["deploy 🚀", "café", "bell\x07", "del\x7f", 'q"b\\']
    (tmp_path / "eco.json").write_text(json.dumps({"apps": [{
        "name": "a", "script": "/bin/echo", "args": args,
        "env": {"GREETING": "héllo 👋", "ÉTAT": "1"}}]}))
    r = corral("import", "eco.json", cwd=tmp_path)
    assert (r.returncode, r.stderr) == (0, "")
    assert r.stdout.isascii()
    agent = tomllib.loads(r.stdout)["agents"]["a"]
    assert agent["command"] == ["/bin/echo", *args]
    assert agent["env"] == {"GREETING": "héllo 👋", "ÉTAT": "1"}
    (tmp_path / "corral.toml").write_text(r.stdout)
    checked = corral("check-config", "--no-check", "corral.toml", cwd=tmp_path)
    assert checked.returncode == 0, checked.stderr

