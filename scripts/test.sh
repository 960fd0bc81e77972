#!/bin/sh
# The whole test suite: installs what it needs, then unit tests and the lab's end-to-end tests,
# which boot Debian's 5.10, 6.1, 6.12 and 7.3 kernels in qemu (the first run builds the lab cache).
set -eu
cd "$(dirname "$0")/.."
./scripts/install.sh
# Lint first: seconds, where the suite takes half an hour.
.venv/bin/ruff check vmemtrace tests bench scripts/record-fixtures scripts/build-man  # pyproject.toml [tool.ruff]
.venv/bin/mypy  # the pure layer: pyproject.toml [tool.mypy]
shellcheck scripts/*.sh scripts/build-deb .ci/run
# Each test line shows its duration: a CI run cut off by its time limit still shows where time went.
pytest() { .venv/bin/python -m pytest -v -rs -o console_output_style=times "$@"; }
# Arguments name what to run instead of the whole suite (e.g. tests/unit, or a lab test by -k).
if [ $# -gt 0 ]; then pytest "$@"; exit; fi
# The unit tests first (a minute, no guest): a failure there shows before the lab's half hour.
pytest -n 2 tests/unit
pytest tests/host
# The lab in two lanes at once, each guest with one virtual CPU: a TCG vCPU takes a host core
# while it runs, and guests of two vCPUs side by side on two cores stall each other (a vCPU spins
# on a lock whose holder's thread is not running); docs/adding.md has the measurements. Lane "a"
# takes the modules LANE_A names, lane "b" every other one (a new module included) but those SMP
# names, which need two vCPUs (each module says why) and run alone afterwards; the split evens
# out measured times. Each line says its lane; each lane leaves its exit status in a file (sh has
# no pipefail).
status=$(mktemp -d)
trap 'rm -rf "$status"' EXIT
# Background jobs of a script ignore Ctrl-C: a stop of the script stops every lane and its guest.
trap 'trap - INT TERM; kill 0; exit 130' INT TERM
lane() {
    name=$1; shift
    # a lane is a subshell of its own: the export stays in it
    { export VMEMTRACE_LAB_CPUS=1; rc=0; pytest -p no:cacheprovider "$@" || rc=$?
      echo "$rc" > "$status/$name"; } 2>&1 | sed -u "s/^/[$name] /"
}
LANE_A="tests/lab/test_lab_e2e.py tests/lab/test_lab_e2e_systemd.py"
SMP="tests/lab/test_lab_e2e_nfit.py tests/lab/test_lab_e2e_caps.py"
# shellcheck disable=SC2086 # lists of paths, split on purpose
lane a $LANE_A &
# shellcheck disable=SC2046,SC2086
lane b tests/lab $(printf -- '--ignore=%s ' $LANE_A $SMP) &
wait
smp=0
# shellcheck disable=SC2086
pytest $SMP || smp=$?
[ "$(cat "$status/a")" = 0 ] && [ "$(cat "$status/b")" = 0 ] && [ "$smp" = 0 ]
