"""A module whose import waits until the file $CORRAL_TEST_IMPORT_GATE names exists: a
server's preload slower than a test's wait for it (tests/test_warmforks.py)."""

import os
import time

while not os.path.exists(os.environ["CORRAL_TEST_IMPORT_GATE"]):
    time.sleep(0.05)  # (the gate is the test's: it opens it once it saw the wait fail)
