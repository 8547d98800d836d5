"""A new user's daemon whose dashboard port is taken (another corral's Quick start on the
same machine holds 127.0.0.1:7070): `corral ui` says so, and where, instead of printing a
link to whatever answers on that port or telling to set a listen that is set (issue 36)."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from corral import jsonrpc
from corral.jsonrpc import RpcError

from .conftest import ROOT
from .daemon_harness import hello, in_process
from .test_ui import OPERATOR, login_link


@pytest.mark.deadline(90)
async def test_a_login_link_is_refused_with_the_reason_while_the_port_is_taken(
        tmp_path: Path) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        async with in_process(tmp_path, hello("hello"),
                              f'\n[http]\nlisten = "127.0.0.1:{port}"\n') as d:
            with pytest.raises(RpcError) as err:
                await login_link(d)
            assert (err.value.code, err.value.message) == (
                jsonrpc.UNAVAILABLE,
                f"the dashboard's HTTP server on 127.0.0.1:{port} is not serving (Address "
                "already in use); it is tried again with backoff: free that address, or "
                "give [http] listen another and restart the daemon")
            # the daemon's own status says the same, its agents running without it
            assert (await d.dispatcher.call(OPERATOR, "daemon.info")).status.endswith(
                f"HTTP server on 127.0.0.1:{port} not serving (Address already in use)")


def test_run_sh_names_the_dashboard_at_the_port_the_config_gives(tmp_path: Path) -> None:
    # the one line of ./run.sh that reads it, run where examples/corral.toml says 7171
    line = next(ln for ln in (ROOT / "run.sh").read_text().splitlines()
                if ln.startswith("listen="))
    (tmp_path / "examples").mkdir()
    (tmp_path / "examples" / "corral.toml").write_text(
        '[http]\nlisten = "127.0.0.1:7171"\n')
    said = subprocess.run(["bash", "-c", f'{line}\necho "$listen"'], cwd=tmp_path,
                          capture_output=True, text=True,
                          env={"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"})
    assert (said.returncode, said.stdout, said.stderr) == (0, "127.0.0.1:7171\n", "")
