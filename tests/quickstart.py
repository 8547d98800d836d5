"""The Quick start's daemon as ./run.sh runs it (examples/corral.toml, the venv's python3
first on PATH), on a copy of examples/ and a free port, for tests that call it as the
README and docs/ tell a new user to."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

from .conftest import EXAMPLES
from .daemon_harness import PY, Notifications, corral_run, free_port

# what run.sh starts the daemon with, copied where the test's state is kept
COPIED = ("corral.toml", "hello.py", "researcher.py", "misbehave.py", "notes_server.py")
# the port the Quick start serves on, as examples/corral.toml, the README and docs/ say
PORT = 7070


@contextlib.contextmanager
def quickstart(tmp_path: Path, appended: str = "", dirs: tuple[str, ...] = ()
               ) -> Iterator[tuple[int, dict[str, str], Path]]:
    """./run.sh's daemon, its `[http] listen` a free port, `appended` added to its config
    as a reader appends a doc's table (and the directories of examples/ it names copied):
    that port, the environment run.sh gives it and its socket; stopped as Ctrl-C stops
    ./run.sh's, which must end it cleanly."""
    examples = tmp_path / "examples"
    examples.mkdir()
    for name in COPIED:
        shutil.copy(EXAMPLES / name, examples / name)
    for name in dirs:
        shutil.copytree(EXAMPLES / name, examples / name)
    port = free_port()
    config = examples / "corral.toml"
    text = config.read_text()
    listen = re.compile(rf'^listen = "127\.0\.0\.1:{PORT}"$', re.M)
    assert listen.search(text), "examples/corral.toml's [http] listen moved: follow it here"
    config.write_text(listen.sub(f'listen = "127.0.0.1:{port}"', text) + appended)
    notify = Notifications(tmp_path)
    venv = Path(PY).parent
    env = {**{k: v for k, v in os.environ.items() if k != "CORRAL_SOCKET"},
           "PATH": f"{venv}:{os.environ['PATH']}", "NOTIFY_SOCKET": str(notify.path)}
    said = (tmp_path / "daemon.err").open("wb")
    daemon = subprocess.Popen([str(venv / "corral"), "daemon", "--config", str(config)],
                              env=env, stdout=said, stderr=subprocess.STDOUT)
    try:
        notify.wait_for("READY", proc=daemon)
        yield port, env, examples / ".corral" / "corral.sock"
    finally:
        daemon.send_signal(signal.SIGINT)  # as Ctrl-C stops ./run.sh's
        try:
            assert daemon.wait(60) == 0
        finally:
            if daemon.poll() is None:
                daemon.kill()
                daemon.wait()
            notify.close()
            said.close()


def token(env: dict[str, str], sock: Path, name: str, *scopes: str) -> str:
    """A token of these scopes, as `corral token create` prints it."""
    made = corral_run(["--socket", str(sock), "token", "create", name,
                       *(a for scope in scopes for a in ("--scope", scope))],
                      env=env, timeout=60)
    assert made.returncode == 0, made.stderr
    return made.stdout.strip()
