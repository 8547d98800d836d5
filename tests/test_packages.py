"""Agent packages (issue 25, docs/packages.md): real uv builds with a real dependency from
PyPI (six, pinned: 1.16.0 in v1, 1.17.0 in v2), a real daemon, real switches under load.

uv's cache is one directory for the module's tests (as a host's builds share one), so six
is downloaded once.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import stat
import subprocess
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from corral import jsonrpc
from corral.daemon.caller import Caller
from corral.daemon.packages.build import BuildError, release_name, scan_source
from corral.daemon.packages.manifest import read_manifest
from corral.daemon.packages.releases import remove_tree
from corral.jsonrpc import RpcError
from corral.supervisor.config import ConfigError
from corral.supervisor.lifecycle import State

from .conftest import EXAMPLES, PY, ROOT, nobody_reason
from .daemon_harness import Daemon, corral_popen, corral_run, hello, in_process, shared_tmpdir
from .test_daemon_cli import wait_until
from .test_gateway_stdio import wait_until_async
from .test_store import unshare_reason

SIX_1, SIX_2 = "six==1.16.0", "six==1.17.0"

AGENT = """\
import os, sys, time
import six
import corral.worker
from corral.worker import run
{extra}
VERSION = {version!r}


def handle(task, ctx):
    task = task or {{}}
    if task.get("sleep"):
        time.sleep(task["sleep"])
    if task.get("write"):
        out = {{}}
        for path in task["write"]:
            try:
                with open(path, "a"):
                    pass
                out[path] = "written"
            except OSError as exc:
                out[path] = type(exc).__name__
        return out
    return {{"version": VERSION, "six": six.__version__, "python": sys.executable,
            "sdk": corral.worker.__file__, "pid": os.getpid(), "cwd": os.getcwd()}}


