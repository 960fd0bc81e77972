#!/bin/sh
# Install everything vmemtrace and its lab need on a Debian 12 host (run as root), into .venv.
# Idempotent: a second run only checks. The lab's guest root and kernels are built later, on
# first use, under ${XDG_CACHE_HOME:-~/.cache}/vmemtrace — nothing is installed into /boot.
set -eu
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
    echo "install.sh: run as root (apt-get, and the lab's debootstrap/chroot)" >&2
    exit 2
fi

# qemu (TCG guest), debootstrap (guest root), kmod (depmod for virtme-ng), busybox (virtme-ng's
# initramfs), Debian's BCC for Python (the PyPI package "bcc" is unrelated), venv; prometheus
# for promtool (the alert rules' tests), systemd for systemd-analyze (the unit's tests), shellcheck
# (lint), openssl (a test certificate), man-db (the man pages' test); debhelper, dh-python,
# pybuild-plugin-pyproject and the Python modules the .deb depends on (scripts/build-deb).
PKGS="qemu-system-x86 debootstrap kmod busybox-static python3-venv python3-bpfcc prometheus systemd shellcheck openssl man-db
debhelper dh-python pybuild-plugin-pyproject python3-all python3-setuptools python3-click python3-tabulate python3-prometheus-client"
missing=""
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    apt-get update -q
    # shellcheck disable=SC2086 # a list of package names, split on purpose
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing
    case " $missing " in
    *" prometheus "*)
        # Only promtool is wanted: where systemd runs, Debian has just started a server.
        if [ -d /run/systemd/system ]; then systemctl disable --now prometheus || true; fi ;;
    esac
fi

# Debian's python3 so that the venv sees python3-bpfcc through --system-site-packages.
if [ ! -x .venv/bin/python ]; then
    /usr/bin/python3 -m venv --system-site-packages .venv
fi
.venv/bin/pip install -q --disable-pip-version-check -e '.[lab,test]'
echo "install.sh: ready: $(.venv/bin/vmemtrace --version)" >&2
