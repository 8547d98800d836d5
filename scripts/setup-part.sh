# Sourced by test.sh: a part of the set-up installed beside the tests. Each part holds an
# exclusive flock on $CORRAL_SETUP_PARTS/NAME.lock, taken here before it starts, until it
# ends, and leaves its exit status in NAME.status as it ends: a test that needs the part
# waits for the lock at its setup (tests/setup_parts.py). The script runs with errexit in
# a shell of its own (not on the left of `&&`, where a sourced script would run on past
# its own failures); $! is the part's pid.
part() {  # part NAME SCRIPT
    exec 9>"$CORRAL_SETUP_PARTS/$1.lock"
    flock 9
    { bash -ec '. "$1"' part "$2"; echo $? >"$CORRAL_SETUP_PARTS/$1.status"; } &
    # held by the part alone from here (and what it starts): not by pytest
    exec 9>&-
}