run(handle)
"""


def package(where: Path, version: str, *, deps: str = SIX_1, manifest: str = "",
            extra: str = "", name: str = "greeter") -> Path:
    """A package directory: corral.toml, agent.py, requirements.txt."""
    where.mkdir(parents=True, exist_ok=True)
    (where / "corral.toml").write_text(textwrap.dedent(f"""\
        [agent]
        name = "{name}"
        version = "{version}"
        command = ["python", "agent.py"]
        start_timeout = 30.0
        backoff_initial = 0.05
        """) + textwrap.dedent(manifest))
    (where / "agent.py").write_text(AGENT.format(version=version, extra=extra))
    (where / "requirements.txt").write_text(deps + "\n")
    return where


@pytest.fixture(scope="module")
def uv_cache() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="corral-uv-cache-"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def packages_toml(cache: Path, extra: str = "") -> str:
    return f'\n[packages]\ncache_dir = "{cache}"\nmin_free_mb = 0\n{extra}\n'


SOCKET = Caller(via="socket")


async def deploy(d: Any, path: Path, name: str | None = None) -> Any:
    return await d.dispatcher.call(SOCKET, "packages.deploy",
                                   {"path": str(path), "name": name})


async def ask(d: Any, agent: str = "greeter", task: Any = None) -> dict[str, Any]:
    result = await d.sup.tasks.run(agent, task)
    assert result.status == "succeeded", result
    out: dict[str, Any] = result.output
    return out


# -- the manifest ----------------------------------------------------------------------
def test_a_manifest_in_corral_toml_or_pyproject(tmp_path: Path) -> None:
    m = read_manifest(package(tmp_path / "a", "1.0"))
    assert (m.name, m.version, m.python, m.lock_kind) == ("greeter", "1.0", None,
                                                          "requirements")
    assert m.table == {"command": ["python", "agent.py"], "start_timeout": 30.0,
                       "backoff_initial": 0.05}
    b = tmp_path / "b"
    b.mkdir()
    (b / "pyproject.toml").write_text(textwrap.dedent("""\
        [project]
        name = "researcher"
        version = "0.3.0"
        dependencies = ["six==1.16.0"]

        [tool.corral.agent]
        command = ["python", "-m", "researcher"]
        python = "3.11"
        replicas = 2
        [tool.corral.agent.limits]
        memory_mb = 512
        """))
    (b / "uv.lock").write_text("version = 1\n")
    m = read_manifest(b, name="other")
    assert (m.name, m.version, m.python, m.lock_kind) == ("other", "0.3.0", "3.11", "uv.lock")
    assert m.table["limits"] == {"memory_mb": 512}


@pytest.mark.parametrize(("toml", "files", "error"), [
    ("", {}, "no package manifest: an [agent] table in corral.toml or "
             "[tool.corral.agent] in pyproject.toml"),
    ('[agent]\ncommand = "python agent.py"\n', {},
     "corral.toml: agent.name: missing (or give the agent's name with --name)"),
    ('[agent]\nname = "x"\ncommand = "python agent.py"\nrelease = "/tmp"\n', {},
     "corral.toml: agent.release: set by corral deploy, not by the manifest"),
    ('[agent]\nname = "x"\ncommand = "python agent.py"\nreplica = 2\n', {},
     "corral.toml: agent: Object contains unknown field `replica`"),
    ('[agent]\nname = "x"\ncommand = "python agent.py"\ncwd = "/etc"\n', {},
     "corral.toml: agent.cwd: must be a directory inside the package (a relative path)"),
    ('[agent]\nname = "x y"\ncommand = "python agent.py"\n', {}, "agents.'x y'"),
    ('[agent]\nname = "x"\ncommand = "python agent.py"\nmin_healthy_time = 90\n', {},
     "corral.toml: agent.min_healthy_time: 90 s is not less than healthy_deadline (60 s)"),
    ('[agent]\nname = "x"\ncommand = "python agent.py"\nlock = "nope.txt"\n', {},
     "corral.toml: agent.lock: nope.txt: no such file"),
    ('[agent]\nname = "x"\ncommand = "python agent.py"\n', {"uv.lock": ""},
     "uv.lock needs the pyproject.toml it locks beside it"),
    ("", {"pyproject.toml": '[project]\nname = "x"\ndependencies = ["six"]\n'
                            '[tool.corral.agent]\ncommand = "python a.py"\n'},
     "pyproject.toml: tool.corral.agent.lock: "),
])
def test_a_wrong_manifest_is_refused_naming_the_key(tmp_path: Path, toml: str,
                                                    files: dict[str, str], error: str) -> None:
    if toml:
        (tmp_path / "corral.toml").write_text(toml)
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(ConfigError) as err:
        read_manifest(tmp_path)
    assert error in str(err.value)


def test_check_config_validates_a_package(tmp_path: Path) -> None:
    ok = package(tmp_path / "ok", "1.0")
    r = corral_run(["check-config", str(ok)], timeout=30,
                   env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert (r.returncode, r.stdout.strip()) == (
        0, f"{ok / 'corral.toml'}: ok (package greeter, version 1.0, lock requirements.txt)")
    (ok / "corral.toml").write_text('[agent]\nname = "x"\ncommand = "python a.py"\n'
                                    "max_restarts = -1\n")
    r = corral_run(["check-config", str(ok / "corral.toml")], timeout=30,
                   env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 1
    assert r.stderr == (f"corral: invalid manifest: {ok / 'corral.toml'}: agent.max_restarts: "
                        "Expected `int` >= 0\n")


def test_a_release_is_named_by_what_it_is_made_of(tmp_path: Path) -> None:
    def name(**kw: str) -> str:
        _, _, source = scan_source(read_manifest(p), 1 << 30)
        return release_name(kw.get("python", "/usr/bin/python3.11"), "3.11.2", source)

    p = package(tmp_path / "p", "1.0")
    first = name()
    assert name() == first
    # what is never part of a package: caches, version control, environments
    for junk in (".git/HEAD", "__pycache__/agent.cpython-311.pyc", ".venv/pyvenv.cfg",
                 "env/pyvenv.cfg", "agent.pyc"):
        (p / junk).parent.mkdir(parents=True, exist_ok=True)
        (p / junk).write_text("x")
    assert name() == first
    assert name(python="/opt/python3.11") != first
    (p / "agent.py").chmod(0o755)
    assert name() != first  # an executable bit is part of it
    (p / "agent.py").chmod(0o644)
    (p / "notes.md").write_text("x")
    assert name() != first
    (p / "corral.toml").write_text((p / "corral.toml").read_text() + 'exclude = ["*.md"]\n')
    with_exclude = name()
    (p / "notes.md").write_text("changed")
    assert name() == with_exclude
    (p / "requirements.txt").write_text(SIX_2 + "\n")
    assert name() != with_exclude
    (p / "big").write_bytes(b"x" * (2 << 20))
    with pytest.raises(BuildError, match=r"source: more than 1 MB under .*max_source_mb"):
        scan_source(read_manifest(p), 1 << 20)


# -- deploy, switch, refuse, roll back --------------------------------------------------
@pytest.mark.deadline(150)
async def test_deploy_switch_under_load_refuse_roll_back_and_redeploy(
        tmp_path: Path, uv_cache: Path) -> None:
    v1 = package(tmp_path / "v1", "1.0", manifest="replicas = 2\nmin_healthy_time = 0.5\n")
    v2 = package(tmp_path / "v2", "2.0", deps=SIX_2,
                 manifest="replicas = 2\nmin_healthy_time = 0.5\n")
    v3 = package(tmp_path / "v3", "3.0", extra="import no_such_module_v3",
                 manifest="replicas = 2\n")
    async with in_process(tmp_path, "", packages_toml(uv_cache)) as d:
        s = d.services
        sup, builder = d.sup, s.packages.builder
        root = s.packages.releases.root

        first = await deploy(d, v1)
        assert (first.name, first.version, first.built, first.changed, first.previous,
                first.revision) == ("greeter", "1.0", True, True, None, 1)
        r1 = root / "greeter" / first.release
        out = await ask(d)
        assert (out["version"], out["six"]) == ("1.0", "1.16.0")
        # the release's venv is `python`, its source the cwd, the running corral's SDK
        # importable though the lock does not name corral
        assert out["python"] == str(r1 / "venv" / "bin" / "python")
        assert out["cwd"] == str(r1 / "src")
        assert out["sdk"].startswith(str(root / ".sdk"))
        assert len(sup.agent("greeter").replicas) == 2

        # v2 under a continuous load: no task fails or is lost, each ran once, on one
        # release, and every task accepted after the switch ran on v2
        results: list[Any] = []
        switched = asyncio.Event()
        after: list[Any] = []

        async def load() -> None:
            while not switched.is_set():
                batch = await asyncio.gather(*(sup.tasks.run("greeter", {"sleep": 0.02})
                                               for _ in range(4)))
                results.extend(batch)

        loader = asyncio.ensure_future(load())
        second = await deploy(d, v2)
        switched.set()
        await loader
        after = list(await asyncio.gather(*(sup.tasks.run("greeter", None) for _ in range(6))))
        assert (second.built, second.changed, second.previous, second.revision) == (
            True, True, first.release, 2)
        assert results, "no load ran during the switch"
        assert [t.status for t in results + after] == ["succeeded"] * len(results + after)
        assert all(len(t.attempts) == 1 for t in results + after)
        assert {t.output["version"] for t in after} == {"2.0"}
        assert {t.output["six"] for t in after} == {"1.17.0"}
        pids_v2 = {r.pid for r in sup.agent("greeter").replicas}

        # a broken v3 is refused with its reason, and v2 never stopped serving
        with pytest.raises(RpcError) as err:
            await deploy(d, v3)
        assert err.value.code == jsonrpc.REFUSED
        assert "deploy of greeter: release " in err.value.message
        assert ("was not taken: a new process of greeter did not become ready: exited with "
                "status 1: ModuleNotFoundError: No module named 'no_such_module_v3'; the "
                "running processes keep serving") in err.value.message
        assert {r.pid for r in sup.agent("greeter").replicas} == pids_v2
        assert (await ask(d))["version"] == "2.0"
        assert s.fleet.revision_of("greeter") == 2
        assert not (root / "greeter" / "ROLLOUT").exists()
        assert s.store.runtime_agents()["greeter"]["version"] == "2.0"

        # back to v1: no build
        built = builder.built
        rolled = await d.dispatcher.call(SOCKET, "agents.rollback",
                                         {"name": "greeter", "revision": 1})
        assert (rolled.restored, rolled.revision) == (1, 3)
        out = await ask(d)
        assert (out["version"], out["six"], out["python"]) == (
            "1.0", "1.16.0", str(r1 / "venv" / "bin" / "python"))
        # v2 again: kept, not built; once more: nothing at all
        again = await deploy(d, v2)
        assert (again.release, again.built, again.changed, again.revision) == (
            second.release, False, True, 4)
        same = await deploy(d, v2)
        assert (same.built, same.changed, same.revision) == (False, False, 4)
        assert builder.built == built
        assert (await ask(d))["version"] == "2.0"

        history = await d.dispatcher.call(SOCKET, "agents.history", {"name": "greeter"})
        assert [(r.revision, r.release, r.version) for r in history.revisions] == [
            (1, first.release, "1.0"), (2, second.release, "2.0"),
            (3, first.release, "1.0"), (4, second.release, "2.0")]
        assert [r.change for r in history.revisions][2] == (
            f"rollback to revision 1: release '{second.release}' -> '{first.release}', "
            "version '2.0' -> '1.0'")
        listed = await d.dispatcher.call(SOCKET, "packages.releases", {"name": "greeter"})
        assert [(r.version, r.current, r.revisions) for r in listed.releases] == [
            ("1.0", False, [1, 3]), ("2.0", True, [2, 4]), ("3.0", False, [])]
        assert listed.current == second.release

        # back to a release by the id `corral releases` prints: its newest revision
        rolled = await d.dispatcher.call(SOCKET, "agents.rollback",
                                         {"name": "greeter", "release": first.release})
        assert (rolled.restored, rolled.revision) == (3, 5)
        assert (await ask(d))["version"] == "1.0"
        assert builder.built == built
        for params, message in (
                ({"release": "nope"}, "no revision of greeter ran release nope (see `corral "
                                      "releases greeter`)"),
                ({"release": first.release, "revision": 1},
                 "name a revision or a release, not both")):
            with pytest.raises(RpcError) as err:
                await d.dispatcher.call(SOCKET, "agents.rollback", {"name": "greeter",
                                                                    **params})
            assert err.value.message == message
        assert s.fleet.revision_of("greeter") == 5


@pytest.mark.deadline(120)
async def test_releases_past_keep_releases_go_least_recently_current_first(
        tmp_path: Path, uv_cache: Path) -> None:
    keep = "keep_releases = 2\n"
    v1, v2, v3 = (package(tmp_path / f"v{n}", f"{n}.0", manifest=keep) for n in (1, 2, 3))
    async with in_process(tmp_path, "", packages_toml(uv_cache)) as d:
        first, second = await deploy(d, v1), await deploy(d, v2)
        assert (first.removed, second.removed) == ([], [])
        # v1 current again (a rollback): v2 is now the one least recently current
        await d.dispatcher.call(SOCKET, "agents.rollback", {"name": "greeter", "revision": 1})
        third = await deploy(d, v3)
        assert third.removed == [second.release]
        kept = d.services.packages.releases.of("greeter")
        assert sorted(p.name for p, _, _ in kept) == sorted([first.release, third.release])
        assert (await ask(d))["version"] == "3.0"


@pytest.mark.deadline(90)
async def test_a_release_that_does_not_stay_up_is_refused(tmp_path: Path,
                                                          uv_cache: Path) -> None:
    """Ready, then gone before min_healthy_time: not taken (without [health], staying
    Ready is the check; with it, passing readiness too: tests/test_health.py)."""
    dies = ("import threading\nthreading.Timer(0.5, lambda: os._exit(3)).start()"
            "\n")
    v1 = package(tmp_path / "v1", "1.0")
    v2 = package(tmp_path / "v2", "2.0", extra=dies, manifest="min_healthy_time = 3\n")
    async with in_process(tmp_path, "", packages_toml(uv_cache)) as d:
        await deploy(d, v1)
        pid = d.sup.agent("greeter").replicas[0].pid
        with pytest.raises(RpcError) as err:
            await deploy(d, v2)
        assert "did not become ready: exited with status 3" in err.value.message
        assert d.sup.agent("greeter").replicas[0].pid == pid
        assert (await ask(d))["version"] == "1.0"
        # a first deploy that does not come up is not added at all
        with pytest.raises(RpcError) as err:
            await deploy(d, v2, name="fresh")
        assert err.value.message.endswith("exited with status 3; the agent was not added")
        assert "fresh" not in d.sup.agents
        assert "fresh" not in d.services.store.runtime_agents()


@pytest.mark.deadline(90)
async def test_a_release_whose_health_check_fails_is_refused(tmp_path: Path,
                                                             uv_cache: Path) -> None:
    """The manifest's [agent.health]: a new release whose readiness check (the SDK's
    @health_check) fails never takes a task; the current one keeps serving."""
    sick = ("from corral.worker import health_check\n"
            "@health_check('db')\n"
            "def db():\n"
            "    raise RuntimeError('no database at db.internal')\n")
    health = ("healthy_deadline = 2.0\n[agent.health.readiness]\ncheck = \"db\"\n"
              "interval = 0.1\nfailures = 1\n")
    v1 = package(tmp_path / "v1", "1.0")
    v2 = package(tmp_path / "v2", "2.0", extra=sick, manifest=health)
    async with in_process(tmp_path, "", packages_toml(uv_cache)) as d:
        await deploy(d, v1)
        pid = d.sup.agent("greeter").replicas[0].pid
        with pytest.raises(RpcError) as err:
            await deploy(d, v2)
        assert err.value.message.endswith(
            'did not become ready: not ready within 2 s: readiness check "db" failed: '
            "RuntimeError: no database at db.internal; the running processes keep "
            "serving"), err.value.message
        assert d.sup.agent("greeter").replicas[0].pid == pid
        assert (await ask(d))["version"] == "1.0"


async def test_a_package_named_as_a_config_files_agent_is_refused_before_a_build(
        tmp_path: Path, uv_cache: Path) -> None:
    pkg = package(tmp_path / "pkg", "1.0")
    async with in_process(tmp_path, hello("greeter"), packages_toml(uv_cache)) as d:
        pid = d.sup.agent("greeter").replicas[0].pid
        with pytest.raises(RpcError) as err:
            await deploy(d, pkg)
        assert (err.value.code, err.value.message) == (
            jsonrpc.CONFLICT, "agent greeter is declared by the config file: deploy the "
                              "package under another name (--name)")
        assert d.services.packages.builder.built == 0
        assert d.services.packages.releases.of("greeter") == []
        assert d.sup.agent("greeter").replicas[0].pid == pid
        assert d.services.store.runtime_agents() == {}


@pytest.mark.deadline(120)
async def test_two_deploys_at_once_take_turns(tmp_path: Path, uv_cache: Path) -> None:
    a = package(tmp_path / "a", "1.0", name="alpha")
    b = package(tmp_path / "b", "1.0", deps=SIX_2, name="beta")
    async with in_process(tmp_path, "", packages_toml(uv_cache)) as d:
        builder = d.services.packages.builder
        first, second, same = await asyncio.gather(deploy(d, a), deploy(d, b), deploy(d, a))
        assert {first.release, same.release} == {first.release}
        # the same release asked twice at once is built once
        assert builder.built == 2
        assert sorted([first.built, same.built]) == [False, True]
        infos = [msgspec.json.decode((d.services.packages.releases.root / n / r
                                      / "release.json").read_bytes())
                 for n, r in (("alpha", first.release), ("beta", second.release))]
        spans = sorted((i["built_at"] - i["build_seconds"], i["built_at"]) for i in infos)
        # (build_seconds is rounded to the millisecond and counted on another clock than
        # built_at: the second build's start may read up to that much before the first's end)
        assert spans[0][1] <= spans[1][0] + 0.005, f"builds overlapped: {spans}"
        assert (await ask(d, "alpha"))["six"] == "1.16.0"
        assert (await ask(d, "beta"))["six"] == "1.17.0"


@pytest.mark.deadline(120)
async def test_builds_are_bounded_and_leave_nothing_when_they_fail(
        tmp_path: Path, uv_cache: Path) -> None:
    slow = slow_package(tmp_path / "slow", tmp_path / "marker")
    big = package(tmp_path / "big", "9.0")
    (big / "data.bin").write_bytes(os.urandom(2 << 20))
    huge = package(tmp_path / "huge", "9.1")
    (huge / "data.bin").write_bytes(os.urandom(4 << 20))
    v1 = package(tmp_path / "v1", "1.0")
    async with in_process(tmp_path, "", packages_toml(
            uv_cache, "build_timeout = 4\nmax_release_mb = 1\nmax_source_mb = 3\n")) as d:
        packages = d.services.packages
        await deploy(d, v1)
        pid = d.sup.agent("greeter").replicas[0].pid
        with pytest.raises(RpcError) as err:
            await deploy(d, slow)
        assert err.value.message == (
            "deploy of greeter: installing requirements.txt: the build took longer than "
            "[packages] build_timeout (4 s); nothing changed")
        backend = int((tmp_path / "marker").read_text())
        wait_until(lambda: not _alive(backend), what="the build's processes killed")
        with pytest.raises(RpcError) as err:
            await deploy(d, big)
        assert err.value.message == ("deploy of greeter: the release grew past [packages] "
                                     "max_release_mb (1 MB); nothing changed")
        with pytest.raises(RpcError) as err:
            await deploy(d, huge)
        assert err.value.message == (
            f"deploy of greeter: source: more than 3 MB under {huge}: data.bin (4 MB) takes "
            "it past [packages] max_source_mb; leave out what is not the package with "
            "exclude = [...]; nothing changed")
        # nothing left of either; the running release untouched
        assert [p.name for p, _, _ in packages.releases.of("greeter")] == [
            d.sup.agent("greeter").spec.release.rsplit("/", 1)[1]]
        assert d.sup.agent("greeter").replicas[0].pid == pid
        assert (await ask(d))["version"] == "1.0"
        assert packages.builder.failed == 2  # (a source past its bound starts no build)
        packages.settings.min_free_mb = 1 << 40
        with pytest.raises(RpcError) as err:
            await deploy(d, package(tmp_path / "v2", "2.0"))
        assert "less than [packages] min_free_mb (1099511627776): nothing was built" in (
            err.value.message)


async def test_an_interpreter_that_does_not_answer_is_bounded_by_the_probes_timeout(
        tmp_path: Path, uv_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Not build_timeout: the probe has its own bound, and says so."""
    from corral.daemon.packages import build

    monkeypatch.setattr(build, "PROBE_TIMEOUT", 1.0)
    hangs = tmp_path / "bin" / "python3"
    hangs.parent.mkdir()
    hangs.write_text(f"#!/bin/sh\necho $$ > {tmp_path}/pid\nexec sleep 60\n")
    hangs.chmod(0o755)
    pkg = package(tmp_path / "pkg", "1.0", manifest=f'python = "{hangs}"\n')
    async with in_process(tmp_path, "", packages_toml(uv_cache)) as d:
        with pytest.raises(RpcError) as err:
            await deploy(d, pkg)
        assert re.fullmatch(r"deploy of greeter: (finding Python|asking) \S+: no answer "
                            r"within 1 s; nothing changed", err.value.message
                            ), err.value.message
        wait_until(lambda: not _alive(int((tmp_path / "pid").read_text())),
                   what="the probe killed")
        assert d.services.packages.releases.of("greeter") == []


