"""A package's directory as an adversary would leave it (issue 34, findings 3-6, 13, 16;
decision 156): whoever may write it is less trusted than the daemon, which reads it as
root, and `watch` redeploys on their change without the operator.

Each test runs a real daemon (under a 2 GiB address-space cap, so that a regression reads
into a MemoryError rather than the host's memory) and deploys through the CLI; the
daemon's peak RSS is its kernel's VmHWM.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pwd
import secrets
import shlex
import shutil
import socket
import subprocess
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from corral.daemon.packages import checked
from corral.supervisor.sandbox import host_refusal

from .conftest import NOBODY_PY, ROOT, nobody_reason
from .daemon_harness import PY, Daemon, corral_popen, shared_tmpdir
from .test_daemon_cli import wait_until
from .test_packages import packages_toml
from .test_packages import uv_cache as uv_cache  # the fixture

CAP = ["prlimit", f"--as={2 << 30}", "--"]  # a regression fails, not the host
MIB = 1 << 20
PEAK_RISE = 48 * MIB  # what a refused deploy may add to the daemon's peak RSS

AGENT = """\
from corral.worker import run

run(lambda task, ctx: {{"version": {version!r}}})
"""


REGULAR_ONLY = ("a symbolic link, not a regular file (corral reads a package's manifest, "
                "pyproject.toml and lock file from regular files only)")


def bare(where: Path, version: str = "1.0", manifest: str = "",
         name: str = "greeter") -> Path:
    """A package without dependencies (its build makes a venv, nothing is downloaded)."""
    where.mkdir(parents=True, exist_ok=True)
    (where / "corral.toml").write_text(textwrap.dedent(f"""\
        [agent]
        name = "{name}"
        version = "{version}"
        command = ["python", "agent.py"]
        start_timeout = 30.0
        """) + textwrap.dedent(manifest))
    (where / "agent.py").write_text(AGENT.format(version=version))
    return where


@contextlib.contextmanager
def capped(directory: Path, cache: Path, agents: str = "", packages: str = ""
           ) -> Iterator[Daemon]:
    directory.mkdir(exist_ok=True)
    d = Daemon(directory, agents + packages_toml(cache, packages), wrapper=CAP)
    try:
        d.start()
        yield d
        assert d.stop() == 0
    finally:
        d.close()


def peak(d: Daemon) -> int:
    """The daemon's peak resident memory so far (bytes)."""
    assert d.proc is not None
    for line in Path(f"/proc/{d.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def refused(d: Daemon, pkg: Path, why: str, timeout: float = 30) -> str:
    """Deploy `pkg`: refused with `why` (after "deploy of greeter: "), nothing built.
    The whole of what the CLI said."""
    r = d.cli("deploy", str(pkg), timeout=timeout)
    assert (r.returncode, r.stderr) == (
        1, f"corral: deploy of greeter: {why}; nothing changed\n"), r.stderr
    assert not (d.state / "packages" / "greeter").exists()
    return r.stdout + r.stderr


def ran(d: Daemon) -> object:
    r = d.cli("run", "greeter", "--input", "null")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def log_of(d: Daemon) -> str:
    return (d.state / "logs" / "corral.log").read_text(errors="replace")


# -- 3: a link to a device --------------------------------------------------------------
@pytest.mark.deadline(120)
def test_a_link_to_dev_zero_is_refused_before_a_byte_is_read(tmp_path: Path,
                                                             uv_cache: Path) -> None:
    """Deployed by hand and redeployed by `watch` when the package's writer adds the link:
    refused both times, naming the link, with the daemon's peak memory where it was."""
    pkg = bare(tmp_path / "pkg", manifest='watch = ["*"]\n')
    with capped(tmp_path / "d", uv_cache) as d:
        r = d.cli("deploy", str(pkg), timeout=90)
        assert r.returncode == 0, r.stderr
        pid = d.status()["greeter#0"]["pid"]
        wait_until(lambda: "greeter: watching *" in log_of(d))
        before = peak(d)
        (pkg / "zero").symlink_to("/dev/zero")
        why = (f"source: {pkg}/zero: a link to '/dev/zero', outside the package: not "
               "followed (copy the file in, or exclude the link)")
        wait_until(lambda: f"greeter: after the change of zero: deploy of greeter: {why}; "
                           "nothing changed" in log_of(d), timeout=60)
        r = d.cli("deploy", str(pkg), timeout=30)
        assert (r.returncode, r.stderr) == (
            1, f"corral: deploy of greeter: {why}; nothing changed\n")
        assert peak(d) - before < PEAK_RISE, (peak(d) - before) / MIB
        # the release that ran goes on running
        assert d.status()["greeter#0"]["pid"] == pid
        assert ran(d) == {"version": "1.0"}


# -- 4: links out of the package, a lock that is one ------------------------------------
@pytest.mark.deadline(120)
def test_a_link_out_of_the_package_is_refused_and_one_inside_is_kept_a_link(
        tmp_path: Path, uv_cache: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("root's own\n")
    secret.chmod(0o600)
    with capped(tmp_path / "d", uv_cache) as d:
        for n, (target, shown) in enumerate([
                ("/etc/shadow", "'/etc/shadow'"),
                (str(d.state / "corral.db"), repr(str(d.state / "corral.db"))),
                (str(secret), repr(str(secret))),
                ("../../secret", "'../../secret'")]):
            pkg = bare(tmp_path / f"p{n}")
            (pkg / "data").mkdir()
            (pkg / "data" / "key").symlink_to(target)
            refused(d, pkg, f"source: {pkg}/data/key: a link to {shown}, outside the "
                            "package: not followed (copy the file in, or exclude the "
                            "link)")
        # inside, but to what is not copied (left out by exclude, a directory)
        pkg = bare(tmp_path / "inside", manifest='exclude = ["notes.md"]\n')
        (pkg / "notes.md").write_text("x")
        (pkg / "alias").symlink_to("notes.md")
        refused(d, pkg, f"source: {pkg}/alias: a link to 'notes.md', which is not a file "
                        "of the package's source: not followed (copy the file in, or "
                        "exclude the link)")
        (pkg / "alias").unlink()
        (pkg / "sub").mkdir()
        (pkg / "alias").symlink_to("sub")
        refused(d, pkg, f"source: {pkg}/alias: a link to 'sub', which is not a file of the "
                        "package's source: not followed (copy the file in, or exclude the "
                        "link)")
        # a hard link to a file of another user (not the package's directory's owner)
        (pkg / "alias").unlink()
        theirs = tmp_path / "theirs"
        theirs.write_text("nobody's\n")
        os.chown(theirs, 65534, 65534)
        theirs.chmod(0o600)
        os.link(theirs, pkg / "hard")
        refused(d, pkg, f"source: {pkg}/hard: a hard link to a file of uid 65534 (the "
                        "package's directory is uid 0's): not copied")
        (pkg / "hard").unlink()
        # a relative link to a file of the source is the same link in the release
        (pkg / "data").mkdir()
        (pkg / "data" / "real.txt").write_text("real\n")
        (pkg / "alias").symlink_to("data/real.txt")
        r = d.cli("deploy", str(pkg), timeout=90)
        assert r.returncode == 0, r.stderr
        [release] = (d.state / "packages" / "greeter").iterdir()
        src = release / "src"
        assert os.readlink(src / "alias") == "data/real.txt"
        assert (src / "alias").read_text() == "real\n"
        assert not (src / "data" / "real.txt").is_symlink()
        assert ran(d) == {"version": "1.0"}
    # nothing of the secrets was copied anywhere
    assert "root's own" not in log_of(d)


@pytest.mark.deadline(120)
def test_a_lock_or_manifest_linked_to_a_secret_is_never_read_nor_quoted(
        tmp_path: Path, uv_cache: Path) -> None:
    """uv used to read the followed copy and quote its lines in the error (and so the
    daemon's log); a manifest is read by corral itself."""
    mark = f"SECRET-{secrets.token_hex(8)}"
    secret = tmp_path / "root-only"
    secret.write_text(f"{mark}==1.0\n--index-url http://{mark}.invalid/\n")
    secret.chmod(0o600)
    said = []
    with capped(tmp_path / "d", uv_cache) as d:
        pkg = bare(tmp_path / "p1")
        (pkg / "requirements.txt").symlink_to(secret)
        said.append(d.cli("deploy", str(pkg), timeout=60))
        assert (said[-1].returncode, said[-1].stderr) == (
            1, f"corral: {pkg}/requirements.txt: {REGULAR_ONLY}\n")
        pkg = bare(tmp_path / "p2", manifest='lock = "reqs/lock.txt"\n')
        (pkg / "reqs").mkdir()
        (pkg / "reqs" / "lock.txt").symlink_to(secret)
        said.append(d.cli("deploy", str(pkg), timeout=60))
        assert said[-1].returncode == 1
        assert said[-1].stderr.endswith(
            f"agent.lock: reqs/lock.txt: a symbolic link, not a regular file "
            f"({pkg}/reqs/lock.txt)\n"), said[-1].stderr
        # a regular requirements file that includes the secret by its path (uv reads
        # it as root, and quotes the names it finds)
        pkg = bare(tmp_path / "p4")
        (pkg / "requirements.txt").write_text(f"six==1.16.0\n-r {secret}\n")
        said.append(d.cli("deploy", str(pkg), timeout=60))
        assert (said[-1].returncode, said[-1].stderr.splitlines()[-1]) == (
            1, f"corral: deploy of greeter: {pkg}/requirements.txt: line 2: -r names a file "
               "outside the package; nothing changed"), said[-1].stderr
        pkg = tmp_path / "p3"
        pkg.mkdir()
        (pkg / "corral.toml").symlink_to(secret)
        said.append(d.cli("deploy", str(pkg), timeout=60))
        assert said[-1].returncode == 1
        assert said[-1].stderr == f"corral: {pkg}/corral.toml: {REGULAR_ONLY}\n"
        assert not any((d.state / "packages" / "greeter").glob("*/READY"))
        log = log_of(d)
    for r in said:
        assert mark not in r.stdout + r.stderr
    assert mark not in log


# -- 5: the size, before the read -------------------------------------------------------
@pytest.mark.deadline(120)
def test_a_sparse_gigabyte_is_refused_by_its_size_before_it_is_read(
        tmp_path: Path, uv_cache: Path) -> None:
    pkg = bare(tmp_path / "pkg")
    with open(pkg / "big.bin", "wb") as f:
        f.truncate(1 << 30)  # a hole: no disk, and 1 GiB of zeros to whoever reads it
    with capped(tmp_path / "d", uv_cache) as d:
        before = peak(d)
        r = d.cli("deploy", str(pkg), timeout=60)
        assert peak(d) - before < PEAK_RISE, (peak(d) - before) / MIB
        assert (r.returncode, r.stderr) == (
            1, f"corral: deploy of greeter: source: more than 256 MB under {pkg}: big.bin "
               "(1024 MB) takes it past [packages] max_source_mb; leave out what is not the "
               "package with exclude = [...]; nothing changed\n")
        assert not (d.state / "packages" / "greeter").exists()


def test_a_file_within_the_bound_is_read_in_chunks(tmp_path: Path) -> None:
    """The hash of a 512 MB source costs a process a chunk of memory, not the file."""
    pkg = bare(tmp_path / "pkg")
    with open(pkg / "big.bin", "wb") as f:
        f.truncate(512 * MIB)
    probe = textwrap.dedent(f"""
        import resource
        from corral.daemon.packages.build import scan_source
        from corral.daemon.packages.manifest import read_manifest
        m = read_manifest({str(pkg)!r})
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        files, size, _ = scan_source(m, 1 << 30)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(size, (after - before) * 1024)
        """)
    r = subprocess.run([PY, "-c", probe], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr
    size, rise = map(int, r.stdout.split())
    assert size > 512 * MIB
    assert rise < 16 * MIB, rise / MIB


# -- 6: what never ends when read, and a shutdown during a deploy -----------------------
@pytest.mark.deadline(120)
def test_a_fifo_is_refused_at_once_and_the_daemon_shuts_down(tmp_path: Path,
                                                             uv_cache: Path) -> None:
    pkg = bare(tmp_path / "pkg")
    os.mkfifo(pkg / "pipe")
    with capped(tmp_path / "d", uv_cache) as d:
        # the daemon's own answer, in the CLI's time: the FIFO was never opened
        refused(d, pkg, f"source: {pkg}/pipe: a FIFO: a package holds regular files, "
                        "directories and links (leave it out with exclude = [...])",
                timeout=20)
        # left out, it is never opened either (a writer would block on it)
        (pkg / "corral.toml").write_text((pkg / "corral.toml").read_text()
                                         + 'exclude = ["pipe"]\n')
        r = d.cli("deploy", str(pkg), timeout=90)
        assert r.returncode == 0, r.stderr
        started = time.monotonic()
        r = d.cli("shutdown", timeout=30)
        assert r.returncode == 0, r.stderr
        assert d.proc is not None and d.proc.wait(20) == 0
        assert time.monotonic() - started < 20


@pytest.mark.deadline(150)
def test_a_shutdown_during_a_build_that_hangs_ends_it_and_leaves_nothing(
        tmp_path: Path, uv_cache: Path) -> None:
    """uv asks an index that accepts and never answers: the deploy hangs in its build,
    and `corral shutdown` ends it (its processes killed, its directory removed) and
    the daemon exits."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)  # never accepted: connections wait in the backlog, unanswered
    port = silent.getsockname()[1]
    pkg = bare(tmp_path / "pkg")
    (pkg / "requirements.txt").write_text(
        f"--index-url http://127.0.0.1:{port}/simple\nsix==1.16.0\n")
    try:
        with capped(tmp_path / "d", uv_cache) as d:
            deploying = corral_popen(
                ["--socket", str(d.sock), "deploy", str(pkg)],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                env={**os.environ, "PYTHONPATH": str(ROOT)})
            try:
                wait_until(lambda: "installing requirements.txt with uv" in log_of(d),
                           timeout=60)
                assert deploying.poll() is None
                started = time.monotonic()
                r = d.cli("shutdown", timeout=30)
                assert r.returncode == 0, r.stderr
                assert d.proc is not None and d.proc.wait(30) == 0
                assert time.monotonic() - started < 30
                _, err = deploying.communicate(timeout=20)
                assert deploying.returncode != 0, err
            finally:
                if deploying.poll() is None:
                    deploying.kill()
                    deploying.wait()
            assert list((d.state / "packages" / "greeter").iterdir()) == []
    finally:
        silent.close()


async def test_a_read_of_the_package_never_holds_up_its_canceller() -> None:
    """A read that a hung file system never answers: the deploy awaiting it is cancelled
    within the read's grace, the read is told to stop, and its thread is no thread the
    daemon's exit joins."""
    entered, release = threading.Event(), threading.Event()
    told: list[bool] = []

    def hangs(stop: threading.Event) -> None:
        entered.set()
        release.wait(30)
        told.append(stop.is_set())

    reading = asyncio.ensure_future(checked.in_thread(hangs))
    await asyncio.to_thread(entered.wait, 10)
    [thread] = [t for t in threading.enumerate() if t.name == "corral-package-read"]
    assert thread.daemon
    reading.cancel()
    began = time.monotonic()
    with pytest.raises(asyncio.CancelledError):
        await reading
    # the read's grace to see its stop, and no more
    assert checked.GRACE <= time.monotonic() - began < checked.GRACE + 1
    release.set()
    await asyncio.to_thread(thread.join, 10)
    assert told == [True]


# -- 13: a tenant's user in bwrap, [packages] dir at its default ------------------------
@pytest.mark.deadline(120)
def test_a_tenants_sandboxed_agent_starts_with_the_default_packages_dir() -> None:
    reason = nobody_reason() or host_refusal("bwrap", "nobody")
    if reason:
        pytest.skip(reason)
    tmp = shared_tmpdir()
    try:
        box, sdk = tmp / "box", tmp / "sdk"
        box.mkdir(mode=0o755)
        (sdk / "corral").mkdir(parents=True)
        for f in [ROOT / "corral" / "__init__.py",
                  *sorted((ROOT / "corral" / "worker").glob("*.py"))]:
            dest = sdk / f.relative_to(ROOT)
            dest.parent.mkdir(exist_ok=True)
            dest.write_bytes(f.read_bytes())
        subprocess.run(["chmod", "-R", "a+rX", str(sdk)], check=True)
        (box / "hello.py").write_text((ROOT / "examples" / "hello.py").read_text())
        # the documented setup (docs/tenants.md, docs/sandbox.md), no [packages] table
        d = Daemon(tmp, textwrap.dedent(f"""
            [tenants.acme]
            user = "nobody"
            sandbox = "bwrap"
            [agents.h]
            command = ["{NOBODY_PY}", "{box}/hello.py"]
            env = {{ PYTHONPATH = "{sdk}" }}
            cwd = "{box}"
            tenant = "acme"
            max_restarts = 0
            """))
        try:
            d.start()
            wait_until(lambda: d.status()["h#0"]["state"] in ("ready", "failed"),
                       timeout=30)
            assert d.status()["h#0"]["state"] == "ready", d.status()["h#0"]
            r = d.cli("run", "h", "--input", '{"name": "acme"}')
            assert r.returncode == 0, r.stderr
            assert '"hello, acme"' in r.stdout
            # in bubblewrap, as nobody
            agent = psutil.Process(d.status()["h#0"]["pid"])
            inside = [agent, *agent.children(recursive=True)]
            assert "bwrap" in {p.name() for p in [*inside, agent.parent()]}
            [python] = [p for p in inside if p.name().startswith("python")]
            assert python.uids().real == pwd.getpwnam("nobody").pw_uid
            # the state directory stays root's, 0700
            assert oct(os.stat(d.state).st_mode & 0o777) == "0o700"
            # a package of the tenant cannot run from under it: refused before a build,
            # naming why and what to set
            pkg = bare(tmp / "pkg", manifest='tenant = "acme"\n')
            r = d.cli("deploy", str(pkg), timeout=60)
            assert (r.returncode, r.stderr) == (
                1, f"corral: deploy of greeter: it runs as user nobody, who cannot pass "
                   f"through {d.state} to its release in {d.state / 'packages'}: set "
                   "[packages] dir to a directory every agent's user may pass through "
                   "(docs/packages.md); nothing changed\n")
            assert not (d.state / "packages" / "greeter").exists()
            assert d.stop() == 0
        finally:
            d.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# -- 16: a deploy never takes a tenant's agent -------------------------------------------
@pytest.mark.deadline(150)
def test_a_deploy_never_takes_over_a_tenants_agent(tmp_path: Path, uv_cache: Path) -> None:
    with capped(tmp_path / "d", uv_cache, "\n[tenants.acme]\nmax_agents = 5\n") as d:
        r = d.cli("add", "--name", "greeter", "--tenant", "acme", "--command",
                  shlex.join([PY, f"{ROOT}/examples/hello.py"]), "--env", f"PYTHONPATH={ROOT}")
        assert r.returncode == 0, r.stderr
        wait_until(lambda: d.status()["greeter#0"]["state"] == "ready", timeout=30)
        pid = d.status()["greeter#0"]["pid"]
        pkg = bare(tmp_path / "pkg")
        r = d.cli("deploy", str(pkg), timeout=60)
        assert (r.returncode, r.stderr) == (
            1, "corral: agent greeter is tenant acme's: a deploy of a package for tenant "
               "default would take it over; deploy the package under another name "
               "(--name), or name its tenant in the manifest (tenant = \"acme\"); nothing "
               "changed\n")
        assert not (d.state / "packages" / "greeter").exists()
        spec = d.json("describe", "greeter")["spec"]
        assert (spec["tenant"], spec.get("release")) == ("acme", None)
        assert d.status()["greeter#0"]["pid"] == pid
        # the operator names the owner: the agent becomes the package, still acme's
        (pkg / "corral.toml").write_text((pkg / "corral.toml").read_text()
                                         + 'tenant = "acme"\n')
        r = d.cli("deploy", str(pkg), timeout=90)
        assert r.returncode == 0, r.stderr
        spec = d.json("describe", "greeter")["spec"]
        assert spec["tenant"] == "acme" and spec["release"].startswith(
            str(d.state / "packages" / "greeter"))
        assert ran(d) == {"version": "1.0"}


def test_the_checked_reader_refuses_what_is_not_a_regular_file(tmp_path: Path) -> None:
    """The reader itself: a path through a link, a link, a FIFO, a device, a file grown
    or shrunk while it is read."""
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "f").write_bytes(b"x" * 10)
    (tmp_path / "via").symlink_to("dir")
    (tmp_path / "link").symlink_to("dir/f")
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "null").symlink_to("/dev/null")
    root = checked.open_root(str(tmp_path))
    try:
        assert checked.read_small(root, "dir/f", 100) == b"x" * 10
        cases = {
            "via/f": "via/f: via is not a directory of the package (a symbolic link or "
                     "not a directory: not followed)",
            "link": "link: a symbolic link, not a regular file",
            "fifo": "fifo: a FIFO, not a regular file",
            "null": "null: a symbolic link, not a regular file",
            "../x": "../x: not a path inside the package",
            "dir/f/..": "dir/f/..: not a path inside the package",
        }
        for rel, why in cases.items():
            with pytest.raises(checked.PathRefusal) as err:
                checked.read_small(root, rel, 100)
            assert str(err.value) == why
        with pytest.raises(checked.PathRefusal) as err:
            checked.read_small(root, "dir/f", 5)
        assert str(err.value) == "dir/f: 10 bytes, more than the 5 corral reads of such a file"
        fd, st = checked.open_file(root, "dir/f")
        try:
            with open(tmp_path / "dir" / "f", "ab") as f:
                f.write(b"more")
            with pytest.raises(checked.PathRefusal) as err:
                b"".join(checked.chunks(fd, st.st_size, "dir/f"))
            assert str(err.value) == "dir/f: changed while it was read (longer than 10 bytes)"
        finally:
            os.close(fd)
    finally:
        os.close(root)


@pytest.mark.parametrize(("text", "why"), [
    ("-r /etc/shadow\n", "line 1: -r names a file outside the package"),
    ("six\n--requirement=../../x.txt\n",
     "line 2: --requirement names a file outside the package"),
    ("-c ~/x\n", "line 1: -c names a file outside the package"),
    ("-r ${HOME}/x\n", "line 1: -r names a file outside the package"),
    ("-e /srv/other\n", "line 1: -e names a directory outside the package"),
    ("--find-links /root\n", "line 1: --find-links is not an http(s) URL (a local index is "
                              "read as the daemon's user)"),
    ("-i file:///root/index\n", "line 1: -i is not an http(s) URL (a local index is read as "
                                 "the daemon's user)"),
    ("six @ file:///root/six.whl\n", "line 1: a file: URL (read as the daemon's user)"),
    ("/root/six-1.16.0-py3-none-any.whl\n", "line 1: a path outside the package"),
    ("./libs/../../x\n", "line 1: a path outside the package"),
    ("six==1.16.0 \\\n    --config-settings=x=y\n",
     "line 1: option --config-settings is not one corral passes to uv"),
    ("--pip-args=x\n", "line 1: option --pip-args is not one corral passes to uv"),
    ("-r base.txt\n", "line 1: -r names a file outside the package"),  # base.txt: below
])
def test_a_requirements_file_may_make_uv_read_only_the_package(
        tmp_path: Path, text: str, why: str) -> None:
    from corral.daemon.packages.requirements import check_file

    (tmp_path / "reqs").mkdir()
    (tmp_path / "reqs" / "r.txt").write_text(text.replace("base.txt", "base-link.txt"))
    (tmp_path / "reqs" / "base-link.txt").symlink_to("/etc/passwd")
    root = checked.open_root(str(tmp_path))
    try:
        with pytest.raises(checked.PathRefusal) as err:
            check_file(root, "reqs/r.txt")
        if "base" in text:
            assert str(err.value) == (f"reqs/base-link.txt: {REGULAR_ONLY.split(' (')[0]}")
        else:
            assert str(err.value) == f"reqs/r.txt: {why}"
        # what uv export makes of a uv.lock is held to the same
        if "base" not in text:
            with pytest.raises(checked.PathRefusal):
                check_file(root, "reqs/r.txt", text)
    finally:
        os.close(root)


def test_a_requirements_file_of_the_package_itself_passes(tmp_path: Path) -> None:
    from corral.daemon.packages.requirements import check_file

    (tmp_path / "reqs").mkdir()
    (tmp_path / "libs" / "mine").mkdir(parents=True)
    (tmp_path / "base.txt").write_text("six==1.16.0 --hash=sha256:" + "0" * 64 + "\n")
    (tmp_path / "reqs" / "prod.txt").write_text(textwrap.dedent("""\
        # pinned
        --index-url https://pypi.org/simple
        --extra-index-url https://${TOKEN}@example.com/simple
        --only-binary :all:
        -r ../base.txt
        -c ../base.txt
        -e ./libs/mine
        humanize==4.14.0 ; python_version >= "3.11" \\
            --hash=sha256:1111
        mine @ git+https://example.com/mine.git
        """))
    root = checked.open_root(str(tmp_path))
    try:
        check_file(root, "reqs/prod.txt")
    finally:
        os.close(root)
