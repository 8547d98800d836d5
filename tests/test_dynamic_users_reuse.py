"""An attacker's pass over dynamic users (issue 88): a uid of `[supervisor] dynamic_uids`
is an agent's for the daemon's life, and may be another's after a restart (an agent
removed, or the same agents asked for their uids in another order). The state directory
its earlier holder left was still that uid's, its parent passable by every uid: the new
holder read it by its name."""

from __future__ import annotations

import os
import shutil
import stat

import pytest

from corral.supervisor.dynamicusers import homes_of

from .daemon_harness import Daemon, shared_tmpdir
from .test_daemon_cli import wait_until
from .test_dynamic_users import plain, uid_of

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="dynamic users: the daemon "
                                "runs agents as other uids only as root")

ONE_UID = "dynamic_uids = [61184, 61184]"  # one uid: each run's only agent is given it


@pytest.mark.deadline(120)
def test_a_uid_given_again_after_a_restart_reads_nothing_its_earlier_holder_left() -> None:
    tmp = shared_tmpdir()
    homes = homes_of(tmp / "state")
    try:
        old = plain("old", 'echo secret > "$STATE_DIRECTORY/secret" && '
                    'mkdir "$STATE_DIRECTORY/deep" && echo deeper > '
                    '"$STATE_DIRECTORY/deep/secret" && touch "$STATE_DIRECTORY/done"; '
                    "exec sleep 1000")
        d = Daemon(tmp, old, extra=ONE_UID)
        try:
            d.start()
            wait_until((homes / "old" / "done").exists, timeout=30, what="old's secret")
            assert uid_of(d.status()["old#0"]["pid"]) == 61184
            assert d.stop() == 0
        finally:
            d.close()
        # the operator removes `old`; `new` is given its uid and tries to read what it left
        probe = (f'{{ cat {homes}/old/secret 2>&1; cat {homes}/old/deep/secret 2>&1; '
                 f'ls {homes}/old 2>&1; }} > "$STATE_DIRECTORY/report.tmp"; '
                 'mv "$STATE_DIRECTORY/report.tmp" "$STATE_DIRECTORY/report"; '
                 "exec sleep 1000")
        (tmp / "notify.sock").unlink()  # (the harness's, of the daemon before)
        d = Daemon(tmp, plain("new", probe), extra=ONE_UID)
        try:
            d.start()
            report = homes / "new" / "report"
            wait_until(report.exists, timeout=30, what="new's report")
            assert uid_of(d.status()["new#0"]["pid"]) == 61184
            assert report.read_text().splitlines() == [
                f"cat: {homes}/old/secret: Permission denied",
                f"cat: {homes}/old/deep/secret: Permission denied",
                f"ls: cannot open directory '{homes}/old': Permission denied"]
            # what old left is kept, no uid's but root's, until old is given a uid again
            st = os.stat(homes / "old")
            assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, 0, 0o700)
            assert (homes / "old" / "secret").read_text() == "secret\n"
            assert d.stop() == 0
        finally:
            d.close()
        # old back (new removed): its directory, and all in it, its uid's again
        (tmp / "notify.sock").unlink()
        d = Daemon(tmp, plain("old", 'cat "$STATE_DIRECTORY/deep/secret" > '
                              '"$STATE_DIRECTORY/again.tmp" && echo more >> '
                              '"$STATE_DIRECTORY/secret" && mv "$STATE_DIRECTORY/again.tmp" '
                              '"$STATE_DIRECTORY/again"; exec sleep 1000'), extra=ONE_UID)
        try:
            d.start()
            wait_until((homes / "old" / "again").exists, timeout=30, what="old's read")
            assert (homes / "old" / "again").read_text() == "deeper\n"
            assert (homes / "old" / "secret").read_text() == "secret\nmore\n"
            assert os.stat(homes / "new").st_uid == 0
            assert d.stop() == 0
        finally:
            d.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