def slow_package(where: Path, marker: Path, seconds: float = 60) -> Path:
    """A package whose one dependency is a local project with a build backend that tells
    its pid (in `marker`) and then takes `seconds`."""
    package(where, "slow", deps="./slowdep")
    dep = where / "slowdep"
    dep.mkdir()
    (dep / "pyproject.toml").write_text(textwrap.dedent("""\
        [build-system]
        requires = []
        build-backend = "slowbackend"
        backend-path = ["."]

        [project]
        name = "slowdep"
        version = "0.1"
        """))
    (dep / "slowbackend.py").write_text(textwrap.dedent(f"""\
        import os, time

        def get_requires_for_build_wheel(config_settings=None):
            return []

        def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
            with open({str(marker)!r}, "w") as f:
                f.write(str(os.getpid()))
            time.sleep({seconds})
            raise RuntimeError("never built")
        """))
    return where


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


@pytest.mark.skipif(nobody_reason() is not None, reason=str(nobody_reason()))
@pytest.mark.deadline(90)
async def test_a_release_is_read_only_to_its_agent(tmp_path: Path, uv_cache: Path) -> None:
    shared = shared_tmpdir()
    try:
        v1 = package(shared / "v1", "1.0", manifest='user = "nobody"\n'
                                                    'python = "/usr/bin/python3"\n')
        async with in_process(tmp_path, "", packages_toml(
                uv_cache, f'dir = "{shared}/packages"')) as d:
            res = await deploy(d, v1)
            release = shared / "packages" / "greeter" / res.release
            out = await ask(d)
            assert out["python"] == str(release / "venv" / "bin" / "python")
            site = next((release / "venv" / "lib").glob("python3*/site-packages"))
            targets = [str(release / "src" / "agent.py"), str(release / "src" / "new.py"),
                       str(site / "six.py"), str(site / "evil.pth"), str(release / "READY")]
            assert await ask(d, task={"write": targets}) == dict.fromkeys(
                targets, "PermissionError")
            for dirpath, dirnames, filenames in os.walk(release):
                for n in dirnames + filenames:
                    mode = os.lstat(os.path.join(dirpath, n)).st_mode
                    assert stat.S_ISLNK(mode) or not mode & 0o222, os.path.join(dirpath, n)
    finally:
        remove_tree(shared)


