"""A module whose import says so (tests/test_warmforks.py): the importing process's pid, a
line appended to the file $CORRAL_TEST_IMPORT_SAID names."""

import os

with open(os.environ["CORRAL_TEST_IMPORT_SAID"], "a") as said:
    said.write(f"{os.getpid()}\n")
