#!/bin/sh
# The whole test suite: installs what it needs, then unit tests and the lab's end-to-end tests,
# which boot Debian's 5.10, 6.1 and 6.12 kernels in qemu (the first run builds the lab cache).
set -eu
cd "$(dirname "$0")/.."
./scripts/install.sh
exec .venv/bin/python -m pytest -v -rs "$@" tests