# -- crashes ---------------------------------------------------------------------------
def _with_packages(d: Daemon, cache: Path) -> Daemon:
    d.config.write_text(d.config.read_text() + packages_toml(cache))
    return d


@pytest.mark.timeout(180)
def test_a_daemon_killed_during_a_switch_leaves_the_old_release_current(
        tmp_path: Path, uv_cache: Path) -> None:
    v1 = package(tmp_path / "v1", "1.0")
    v2 = package(tmp_path / "v2", "2.0", deps=SIX_2, manifest="min_healthy_time = 60\n"
                                                           "healthy_deadline = 120\n")
    (tmp_path / "d").mkdir()
    d = _with_packages(Daemon(tmp_path / "d", ""), uv_cache)
    try:
        d.start()
        r = d.cli("deploy", str(v1), timeout=120)
        assert r.returncode == 0, r.stderr
        # the daemon's progress, as it goes
        assert "\ncorral: starting 1 process of release " in r.stderr, r.stderr
        before = d.cli("run", "greeter", "--input", "null", "--json")
        assert msgspec.json.decode(before.stdout)["output"]["version"] == "1.0"
        marker = d.state / "packages" / "greeter" / "ROLLOUT"
        cli = corral_popen(
            ["--socket", str(d.sock), "deploy", str(v2)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)})
        try:
            # the new process is up and being watched for min_healthy_time
            wait_until(lambda: marker.exists() and len(_versions(d)) == 2, timeout=60,
                       what="v2's process started beside v1's")
            assert d.stop(signal.SIGKILL) == -signal.SIGKILL
            assert cli.wait(30) == 3  # the daemon went away
        finally:
            if cli.poll() is None:
                cli.kill()
                cli.wait()
        d.start()
        assert not marker.exists()
        after = d.cli("run", "greeter", "--input", "null", "--json")
        assert msgspec.json.decode(after.stdout)["output"]["version"] == "1.0"
        assert _versions(d) == ["1.0"]
        history = d.json("history", "greeter")["revisions"]
        assert [r["version"] for r in history] == ["1.0", "2.0", "1.0"]
        assert history[-1]["change"].startswith("rollout to release ")
        first = os.path.basename(history[0]["spec"]["release"])
        second = os.path.basename(history[1]["spec"]["release"])
        assert history[-1]["change"] == (
            f"rollout to release {second} interrupted by a daemon restart: back to release "
            f"{first}: healthy_deadline 120.0 -> 60.0, min_healthy_time 60.0 -> 0, "
            f"release '{second}' -> '{first}', version '2.0' -> '1.0'")
    finally:
        d.close()


