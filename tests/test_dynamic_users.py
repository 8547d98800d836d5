"""Unprivileged unless told (issue 88, DESIGN section 10): under a daemon running as root,
an agent naming no `user` runs as a uid of its own from `[supervisor] dynamic_uids`,
owning its state directory, and reads neither `/etc/shadow`, another agent's directory
nor corral's state; `user = "root"` written out runs it as root; an agent whose command
its user cannot reach is refused at `check-config` and `corral add`, with the reason."""

from __future__ import annotations

import os
import shutil
import stat
import sys
import textwrap
from pathlib import Path

import pytest

from corral.supervisor.dynamicusers import DynamicUsers, homes_of, uid_range

from .daemon_harness import corral_run, running_daemon, shared_tmpdir
from .test_daemon_cli import wait_until

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="dynamic users: the daemon "
                                "runs agents as other uids only as root")

DYNAMIC = "dynamic_uids = [61184, 65519]"  # DESIGN's default, which the harness turns off


def plain(name: str, script: str, extra: str = "") -> str:
    return textwrap.dedent(f"""
        [agents.{name}]
        protocol = "none"
        command = ["/bin/sh", "-c", '''{script}''']
        restart = "never"
        {extra}
    """)


def opens_seen() -> bool:
    """Whether this host gives fanotify's permission events (opentrip.py's decoys)."""
    import asyncio

    from corral.supervisor.opentrip import OpenWatch

    async def made() -> bool:
        try:
            OpenWatch(lambda _: None).close()
        except OSError:
            return False
        return True

    return asyncio.run(made())


def uid_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError(f"no Uid in /proc/{pid}/status")


@pytest.mark.deadline(120)
def test_an_agent_naming_no_user_runs_as_a_uid_of_its_own_that_reaches_nothing_else() -> None:
    tmp = shared_tmpdir()
    homes = homes_of(tmp / "state")
    probe = (f'until [ -e {homes}/b ]; do sleep 0.05; done; '
             '{ id -u; id -g; echo "$HOME"; echo "$STATE_DIRECTORY"; echo "$USER"; '
             'cat /etc/shadow 2>&1; '
             f'ls {tmp}/state 2>&1; ls {homes}/b 2>&1; '
             'echo mine > "$STATE_DIRECTORY/mine" && echo wrote; } '
             '> "$STATE_DIRECTORY/report.tmp"; mv "$STATE_DIRECTORY/report.tmp" '
             '"$STATE_DIRECTORY/report"; exec sleep 1000')
    agents = (plain("a", probe) + plain("b", "exec sleep 1000")
              # written whole, then named: the name seen is never an empty file
              + plain("r", f"id -u > {tmp}/uid.part && mv {tmp}/uid.part {tmp}/root-uid; "
                      "exec sleep 1000", 'user = "root"'))
    with running_daemon(tmp, agents, extra=DYNAMIC) as d:
        report = homes / "a" / "report"
        wait_until(report.exists, timeout=30, what="a's report")
        status = d.status()
        uid_a, uid_b = uid_of(status["a#0"]["pid"]), uid_of(status["b#0"]["pid"])
        # each its own uid of the range, the one its name hashes to where that is free
        users = DynamicUsers(range(61184, 65520), homes)
        assert 61184 <= uid_a <= 65519 and 61184 <= uid_b <= 65519 and uid_a != uid_b
        assert {uid_a, uid_b} == {users.uid_of(name, "default") for name in ("a", "b")}
        lines = report.read_text().splitlines()
        assert lines == [
            str(uid_a), str(uid_a), str(homes / "a"), str(homes / "a"), "corral-a",
            "cat: /etc/shadow: Permission denied",
            f"ls: cannot open directory '{tmp}/state': Permission denied",
            f"ls: cannot open directory '{homes}/b': Permission denied",
            "wrote"]
        # its state directory is its own, 0700; the directory of them root's, 0711
        for name, uid in (("a", uid_a), ("b", uid_b)):
            st = os.stat(homes / name)
            assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (uid, uid, 0o700)
        st = os.stat(homes)
        assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o711)
        # `user = "root"` written out: root
        wait_until((tmp / "root-uid").exists, timeout=30, what="r's uid")
        assert (tmp / "root-uid").read_text() == "0\n"
        assert uid_of(status["r#0"]["pid"]) == 0


