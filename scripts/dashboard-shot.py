"""Regenerate docs/dashboard.png (README's picture) from a real run: the example config
(examples/corral.toml) copied to a temporary directory, its daemon started there on a
free loopback port, a few tasks run, a dashboard link asked for with `corral ui`, the
agent view of `hello` (two replicas, charts, its live log, revisions) shot by Debian's
chromium through Playwright (as tests/test_ui.py drives it), then the daemon stopped by
its pid and the directory removed.

usage: .venv/bin/python scripts/dashboard-shot.py [OUT.png]   (default docs/dashboard.png)
Needs the test venv (Playwright: `. scripts/venv.sh test`) and /usr/bin/chromium
(scripts/browser.sh)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent  # the venv's: corral, and the agents' python3
CHROMIUM = "/usr/bin/chromium"
# as tests/test_ui.py runs it: no GPU, no sandbox (root), nothing on the network
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
READY_WITHIN = 60.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def corral(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "corral"), *args], env=env, capture_output=True,
                          text=True, timeout=60)


def shoot(out: Path, tmp: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    examples = tmp / "examples"
    shutil.copytree(ROOT / "examples", examples,
                    ignore=shutil.ignore_patterns(".corral", "__pycache__"))
    config = examples / "corral.toml"
    config.write_text(config.read_text().replace(
        'listen = "127.0.0.1:7070"', f'listen = "127.0.0.1:{free_port()}"'))
    env = {**os.environ, "PATH": f"{BIN}:{os.environ.get('PATH', '')}",
           "CORRAL_SOCKET": str(examples / ".corral" / "corral.sock")}
    log = (tmp / "daemon.log").open("w")
    daemon = subprocess.Popen([str(BIN / "corral"), "daemon", "--config", str(config)],
                              env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + READY_WITHIN
        while True:  # until the daemon answers (its socket is made before it is ready)
            r = corral(env, "ui", "--json")
            if r.returncode == 0:
                link = json.loads(r.stdout)["url"]
                break
            if daemon.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the daemon did not start: {r.stderr.strip()}\n"
                                 f"{(tmp / 'daemon.log').read_text()}")
            time.sleep(0.2)
        for name in ("ada", "grace", "alan"):
            r = corral(env, "run", "hello", "--input", json.dumps({"name": name}))
            if r.returncode != 0:
                raise SystemExit(f"corral run failed: {r.stderr}")
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 800})
                page.goto(link)
                page.click('#fleet a[href="#/agent/hello"]')
                expect(page.locator("#replicas-table tbody tr")).to_have_count(2)
                expect(page.locator("#log")).to_contain_text("event: starting -> ready")
                page.click("#range-live")  # a point a second: lines within seconds
                # tasks while the charts draw: their rate and execution times move
                for i in range(12):
                    corral(env, "run", "hello", "--input", json.dumps({"name": f"n{i}"}))
                    time.sleep(0.4)
                page.wait_for_function(
                    "() => window.corralCharts.memory && "
                    "window.corralCharts.memory.data[0].length >= 8", timeout=30_000)
                page.screenshot(path=str(out), full_page=True)
            finally:
                browser.close()
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(timeout=30)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()
        log.close()


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else ROOT / "docs" / "dashboard.png")
    tmp = Path(tempfile.mkdtemp(prefix="corral-shot-"))
    try:
        shoot(out.resolve(), tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
