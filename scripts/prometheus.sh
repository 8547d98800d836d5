# Sourced by test.sh (issue 21: being built).
