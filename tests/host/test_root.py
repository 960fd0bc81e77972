"""Tests that need root on the machine running them, and no guest: the host's own audit as root,
dropping privileges, bind mounts, a network namespace. Seconds each; `./scripts/test.sh` runs
them as root (CI does), `pytest tests/unit` stays root-free."""

import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import run_cli
from vmemtrace.errors import VmemtraceError


@pytest.fixture(autouse=True)
def as_root():
    assert os.geteuid() == 0, "tests/host needs root: run it through ./scripts/test.sh as root"


def test_audit_on_this_host_says_why_it_cannot_walk():
    """This host has no /proc/kcore (or, elsewhere, no dax device): one line, exit 2."""
    res = run_cli("audit")
    assert res.returncode == 2
    last = res.stderr.strip().splitlines()[-1]
    assert "Traceback" not in res.stderr
    if not Path("/proc/kcore").exists():
        assert last == ("vmemtrace: cannot walk the page tables: no /proc/kcore "
                        "(kernel built without CONFIG_PROC_KCORE)")


def test_audit_as_an_unprivileged_user_is_refused_in_one_line():
    import shutil
    import subprocess
    import sys

    assert shutil.which("setpriv"), "setpriv is part of util-linux"
    res = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                          sys.executable, "-m", "vmemtrace", "audit"], capture_output=True,
                         text=True, cwd="/")
    assert res.returncode == 2, res.stderr
    assert res.stderr.strip() == ("vmemtrace: the page-table walk needs root "
                                  "(it reads /proc/kcore)"), res.stderr


def test_the_cache_is_never_removed_through_a_mount(tmp_path):
    """A tree with something mounted inside (a bind mount of the project, /proc for a chroot)
    is refused, never emptied through the mount."""
    from vmemtrace.lab import image

    tree = tmp_path / "root"
    (tree / "proc").mkdir(parents=True)
    keep = tmp_path / "keep"
    keep.mkdir()
    (keep / "precious").write_text("x")
    subprocess.run(["mount", "--bind", str(keep), str(tree / "proc")], check=True)
    try:
        with pytest.raises(VmemtraceError, match="is mounted inside it"):
            image._remove_tree(tree)
    finally:
        subprocess.run(["umount", str(tree / "proc")], check=True)
    assert (keep / "precious").exists()
    image._remove_tree(tree)
    assert not tree.exists()


def test_lab_without_archive(tmp_path):
    """A fresh cache and no network at all (a new network namespace): one clear line."""
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path))
    proc = subprocess.run(["unshare", "--net", "--", os.sys.executable, "-m", "vmemtrace", "lab"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("vmemtrace: debootstrap bookworm failed (is the Debian archive reachable?)"), proc.stderr
