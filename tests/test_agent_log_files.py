"""An agent's own log file (issue 57): `log_file` with its own rotation by size, or the
daemon's stdout for a container's `docker logs`; the operator's to name."""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import subprocess
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

from corral.daemon.logfiles import LogPlace, RotatingFile, Rotation
from corral.daemon.privilege import refusal
from corral.supervisor.config import AgentSpec, TenantSpec

from .daemon_harness import Daemon, corral_popen, corral_run, running_daemon, shared_tmpdir
from .test_daemon_cli import wait_until

ROOT = Path(__file__).resolve().parent.parent
# 200 numbered lines in bursts of 20 (each burst one read, one write of its log), then
# it stays up
TALKER = ("i=0; while [ $i -lt 200 ]; do echo \"line $i of the talker\"; i=$((i+1)); "
          "[ $((i % 20)) = 0 ] && sleep 0.1; done; exec sleep 1000")


@contextlib.contextmanager
def talked(tmp: Path, own: Path, keys: str) -> Iterator[Daemon]:
    """A daemon whose agent `talker` (TALKER) logs to own/talker.log, rotated at 4000
    bytes, with the agent's keys `keys` besides; once every line is said."""
    agents = (f'[agents.talker]\ncommand = ["sh", "-c", {json.dumps(TALKER)}]\n'
              f'protocol = "none"\nlog_file = "{own}/talker.log"\n'
              f"log_max_bytes = 4000\n{keys}\n")
    with running_daemon(tmp, agents) as d:
        wait_until(lambda: "line 199 of the talker" in d.logs("talker", lines=5),
                   what="every line said")
        yield d


def test_a_log_file_of_its_own_is_written_and_rotated_by_its_size() -> None:
    tmp = shared_tmpdir()
    own = tmp / "own"
    own.mkdir()
    with talked(tmp, own, "log_backups = 2") as d:
        files = sorted(p.name for p in own.iterdir())
        # rotated at 4000 bytes, a write never split; two kept, as log_backups says
        assert files == ["talker.log", "talker.log.1", "talker.log.2"], files
        assert all((own / f).stat().st_size >= 4000 for f in files[1:])
        # the last line in the newest file that holds any: a write that reached the size
        # rotates the file after it, which may leave talker.log empty (CI a1)
        said = [(own / f).read_text() for f in ("talker.log.2", "talker.log.1", "talker.log")]
        assert [s for s in said if s][-1].rstrip().endswith("line 199 of the talker"), said
        assert not (d.state / "logs" / "talker.log").exists()


def test_dev_stdout_is_the_daemons_stdout_for_docker_logs() -> None:
    tmp = shared_tmpdir()
    d = Daemon(tmp, textwrap.dedent("""
        [agents.talker]
        command = ["sh", "-c", "echo hello from the talker; exec sleep 1000"]
        protocol = "none"
        log_file = "/dev/stdout"
    """))
    try:
        d.start()
        wait_until(lambda: "hello from the talker" in d.logs("talker"),
                   what="the line")
        assert d.stop() == 0
        assert d.proc is not None and d.proc.stdout is not None
        out = d.proc.stdout.read().decode()
        said = [ln for ln in out.splitlines() if "hello from the talker" in ln]
        assert len(said) == 1 and " talker#0[" in said[0] and said[0].endswith(
            "stdout: hello from the talker"), out
        assert not (d.state / "logs" / "talker.log").exists()
    finally:
        d.close()