def _versions(d: Daemon) -> list[str]:
    """The versions of the packaged processes of the daemon running now (from the venv
    in their environment: their command line is their title)."""
    import psutil

    assert d.proc is not None
    out = []
    for p in psutil.Process(d.proc.pid).children():
        try:
            venv = p.environ().get("VIRTUAL_ENV", "")
        except psutil.Error:
            continue
        if "/packages/greeter/" in venv:
            info = Path(venv).parent / "release.json"
            out.append(msgspec.json.decode(info.read_bytes())["version"])
    return sorted(out)


@pytest.mark.timeout(180)
def test_a_build_killed_half_way_leaves_nothing_that_could_start(
        tmp_path: Path, uv_cache: Path) -> None:
    slow = slow_package(tmp_path / "slow", tmp_path / "marker")
    (tmp_path / "d").mkdir()
    d = _with_packages(Daemon(tmp_path / "d", ""), uv_cache)
    try:
        d.start()
        cli = corral_popen(
            ["--socket", str(d.sock), "deploy", str(slow)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)})
        try:
            marker = tmp_path / "marker"
            wait_until(lambda: marker.exists() and marker.read_text(), timeout=60,
                       what="the build half-way")
            backend = int(marker.read_text())
            half = list((d.state / "packages" / "greeter").iterdir())
            assert len(half) == 1 and not (half[0] / "READY").exists()
            d.stop(signal.SIGKILL)
            cli.wait(30)
        finally:
            if cli.poll() is None:
                cli.kill()
                cli.wait()
        d.start()
        # the next daemon removed the half-built release and ended its build's processes
        assert list((d.state / "packages" / "greeter").iterdir()) == []
        wait_until(lambda: not _alive(backend), what="the build's processes ended")
        r = d.cli("releases", "greeter")
        assert (r.returncode, r.stderr) == (1, "corral: no such agent: greeter (and no "
                                               "releases of one; there are no agents)\n")
        assert "removed" in d.cli("logs", "corral", "-n", "200").stdout
    finally:
        d.close()


