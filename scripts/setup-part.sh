# Sourced by test.sh: a part of the set-up installed beside the tests. Each part holds an
# exclusive flock on $CORRAL_SETUP_PARTS/NAME.lock, taken here before it starts, until it
# ends, and leaves its exit status in NAME.status as it ends: a test that needs the part
# waits for the lock at its setup (tests/setup_parts.py). The script runs with errexit in
# a shell of its own (not on the left of `&&`, where a sourced script would run on past
# its own failures), niced: the tests' collection, and the tests that need no part, go
# first (a fresh clone's collection took 42 s of wall beside the parts un-niced, 16 s of
# CPU: bench/RESULTS.md); $! is the part's pid.
part() {  # part NAME SCRIPT
    exec 9>"$CORRAL_SETUP_PARTS/$1.lock"
    flock 9
    { nice -n 10 bash -ec '. "$1"' part "$2"; echo $? >"$CORRAL_SETUP_PARTS/$1.status"; } &
    # held by the part alone from here (and what it starts): not by pytest
    exec 9>&-
}
