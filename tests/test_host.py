"""`vmemtrace check` on the machine running the tests, against what its own config says."""

import gzip
import json
import os
from pathlib import Path

from tests.conftest import run_cli


def host_option(name):
    """Read the host's config independently of vmemtrace's reader."""
    for path in (Path("/proc/config.gz"), Path(f"/boot/config-{os.uname().release}")):
        if path.exists():
            data = path.read_bytes()
            text = gzip.decompress(data).decode() if path.suffix == ".gz" else data.decode()
            return f"CONFIG_{name}=y" in text.splitlines()
    return None


def test_check_on_this_host():
    res = run_cli("check", "--json")
    doc = json.loads(res.stdout)
    assert doc["kernel"] == os.uname().release
    if host_option("KPROBES") is False:
        # This project's machines: a Firecracker guest built without kprobes (lab-notes.md).
        assert res.returncode == 2
        assert res.stderr.count("\n") == 1, res.stderr
        assert "CONFIG_KPROBES" in res.stderr
        assert doc["can_trace"] is False
    else:
        assert res.returncode == (0 if doc["can_trace"] else 2)


def test_check_table_is_readable():
    res = run_cli("check")
    assert "probe target" in res.stdout and "memmap_init_zone_device" in res.stdout
    assert res.stderr.startswith("vmemtrace:") or res.returncode == 0
