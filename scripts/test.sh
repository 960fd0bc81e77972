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
pytest tests/host tests/lab