def _unreachable_python() -> str:
    """This test's interpreter where no dynamic uid reaches it (pyenv under /root, 0700):
    the issue's host."""
    python = os.path.realpath(sys.executable)
    parts = Path(python).parents
    if not any(p.stat().st_mode & stat.S_IXOTH == 0 for p in parts if p != Path("/")):
        pytest.skip(f"{python} is reachable by any uid here: the refusal needs one that "
                    "is not")
    return python


@pytest.mark.deadline(120)
def test_an_agent_whose_user_cannot_reach_its_command_is_refused_at_check_config_and_add(
) -> None:
    python = _unreachable_python()
    blocked = next(p for p in reversed(Path(python).parents)
                   if p != Path("/") and p.stat().st_mode & stat.S_IXOTH == 0)
    tmp = shared_tmpdir()
    try:
        for user, who in (("", "a dynamic uid (it names no user: [supervisor] "
                               "dynamic_uids)"),
                          ('user = "nobody"', "user nobody")):
            table = textwrap.dedent(f"""
                [agents.w]
                command = ["{python}", "-c", "pass"]
                cwd = "{tmp}"
                {user}
            """)
            config = tmp / "corral.toml"
            config.write_text(f'[supervisor]\nstate_dir = "{tmp}/state"\n{DYNAMIC}\n{table}')
            done = corral_run(["check-config", str(config)])
            why = (f"it runs as {who}, who may not reach its command "
                   f"{python} (no way through {blocked}): give it a user who may, or make "
                   'it reachable; `user = "root"` runs it as root')
            assert done.returncode == 1, done.stdout
            assert done.stderr == f"corral: invalid config: {config}: agents.w.user: {why}\n"
            # and at `corral add`, to a running daemon: nothing added
            added = tmp / "w.toml"
            added.write_text(table)
            with running_daemon(shared_tmpdir(), "", extra=DYNAMIC) as d:
                done = d.cli("add", str(added))
                assert done.returncode != 0
                assert f"agents.w.user: {why}" in done.stderr
                assert "w" not in {a["name"] for a in d.status_json()["agents"]}
        # `user = "root"` written out: the same command is accepted
        config.write_text(f'[supervisor]\nstate_dir = "{tmp}/state"\n{DYNAMIC}\n'
                          + table.replace('user = "nobody"', 'user = "root"'))
        done = corral_run(["check-config", str(config)])
        assert done.returncode == 0, done.stderr
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def test_dynamic_uids_is_two_uids_or_none() -> None:
    assert uid_range([61184, 65519]) == range(61184, 65520)
    assert uid_range([]) is None
    for bad in ([1], [5, 4], [0, 10], [1, 2**31]):
        with pytest.raises(Exception, match=r"supervisor.dynamic_uids: .* is not \[FIRST, "
                                            r"LAST\] of uids between 1 and 2147483646"):
            uid_range(bad)


