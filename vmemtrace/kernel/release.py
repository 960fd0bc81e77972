"""Kernel release strings, e.g. "6.12.95+deb12-amd64" or "5.10.0-32-amd64"."""

import re
from pathlib import Path

_VERSION = re.compile(r"^(\d+)\.(\d+)(?:\.(\d+))?")


def parse_version(release: str) -> tuple:
    """(major, minor, patch) of a release string; patch 0 when absent.

    Debian's ABI names ("6.1.0-56-amd64") carry 0 as patch level: only major.minor is reliable.
    """
    m = _VERSION.match(release)
    if not m:
        raise ValueError(f"not a kernel release: {release!r}")
    return (int(m.group(1)), int(m.group(2)), int(m.group(3) or 0))


def read_release(root: Path) -> str:
    return (root / "proc/sys/kernel/osrelease").read_text(errors="replace").strip()
