"""Writes N numbered lines to stderr as fast as it can (built first, then written in
1 MiB blocks, so the reader, not this program, is what is measured), then serves as a
corral worker (under supervisord it then just waits on stdin)."""

import os
import sys
import time

n = int(sys.argv[1])
payload = b"".join(b"line %d\n" % i for i in range(n))
os.write(2, b"start %.6f\n" % time.time())  # the clock both peers are timed from
view = memoryview(payload)
while view:
    view = view[os.write(2, view[: 1 << 20]) :]

from corral.worker import run  # noqa: E402

run(lambda task, ctx: task)