@pytest.mark.deadline(120)
def test_a_new_users_trial_of_egress_gateways_sees_each_escape_and_never_etc_shadow() -> None:
    """The issue's trial: an agent as it is written first (no user), egress = "gateways",
    under a root daemon: it runs as a dynamic uid, /etc/shadow is refused it, and each way
    out it tries is a `boundary.refused` naming it."""
    from corral.supervisor.sandbox import host_refusal

    if host_refusal("bwrap", None) is not None or not os.access("/usr/bin/python3", os.X_OK):
        pytest.skip("bubblewrap and a system python3 are needed")
    from .daemon_harness import free_port

    tmp = shared_tmpdir()
    home = tmp / "home"
    home.mkdir()
    home.chmod(0o755)
    (home / "trial.py").write_text(textwrap.dedent("""
        import os, socket
        said = []
        try:
            open("/etc/shadow").read()
            said.append("shadow read")
        except OSError as exc:
            said.append(f"shadow: {type(exc).__name__}")
        for host, port in (("192.0.2.1", 443), ("127.0.0.1", 22)):
            with socket.socket() as s:
                try:
                    s.connect((host, port))
                    said.append(f"{host}:{port} connected")
                except OSError as exc:
                    said.append(f"{host}:{port}: {type(exc).__name__}")
        with open(os.environ["STATE_DIRECTORY"] + "/said.tmp", "w") as f:
            f.write("\\n".join(said) + "\\n")
        os.rename(os.environ["STATE_DIRECTORY"] + "/said.tmp",
                  os.environ["STATE_DIRECTORY"] + "/said")
        os.execv("/bin/sleep", ["sleep", "1000"])
    """))
    agent = textwrap.dedent(f"""
        [agents.trial]
        protocol = "none"
        command = ["/usr/bin/python3", "trial.py"]
        cwd = "{home}"
        egress = "gateways"
        restart = "never"

        [gateway]
        listen = "127.0.0.1:{free_port()}"
    """)
    with running_daemon(tmp, agent, extra=DYNAMIC) as d:
        said = homes_of(tmp / "state") / "trial" / "said"
        wait_until(said.exists, timeout=30, what="the trial's report")
        assert said.read_text().splitlines() == [
            "shadow: PermissionError",
            "192.0.2.1:443: ConnectionRefusedError",
            "127.0.0.1:22: ConnectionRefusedError"]
        uid = uid_of(d.status()["trial#0"]["pid"])
        assert 61184 <= uid <= 65519

        # each escape an audit row naming the agent (as `corral audit` lists them)
        def refusals() -> list[tuple[str, str]]:
            rows = d.ask("audit.list", {"limit": 100})["entries"]
            return sorted((r["params"]["kind"], r["params"]["target"]) for r in rows
                          if r["method"] == "boundary.refused"
                          and r["params"]["agent"] == "trial")
        # (its open of /etc/shadow too, where fanotify watches the decoy: opentrip.py)
        want = [("connect", "127.0.0.1:22"), ("connect", "192.0.2.1:443"),
                *([("open", "/etc/shadow")] if opens_seen() else [])]
        wait_until(lambda: len(refusals()) >= len(want), timeout=30,
                   what="its refusals audited")
        assert refusals() == want


def test_a_reload_says_dynamic_uids_take_a_restart() -> None:
    tmp = shared_tmpdir()
    with running_daemon(tmp, "", extra=DYNAMIC) as d:
        d.config.write_text(d.config.read_text().replace(DYNAMIC, "dynamic_uids = []"))
        assert d.ask("config.reload", {})["restart_needed"] == ["[supervisor] dynamic_uids"]


def test_a_uid_and_its_directory_are_held_by_the_agents_tenant_and_name(
        tmp_path: Path) -> None:
    """Session 18's hole 3, the rule alone: tenant b's agent of the name tenant acme's
    agent had is given neither its uid (kept for the daemon's life) nor its directory;
    the default tenant's agent keeps the directory of its name; the same tenant's agent of
    the name gets both back."""
    users = DynamicUsers(range(61184, 65520), tmp_path / "homes")
    acme = users.uid_of("worker", "acme")
    theirs = users.home_of("worker", "acme", acme)
    (theirs / "key").write_text("acme's key")
    b = users.uid_of("worker", "b")
    assert b != acme
    assert users.home_of("worker", "b", b) == tmp_path / "homes" / "worker.b"
    assert list((tmp_path / "homes" / "worker.b").iterdir()) == []
    assert theirs == tmp_path / "homes" / "worker.acme"
    assert os.stat(theirs).st_uid == acme
    assert (users.uid_of("worker", "acme"), users.home_of("worker", "acme", acme)) == (
        acme, theirs)
    own = users.uid_of("worker", "default")
    assert users.home_of("worker", "default", own) == tmp_path / "homes" / "worker"
    assert len({acme, b, own}) == 3
