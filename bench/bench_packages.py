"""Agent packages (issue 25): a release's build beside pip's, and a switch under load.

- cold build: `corral deploy` of a package whose lock pins ~20 packages, uv's cache empty,
  beside `python -m venv` + `pip install --no-cache-dir -r` of the same lock (the peer);
- warm rebuild: the same lock and a changed source (goal: the build within 1 s);
- a switch under load: tasks' latency before and during a deploy's switch, 4 clients
  running tasks one after another on a 2-replica package (goal: p99 within 1.5x).

Needs PyPI (both sides download the lock's packages). Run:
    .venv/bin/python -m bench.bench_packages
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import msgspec

from corral.cli.client import Client

from .harness import ENV, PY, CorralDaemon, report, workdir

# top-level packages; their dependencies make the lock ~20 (pure Python and wheels)
WANTED = ["requests==2.32.3", "rich==13.9.4", "jinja2==3.1.4", "click==8.1.7",
          "attrs==24.2.0", "packaging==24.2", "python-dateutil==2.9.0.post0",
          "humanize==4.14.0", "tabulate==0.9.0", "pyparsing==3.2.0", "pluggy==1.5.0",
          "iniconfig==2.0.0", "tomlkit==0.13.2"]
AGENT = """\
import requests, rich, jinja2  # the lock's packages are importable
from corral.worker import run
VERSION = {version!r}
run(lambda task, ctx: {{"version": VERSION}})
"""
CLIENTS = 4
BEFORE = 5.0  # seconds of load measured before the deploy


def uv() -> str:
    from uv import find_uv_bin

    return str(find_uv_bin())


def make_package(d: Path, lock: str, version: str) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "corral.toml").write_text(textwrap.dedent(f"""\
        [agent]
        name = "bench"
        version = "{version}"
        command = ["python", "agent.py"]
        replicas = 2
        min_healthy_time = 1.0
        start_timeout = 60.0
        """))
    (d / "agent.py").write_text(AGENT.format(version=version))
    (d / "requirements.txt").write_text(lock)
    return d


def deploy(daemon: CorralDaemon, path: Path) -> tuple[float, dict[str, Any]]:
    t0 = time.perf_counter()
    with Client(daemon.sock, timeout=None) as c:
        res = c.call("packages.deploy", {"path": str(path)})
    return time.perf_counter() - t0, res


def release_info(daemon: CorralDaemon, release: str) -> dict[str, Any]:
    info = daemon.dir / "state" / "packages" / "bench" / release / "release.json"
    out: dict[str, Any] = msgspec.json.decode(info.read_bytes())
    return out


def pip_cold(work: Path, lock: Path) -> float:
    venv = work / "pip-venv"
    t0 = time.perf_counter()
    subprocess.run([PY, "-m", "venv", str(venv)], check=True)
    # pip as it comes (no site configuration: PyPI, as uv uses it here)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--no-cache-dir",
                    "--disable-pip-version-check", "-r", str(lock)], check=True,
                   env={**os.environ, "PIP_CONFIG_FILE": os.devnull})
    return time.perf_counter() - t0


def load(daemon: CorralDaemon, stop: threading.Event, out: list[tuple[float, float]]) -> None:
    with Client(daemon.sock) as c:
        while not stop.is_set():
            t0 = time.perf_counter()
            res = c.call("tasks.run", {"agent": "bench", "input": None})
            t1 = time.perf_counter()
            assert res["status"] == "succeeded", res
            out.append((t0, t1 - t0))


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * len(xs)))] * 1000


def main() -> None:
    work = workdir("packages")
    try:
        lock = subprocess.run([uv(), "pip", "compile", "-q", "--python-version", "3.11",
                               "--no-header", "-"], input="\n".join(WANTED), text=True,
                              capture_output=True, check=True, env=ENV).stdout
        pinned = [ln for ln in lock.splitlines() if "==" in ln and not ln.startswith("#")]
        (work / "lock.txt").write_text(lock)
        pip_seconds = pip_cold(work, work / "lock.txt")

        (work / "d").mkdir()
        daemon = CorralDaemon(work / "d", "", extra=f"\n[packages]\ncache_dir = "
                                                    f'"{work}/uv-cache"\n')
        daemon.start()
        try:
            wall_cold, cold = deploy(daemon, make_package(work / "v1", lock, "1"))
            cold_build = release_info(daemon, cold["release"])["build_seconds"]
            v2 = make_package(work / "v2", lock, "2")
            wall_warm, warm = deploy(daemon, v2)
            warm_build = release_info(daemon, warm["release"])["build_seconds"]

            samples: list[tuple[float, float]] = []
            stop = threading.Event()
            threads = [threading.Thread(target=load, args=(daemon, stop, samples))
                       for _ in range(CLIENTS)]
            for t in threads:
                t.start()
            time.sleep(BEFORE)  # the load runs: this is the window measured before
            begin = time.perf_counter()
            _, third = deploy(daemon, make_package(work / "v3", lock, "3"))
            end = time.perf_counter()
            time.sleep(BEFORE)  # settled again
            # the switch alone: back to a kept release, nothing built
            back = time.perf_counter()
            with Client(daemon.sock, timeout=None) as c:
                c.call("agents.rollback", {"name": "bench", "revision": 2})
            back_end = time.perf_counter()
            stop.set()
            for t in threads:
                t.join()
        finally:
            daemon.stop()
        # the same warm rebuild with the cache's files linked, not copied
        (work / "h").mkdir()
        linked = CorralDaemon(work / "h", "", extra=f"\n[packages]\ncache_dir = "
                                                    f'"{work}/uv-cache"\nlink_mode = '
                                                    '"hardlink"\n')
        linked.start()
        try:
            wall_linked, hard = deploy(linked, make_package(work / "v4", lock, "4"))
            info = linked.dir / "state" / "packages" / "bench" / hard["release"]
            linked_build = msgspec.json.decode((info / "release.json").read_bytes())[
                "build_seconds"]
        finally:
            linked.stop()
        before = [d for t, d in samples if t < begin]
        during = [d for t, d in samples if begin <= t <= end]
        switching = [d for t, d in samples if back <= t <= back_end]
        data = {
            "load_1min": os.getloadavg()[0],
            "lock_packages": len(pinned),
            "cold": {"corral_build_s": cold_build, "corral_deploy_wall_s": round(wall_cold, 3),
                     "pip_venv_install_s": round(pip_seconds, 3),
                     "ratio_build_to_pip": round(cold_build / pip_seconds, 3)},
            "warm_rebuild": {"build_s": warm_build, "deploy_wall_s": round(wall_warm, 3),
                             "hardlink_build_s": linked_build,
                             "hardlink_deploy_wall_s": round(wall_linked, 3)},
            "switch_under_load": {
                "clients": CLIENTS, "tasks_before": len(before), "tasks_during": len(during),
                "switch_wall_s": round(end - begin, 3),
                "before_p50_ms": round(pct(before, 0.5), 3),
                "before_p99_ms": round(pct(before, 0.99), 3),
                "during_p50_ms": round(pct(during, 0.5), 3),
                "during_p99_ms": round(pct(during, 0.99), 3),
                "p99_ratio": round(pct(during, 0.99) / pct(before, 0.99), 3),
                "built": third["built"],
                "rollback_switch_wall_s": round(back_end - back, 3),
                "rollback_tasks": len(switching),
                "rollback_p50_ms": round(pct(switching, 0.5), 3),
                "rollback_p99_ms": round(pct(switching, 0.99), 3),
                "rollback_p99_ratio": round(pct(switching, 0.99) / pct(before, 0.99), 3)},
            "median_before_ms": round(statistics.median(before) * 1000, 3),
        }
        report("packages", data)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
