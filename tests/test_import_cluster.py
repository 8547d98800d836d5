"""A PM2 cluster-mode app imported into a config that runs (issue 78): PM2's replicas
shared one listening socket; corral's are processes of their own, so each is given its
own port (PORT plus $CORRAL_REPLICA, or the app's increment_var), said; where the app's
port is not in its env, that is said too. With real node: both replicas serve."""

from __future__ import annotations

import json
import socket
import tomllib
import urllib.request
from pathlib import Path

import pytest

from .daemon_harness import free_port, running_daemon, shared_tmpdir
from .test_daemon_cli import wait_until
from .test_import import NODE, corral

SERVER = ("require('http').createServer((q, s) => s.end(`replica "
          "${process.env.CORRAL_REPLICA} on ${process.env.PORT}`))"
          ".listen(Number(process.env.PORT), '127.0.0.1');\n")


def two_free_ports() -> int:
    """A port p with p + 1 free too (the replicas' two)."""
    for _ in range(50):
        port = free_port()
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise OSError("no two free ports in a row")


def answer(port: int) -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as r:
            return str(r.read().decode())
    except OSError:
        return None


@pytest.mark.skipif(NODE is None, reason="node is not installed")
def test_a_pm2_cluster_app_imports_into_replicas_that_each_serve(tmp_path: Path) -> None:
    app = shared_tmpdir()
    try:
        (app / "server.js").write_text(SERVER)
        port = two_free_ports()
        (app / "ecosystem.json").write_text(json.dumps({"apps": [{
            "name": "web", "script": str(app / "server.js"), "instances": 2,
            "exec_mode": "cluster", "env": {"PORT": port}}]}))
        r = corral("import", "ecosystem.json", cwd=app)
        assert r.returncode == 0, r.stderr
        assert r.stderr == (
            f'corral import: ecosystem.json: apps[0] (web): exec_mode: "cluster": each '
            f"replica listens on its own port: PORT = {port} + $CORRAL_REPLICA "
            f"({port}..{port + 1}), set by `sh -c` as it starts (PM2's cluster mode shared "
            "one listening socket among them; corral has none, so put a balancer in "
            "front)\n")
        assert tomllib.loads(r.stdout)["agents"]["web"]["replicas"] == 2
        with running_daemon(shared_tmpdir(), r.stdout) as d:
            wait_until(lambda: answer(port) is not None and answer(port + 1) is not None,
                       what="both replicas serving")
            assert (answer(port), answer(port + 1)) == (
                f"replica 0 on {port}", f"replica 1 on {port + 1}")
            states = {k: v["state"] for k, v in d.status().items()}
            assert states == {"web#0": "ready", "web#1": "ready"}
            assert all(v["restarts"] == 0 for v in d.status().values())
    finally:
        import shutil
        shutil.rmtree(app, ignore_errors=True)


@pytest.mark.parametrize("app,said", [
    ({"instances": 2, "exec_mode": "cluster"},
     'exec_mode: "cluster": not carried: 2 replicas, each a process of its own (corral '
     'has no shared listening socket), and "PORT" is not a port in the app\'s env to give '
     "each its own: each must choose its own port, or the second fails with EADDRINUSE"),
    ({"instances": 3, "increment_var": "HTTP_PORT", "env": {"HTTP_PORT": "8000"}},
     'increment_var: "HTTP_PORT": each replica listens on its own port: HTTP_PORT = 8000 '
     "+ $CORRAL_REPLICA (8000..8002), set by `sh -c` as it starts (as PM2's increment_var "
     "did)"),
    ({"instances": 1, "exec_mode": "cluster_mode"},
     'exec_mode: "cluster_mode": one replica, a process of its own, as corral runs each'),
])
def test_replicas_of_one_port_are_each_given_theirs_or_told(tmp_path: Path,
                                                            app: dict[str, object],
                                                            said: str) -> None:
    (tmp_path / "e.json").write_text(json.dumps({"apps": [
        {"name": "web", "script": "/srv/web/server.js", **app}]}))
    r = corral("import", "e.json", cwd=tmp_path)
    assert (r.returncode, r.stderr) == (0, f"corral import: e.json: apps[0] (web): {said}\n")