@pytest.mark.skipif(unshare_reason() is not None, reason=str(unshare_reason()))
@pytest.mark.timeout(180)
def test_a_full_disk_during_a_build_is_a_clear_error_and_the_current_release_stays(
        tmp_path: Path, uv_cache: Path) -> None:
    """The daemon runs in a mount namespace of its own where its packages directory is a
    4 MB tmpfs (nothing of the machine's changes)."""
    small = tmp_path / "small"
    small.mkdir()
    v1 = package(tmp_path / "v1", "1.0")
    v2 = package(tmp_path / "v2", "2.0")
    (v2 / "data.bin").write_bytes(os.urandom(6 << 20))
    (tmp_path / "d").mkdir()
    d = _with_packages(Daemon(tmp_path / "d", ""), uv_cache)
    d.config.write_text(d.config.read_text() + f'dir = "{small}"\n')
    try:
        d.notify.drain()
        d.proc = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "/bin/sh", "-c",
             f'mount -t tmpfs -o size=4m corral-test {small} && exec "$@"', "in-ns",
             PY, "-m", "corral", "daemon", "--config", str(d.config)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env={**os.environ, "NOTIFY_SOCKET": str(d.notify.path),
                 "PYTHONPATH": str(ROOT)})
        d.notify.wait_for("READY", proc=d.proc)
        assert d.cli("deploy", str(v1), timeout=120).returncode == 0
        r = d.cli("deploy", str(v2), timeout=120)
        assert r.returncode == 1
        assert r.stderr.endswith(f"corral: deploy of greeter: copying the source: the file "
                                 f"system of {small}/greeter is full: nothing was built; "
                                 "nothing changed\n"), r.stderr
        out = d.cli("run", "greeter", "--input", "null", "--json")
        assert msgspec.json.decode(out.stdout)["output"]["version"] == "1.0"
        listed = d.json("releases", "greeter")["releases"]
        assert [(r["version"], r["current"]) for r in listed] == [("1.0", True)]
    finally:
        d.close()  # the namespace, and its tmpfs, end with the daemon