def test_a_relative_log_file_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text("[agents.a]\ncommand = 'true'\nlog_file = 'a.log'\n")
    r = corral_run(["check-config", "--no-check", str(p)],
                   env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert (r.returncode, r.stderr) == (1, (
        f"corral: invalid config: {p}: agents.a: log_file 'a.log' is not an absolute path "
        "(or /dev/stdout, /dev/stderr)\n"))


def test_a_tenants_caller_may_not_name_a_log_file() -> None:
    """The daemon appends to it as root: a file anywhere, its lines the agent's."""
    spec = AgentSpec(name="a", command="true", tenant="t", cwd="/srv/t",
                     log_file="/etc/cron.d/x")
    assert refusal(spec, "t", TenantSpec(), "/srv/t") == (
        "log_file", "\"/etc/cron.d/x\" differs from tenant t's (none: its log directory)")
    spec.log_file = None
    assert refusal(spec, "t", TenantSpec(), "/srv/t") is None


# a line every 0.2 s, numbered, for as long as it runs
TICKER = "i=0; while :; do echo \"tick $i\"; i=$((i+1)); sleep 0.2; done"


def _numbers(text: str) -> list[int]:
    return [int(ln.rsplit(" ", 1)[1]) for ln in text.splitlines()
            if " stdout: tick " in ln]


def test_rotated_copies_are_gzipped_and_hold_every_line_in_order() -> None:
    tmp = shared_tmpdir()
    own = tmp / "own"
    own.mkdir()
    with talked(tmp, own, "log_backups = 9\nlog_compress = true"):
        # compressed on a thread of its own: done once no plain copy (or part) is left
        wait_until(lambda: sorted(p.name for p in own.iterdir()) == [
            "talker.log", "talker.log.1.gz", "talker.log.2.gz", "talker.log.3.gz"],
            what="three gzipped copies")
        text = "".join(gzip.decompress((own / f"talker.log.{n}.gz").read_bytes()).decode()
                       for n in (3, 2, 1)) + (own / "talker.log").read_text()
        said = [int(ln.split("line ")[1].split(" ")[0]) for ln in text.splitlines()
                if "of the talker" in ln]
        assert said == list(range(200))


def test_a_log_file_is_rotated_at_each_period_of_the_clock() -> None:
    tmp = shared_tmpdir()
    own = tmp / "own"
    own.mkdir()
    agents = textwrap.dedent(f"""
        [agents.ticker]
        command = ["sh", "-c", {json.dumps(TICKER)}]
        protocol = "none"
        log_file = "{own}/ticker.log"
        log_rotate_every = 1
        log_backups = 50
    """)
    with running_daemon(tmp, agents) as d:
        wait_until(lambda: (own / "ticker.log.3").exists(), what="three rotations")
        wait_until(lambda: max(_numbers(d.logs("ticker", lines=3)),
                               default=0) >= 25, what="more ticks")
        copies = sorted((p for p in own.iterdir() if p.name != "ticker.log"),
                        key=lambda p: -int(p.name.rsplit(".", 1)[1]))
        seconds: list[str] = []
        numbers: list[int] = []
        for p in [*copies, own / "ticker.log"]:
            stamps = {ln.split(" ", 1)[0][:19] for ln in p.read_text().splitlines()}
            # each file's lines are of one second of the clock, each file another's
            assert len(stamps) == 1, (p.name, p.read_text())
            seconds += stamps
            numbers += _numbers(p.read_text())
        assert seconds == sorted(set(seconds))
        assert numbers == list(range(len(numbers)))


def test_a_file_last_written_in_an_earlier_period_is_rotated_at_its_first_line(
        tmp_path: Path) -> None:
    """A daemon restarted after midnight rotates yesterday's file at its first line, and
    one restarted within the day appends to it."""
    day = 86400
    log = tmp_path / "a.log"
    log.write_text("yesterday's\n")
    os.utime(log, (time.time() - day, time.time() - day))
    f = RotatingFile(LogPlace(str(log), Rotation(max_bytes=10**6, backups=2, every=day)))
    f.turn(time.time())
    f.write(b"today's\n")
    f.close()
    assert (log.read_text(), (tmp_path / "a.log.1").read_text()) == (
        "today's\n", "yesterday's\n")
    f = RotatingFile(LogPlace(str(log), Rotation(max_bytes=10**6, backups=2, every=day)))
    f.turn(time.time())
    f.write(b"today's again\n")
    f.close()
    assert log.read_text() == "today's\ntoday's again\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.log", "a.log.1"]


