"""BCC's shared libraries on a read-only virtio disk, for the guest to load from RAM.

virtme-ng exports the guest root over 9p without caching (virtme/mkinitramfs.py mounts it with
fixed options), and under TCG every 9p request is slow: `import bcc` maps libbcc, libLLVM and
libclang-cpp (230 MB in bookworm) page by page over 9p, 30-50 s for the first process of a
boot and 7-10 s for each one after. The same files as one tar on a virtio-blk disk unpack into
the guest's tmpfs in about 6 s, and `import bcc` from there takes 2 s (measured in a 6.12 guest).
They are the root's own files, byte for byte: only where they are read from changes.
"""

import os
import tarfile
from pathlib import Path

from vmemtrace.errors import VmemtraceError
from vmemtrace.lab.steps import run, say, step

LIBBCC = "/usr/lib/x86_64-linux-gnu/libbcc.so.0"  # python3-bpfcc's libbcc (bcc/libbcc.py)
SERIAL = "vmemtrace-libs"  # the disk's virtio serial: how the guest finds it
GUEST_DIR = "/run/vmemtrace-libs"  # tmpfs in a virtme-ng guest
# Every process has these loaded before it imports bcc, and they must match the dynamic loader:
# the guest keeps its own.
KEEP = ("libc.so.6", "libm.so.6")


def library_paths(ldd_output: str) -> list[str]:
    """The resolved paths in `ldd` output ("libz.so.1 => /lib/x86_64-linux-gnu/libz.so.1
    (0x...)"), minus KEEP; vdso and the loader itself have no "=> /path"."""
    paths = []
    for line in ldd_output.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[1] == "=>" and parts[2].startswith("/"):
            if os.path.basename(parts[2]) not in KEEP:
                paths.append(parts[2])
    return paths


def disk_path(root: Path) -> Path:
    return root.with_name(root.name + ".bcc-libs.tar")


def ensure(root: Path) -> Path | None:
    """The tar of libbcc and the libraries it needs, built from the root once, and again after
    any package of the root changed (dpkg's status file is newer); None for a root without
    BCC, or one whose libraries cannot be listed."""
    libbcc = root / LIBBCC.lstrip("/")
    if not libbcc.exists():
        return None
    disk = disk_path(root)
    status = root / "var/lib/dpkg/status"
    newest = max(p.stat().st_mtime for p in (libbcc, status) if p.exists())
    if disk.exists() and disk.stat().st_mtime >= newest:
        return disk
    with step(f"packing BCC's libraries from {root} for the guests"):
        try:
            paths = [LIBBCC] + library_paths(run(["chroot", str(root), "ldd", LIBBCC],
                                                 f"ldd {LIBBCC} in {root}"))
            new = disk.with_name(disk.name + ".new")
            with tarfile.open(new, "w", dereference=True) as tar:
                for path in dict.fromkeys(paths):
                    tar.add(str(root / path.lstrip("/")), arcname=os.path.basename(path))
            new.rename(disk)
        except (VmemtraceError, OSError) as e:  # e.g. chroot as a user: slower, not wrong
            say(f"the guests load BCC's libraries over 9p ({e})")
            return None
    return disk


def qemu_opts(disk: Path | None) -> list[str]:
    if disk is None:
        return []
    return ["-drive", f"file={disk},if=none,id=vtlibs,format=raw,readonly=on",
            "-device", f"virtio-blk-pci,drive=vtlibs,serial={SERIAL}"]


def find_device(sys_block: Path = Path("/sys/block")) -> str | None:
    """In the guest: the virtio disk whose serial is SERIAL (sysfs, whether or not udev made a
    /dev/disk/by-id link for it)."""
    for dev in sorted(sys_block.glob("vd*")):
        try:
            if (dev / "serial").read_text().strip() == SERIAL:
                return f"/dev/{dev.name}"
        except OSError:
            continue
    return None