# -- development mode -----------------------------------------------------------------
DEV_AGENT = """\
from corral.worker import run
run(lambda task, ctx: {{"says": {says!r}}})
"""


def daemon_lines(d: Any) -> list[str]:
    """The daemon's own last log lines."""
    return [ln.text for ln in d.services.hub.tail(["corral"], 1000, None)]


@pytest.mark.deadline(90)
async def test_watch_restarts_a_plain_agent_rolling_when_its_files_change(
        tmp_path: Path) -> None:
    src = tmp_path / "dev"
    src.mkdir()
    (tmp_path / "other").mkdir()
    (src / "elsewhere").symlink_to(tmp_path / "other")  # there when the watch begins
    (src / "agent.py").write_text(DEV_AGENT.format(says="one"))
    agents = f"""
[agents.dev]
command = ["{PY}", "agent.py"]
cwd = "{src}"
env = {{ PYTHONPATH = "{ROOT}" }}
watch = ["*.py"]
"""
    async with in_process(tmp_path, agents) as d:
        sup, watches = d.sup, d.services.dev_watch
        await wait_until_async(lambda: any(f"dev: watching *.py under {src}" in t
                                           for t in daemon_lines(d)))
        assert (await ask(d, "dev"))["says"] == "one"
        pid = sup.agent("dev").replicas[0].pid
        (src / "notes.txt").write_text("not a match")
        # a change under a link out of its directory (another user's, say) is not its
        (tmp_path / "other" / "x.py").write_text("someone else's")
        (src / "agent.py").write_text(DEV_AGENT.format(says="two"))
        await sup.wait_for(lambda: sup.agent("dev").replicas[0].pid not in (pid, None)
                           and sup.agent("dev").replicas[0].serving, 30)
        assert (await ask(d, "dev"))["says"] == "two"
        lines = [t for t in daemon_lines(d) if "changed: restarting" in t]
        assert lines == ["dev: agent.py changed: restarting (rolling)"]
        # no longer watched: nothing restarts it
        d.sup.agent("dev").spec.watch = []
        watches.sync("dev")
        assert "dev" not in watches.loops


