"""The per-path module counts of issue 86 (tests/test_house.py): which corral modules'
functions run in a real daemon during a path, beyond those it runs while idle."""