def test_a_new_file_is_of_its_first_lines_period(tmp_path: Path) -> None:
    """A line of one second written in the next (a transition written a turn later, on a
    loaded host) begins a file of its own second, rotated at the next second's line: the
    file took the clock's second at its opening, and held lines of two (issue 72)."""
    log = tmp_path / "a.log"
    f = RotatingFile(LogPlace(str(log), Rotation(max_bytes=10**6, backups=2, every=1)))
    now = time.time()
    f.turn(now - 1)
    f.write(b"a second ago\n")
    f.turn(now)
    f.write(b"now\n")
    f.close()
    assert (log.read_text(), (tmp_path / "a.log.1").read_text()) == (
        "now\n", "a second ago\n")


def test_logs_rotate_now_and_a_follower_reads_on() -> None:
    tmp = shared_tmpdir()
    agents = textwrap.dedent(f"""
        [agents.ticker]
        command = ["sh", "-c", {json.dumps(TICKER)}]
        protocol = "none"
    """)
    with running_daemon(tmp, agents, extra="log_compress = true") as d:
        logs = d.state / "logs"
        follower = corral_popen(
            ["--socket", str(d.sock), "logs", "ticker",
             "-f", "-n", "0"], stdout=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)})
        try:
            assert follower.stdout is not None
            wait_until(lambda: d.ask("daemon.info")["followers"] == 1,
                       what="the follower attached")
            wait_until(lambda: "tick 3" in (logs / "ticker.log").read_text(), what="ticks")
            r = d.cli("logs", "--rotate", "ticker")
            assert (r.returncode, r.stdout, r.stderr) == (
                0, f"rotated {logs / 'ticker.log'}\n", "")
            wait_until(lambda: (logs / "ticker.log.1.gz").exists()
                       and not (logs / "ticker.log.1").exists(), what="the gzipped copy")
            before = _numbers(gzip.decompress((logs / "ticker.log.1.gz").read_bytes())
                              .decode())
            wait_until(lambda: len(_numbers((logs / "ticker.log").read_text())) >= 3,
                       what="ticks in the new file")
            after = _numbers((logs / "ticker.log").read_text())
            assert before and after[0] == before[-1] + 1
            # the follower saw the lines before the rotation and after it, none twice
            seen: list[int] = []
            for line in follower.stdout:
                seen += _numbers(line)
                if seen and seen[-1] >= after[2]:
                    break
            assert seen == list(range(seen[0], seen[-1] + 1)) and seen[0] <= before[-1]
        finally:
            follower.kill()
            follower.wait()
        # every file (the daemon's own too) when none is named
        r = d.cli("logs", "--rotate")
        assert r.returncode == 0
        assert sorted(r.stdout.splitlines()) == [f"rotated {logs / 'corral.log'}",
                                                 f"rotated {logs / 'ticker.log'}"]


def test_logs_rotate_refuses_what_it_cannot_rotate() -> None:
    tmp = shared_tmpdir()
    agents = '[agents.ticker]\ncommand = ["sleep", "1000"]\nprotocol = "none"\n'
    with running_daemon(tmp, agents) as d:
        r = d.cli("logs", "--rotate", "nope")
        assert (r.returncode, r.stdout) == (1, "")
        assert "no such agent: nope" in r.stderr
        r = d.cli("logs", "--rotate", "ticker#0")
        assert (r.returncode, r.stdout, r.stderr) == (1, "", (
            "corral: ticker#0: a log file is an agent's, not a replica's: name the agent\n"))
        r = d.cli("logs", "--rotate", "-f", "ticker")
        assert r.returncode == 2 and "--rotate rotates and returns: not with -f" in r.stderr
        assert sorted(p.name for p in (d.state / "logs").iterdir()) == [
            "corral.log", "ticker.log"]