@pytest.mark.deadline(120)
async def test_watch_deploys_a_package_again_and_refuses_a_broken_edit(
        tmp_path: Path, uv_cache: Path) -> None:
    v = package(tmp_path / "pkg", "1.0", manifest='watch = ["*.py"]\n')
    async with in_process(tmp_path, "", packages_toml(uv_cache)) as d:
        sup, watches = d.sup, d.services.dev_watch
        first = await deploy(d, v)
        await wait_until_async(lambda: any("greeter: watching *.py under" in t
                                           for t in daemon_lines(d)))
        (v / "agent.py").write_text(AGENT.format(version="1.1", extra=""))
        await sup.wait_for(lambda: sup.agent("greeter").spec.release is not None
                           and not sup.agent("greeter").spec.release.endswith(first.release),
                           60)
        assert (await ask(d))["version"] == "1.1"
        current = sup.agent("greeter").spec.release
        pids = {r.pid for r in sup.agent("greeter").replicas}
        (v / "agent.py").write_text(AGENT.format(version="1.2", extra="import nope_1_2"))
        await wait_until_async(lambda: any(
            "greeter: after the change of agent.py: deploy of greeter: release " in t
            and "No module named 'nope_1_2'" in t for t in daemon_lines(d)), 60)
        assert sup.agent("greeter").spec.release == current
        assert {r.pid for r in sup.agent("greeter").replicas} == pids
        assert (await ask(d))["version"] == "1.1"
        assert watches.restarts == 2


@pytest.mark.deadline(90)
async def test_the_example_package_deploys_from_its_uv_lock_and_starts_warm(
        tmp_path: Path, uv_cache: Path) -> None:
    async with in_process(tmp_path, "", packages_toml(uv_cache)) as d:
        res = await deploy(d, EXAMPLES / "package")
        assert (res.name, res.version, res.built) == ("sizes", "1.0.0", True)
        out = await ask(d, "sizes", {"bytes": 3_000_000, "seconds": 90})
        assert out == {"humanize": "4.14.0", "size": "3.0 MB",
                       "duration": "1 minute and 30 seconds"}
        # each replica forked from a zygote of the release's own interpreter
        sup = d.sup
        release = sup.agent("sizes").spec.release
        assert [k.interpreter for k in sup.zygotes.zygotes] == [f"{release}/venv/bin/python"]
        assert sup.stats.cold_fallbacks == 0
        site = next(Path(release, "venv", "lib").glob("python3*/site-packages"))
        assert sorted(p.name for p in site.glob("*.dist-info")) == [
            "humanize-4.14.0.dist-info"]


@pytest.mark.deadline(90)
async def test_a_client_that_goes_away_mid_switch_does_not_stop_it(
        tmp_path: Path, uv_cache: Path) -> None:
    v1 = package(tmp_path / "v1", "1.0")
    v2 = package(tmp_path / "v2", "2.0", manifest="min_healthy_time = 2\n")
    async with in_process(tmp_path, "", packages_toml(uv_cache)) as d:
        sup = d.sup
        await deploy(d, v1)
        # a client of the control socket that asks for the deploy and goes away (in this
        # process: a child of the test would be a stray child of the daemon in it)
        reader, writer = await asyncio.open_unix_connection(str(tmp_path / "corral.sock"))
        writer.write(msgspec.json.encode({"jsonrpc": "2.0", "id": 1, "params": {
            "path": str(v2)}, "method": "packages.deploy"}) + b"\n")
        await wait_until_async(lambda: bool(sup.agent("greeter").replacing), 60)
        writer.close()
        await writer.wait_closed()
        del reader
        marker = d.services.packages.releases.root / "greeter" / "ROLLOUT"
        await wait_until_async(lambda: not marker.exists(), 30)  # the switch is over
        assert sup.agent("greeter").spec.version == "2.0"
        assert (await ask(d))["version"] == "2.0"
        assert d.services.fleet.revision_of("greeter") == 2


@pytest.mark.deadline(60)
async def test_hardlink_mode_shares_the_caches_files_read_only(tmp_path: Path,
                                                               uv_cache: Path) -> None:
    v1 = package(tmp_path / "v1", "1.0")
    async with in_process(tmp_path, "", packages_toml(uv_cache, 'link_mode = "hardlink"')
                          ) as d:
        await deploy(d, v1)
        assert (await ask(d))["six"] == "1.16.0"
        release = Path(d.sup.agent("greeter").spec.release)
        six = next((release / "venv" / "lib").glob("python3*/site-packages/six.py"))
        st = six.stat()
        assert st.st_nlink > 1 and not st.st_mode & 0o222


@pytest.mark.deadline(90)
async def test_a_new_release_is_how_a_failed_agent_is_fixed(tmp_path: Path,
                                                             uv_cache: Path) -> None:
    dies = ("_handle = handle\n"
            "def handle(task, ctx):\n"
            "    if task == 'die':\n"
            "        os._exit(4)\n"
            "    return _handle(task, ctx)\n")
    v1 = package(tmp_path / "v1", "1.0", manifest="max_restarts = 0\n")
    (v1 / "agent.py").write_text(AGENT.format(version="1.0", extra="").replace(
        "\n\nrun(handle)", "\n" + dies + "\n\nrun(handle)"))
    v2 = package(tmp_path / "v2", "2.0")
    async with in_process(tmp_path, "", packages_toml(uv_cache)) as d:
        sup = d.sup
        await deploy(d, v1)
        lost = await sup.tasks.run("greeter", "die")
        assert lost.status == "lost"
        await sup.wait_state("greeter", State.FAILED, timeout=30)
        await deploy(d, v2)
        assert sup.agent("greeter").replicas[0].serving
        assert (await ask(d))["version"] == "2.0"
