"""The guest root: a Debian bookworm tree in the user's cache, with the lab's kernels in it.

Kernels are unpacked into this tree (dpkg-deb, no maintainer scripts), never into the host's /boot:
a test lab must not touch the host's boot loader. Built once, then reused; a marker records the
recipe it was built from, so a changed recipe rebuilds it.
"""

import fcntl
import hashlib
import os
import shutil
import subprocess
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from vmemtrace.errors import VmemtraceError
from vmemtrace.lab import kernels
from vmemtrace.lab.steps import run, say, step

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
# What the guest needs to create namespaces and run vmemtrace: ndctl/daxctl, kmod for modprobe,
# Debian's BCC (python3-bpfcc) and vmemtrace's own Python dependencies from Debian; a real
# Prometheus server to scrape the exporter, and bpftrace as the benchmark's baseline.
PACKAGES = ("kmod", "udev", "procps", "python3", "python3-bpfcc", "ndctl", "daxctl",
            "python3-click", "python3-tabulate", "python3-prometheus-client", "prometheus",
            "bpftrace", "iproute2")
# 5.10 is only in bullseye; 6.12 for bookworm is in bookworm itself (and backports before).
SOURCES = (
    f"deb {MIRROR} bookworm main",
    f"deb {MIRROR} bookworm-updates main",
    "deb http://deb.debian.org/debian-security bookworm-security main",
    f"deb {MIRROR} bookworm-backports main",
    f"deb {MIRROR} bullseye main",
    "deb http://deb.debian.org/debian-security bullseye-security main",
)
# Mount points for the project tree (read-only) and the results directory (read-write).
GUEST_SRC = "/opt/vmemtrace"
GUEST_OUT = "/var/lib/vmemtrace-out"

MARKER = ".vmemtrace-root"
KERNEL_MARKER = ".vmemtrace-installed"
RECIPE_ID = hashlib.sha256("\n".join((SUITE,) + PACKAGES + SOURCES + ("v1",)).encode()).hexdigest()[:16]
APT = ["apt-get", "-q", "-o", "APT::Sandbox::User=root"]


@dataclass(frozen=True)
class GuestKernel:
    release: str
    image: Path  # the bzImage on the host


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "vmemtrace"


def ensure_writable(cache: Path) -> None:
    try:
        cache.mkdir(parents=True, exist_ok=True)
        probe = cache / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise VmemtraceError(f"the lab cache {cache} is not writable: {e.strerror}")


@contextmanager
def locked(cache: Path):
    """One lab at a time builds the cache; a second waits rather than corrupting it."""
    with open(cache / "lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def _chroot(root: Path, *cmd: str, failure: str) -> str:
    return run(["chroot", str(root), *cmd], failure)


def ensure_root(cache: Path) -> Path:
    root = cache / "root"
    marker = root / MARKER
    if marker.exists() and marker.read_text().strip() == RECIPE_ID:
        return root
    if os.geteuid() != 0:
        raise VmemtraceError("building the lab's guest root needs root (debootstrap, chroot)")
    if shutil.which("debootstrap") is None:
        raise VmemtraceError("debootstrap not found (apt install debootstrap)")
    new = cache / "root.new"
    shutil.rmtree(new, ignore_errors=True)
    with step(f"building the guest root in {root} (debootstrap {SUITE}, about a minute)"):
        run(["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}",
             SUITE, str(new), MIRROR],
            "debootstrap failed (is the Debian archive reachable?)")
        (new / "etc/apt/sources.list").write_text("\n".join(SOURCES) + "\n")
        _chroot(new, *APT, "update", failure="cannot reach the Debian archive (apt-get update)")
        for mount_point in (GUEST_SRC, GUEST_OUT):
            (new / mount_point.lstrip("/")).mkdir(parents=True, exist_ok=True)
        (new / MARKER).write_text(RECIPE_ID + "\n")
    shutil.rmtree(root, ignore_errors=True)
    new.rename(root)
    return root


def refresh(root: Path) -> None:
    with step("refreshing the guest's package lists"):
        _chroot(root, *APT, "update", failure="cannot reach the Debian archive (apt-get update)")


def _unpack(root: Path, deb: Path) -> None:
    """dpkg-deb into the tree, keeping merged-/usr symlinks (/lib -> usr/lib) intact."""
    data = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
    tar = subprocess.run(["tar", "-x", "--keep-directory-symlink", "-C", str(root)],
                         stdin=data.stdout, capture_output=True, text=True)
    data.stdout.close()
    if data.wait() != 0 or tar.returncode != 0:
        raise VmemtraceError(f"cannot unpack {deb.name}: {tar.stderr.strip() or 'dpkg-deb failed'}")


def _headers_packages(root: Path, headers: str) -> list:
    """linux-headers-X-amd64 and the linux-headers-*-common it depends on (the include tree)."""
    out = _chroot(root, "apt-cache", "depends", headers, failure=f"apt-cache depends {headers}")
    deps = [line.split(":", 1)[1].strip() for line in out.splitlines()
            if line.strip().startswith("Depends: linux-headers-")]
    return [headers] + deps


def install_debian_kernel(root: Path, series: str, do_refresh: bool = False) -> GuestKernel:
    if do_refresh:
        refresh(root)
    names = _chroot(root, "apt-cache", "pkgnames", "linux-image-",
                    failure="cannot list the archive's kernels").splitlines()
    release = kernels.newest_abi(series, names)
    moddir = root / "lib/modules" / release
    image = root / "boot" / f"vmlinuz-{release}"
    if (moddir / KERNEL_MARKER).exists() and image.exists():
        return GuestKernel(release, image)
    debs = root / "var/cache/vmemtrace-debs"
    shutil.rmtree(debs, ignore_errors=True)
    debs.mkdir(parents=True)
    packages = [f"linux-image-{release}"] + _headers_packages(root, f"linux-headers-{release}")
    with step(f"installing {release} into the guest root ({', '.join(packages)})"):
        run(["chroot", str(root), "sh", "-c",
             f"cd /var/cache/vmemtrace-debs && {' '.join(APT)} download {' '.join(packages)}"],
            f"cannot download {release} from the Debian archive")
        for deb in sorted(debs.glob("*.deb")):
            _unpack(root, deb)
        _chroot(root, "depmod", release, failure=f"depmod {release}")
        shutil.rmtree(debs, ignore_errors=True)
        (moddir / KERNEL_MARKER).write_text(release + "\n")
    return GuestKernel(release, image)


def install_user_kernel(root: Path, spec: kernels.KernelSpec) -> GuestKernel:
    """A kernel the user built: its modules are copied into the guest root under their name."""
    release = spec.modules.name
    target = root / "lib/modules" / release
    if target.resolve() == spec.modules.resolve():
        return GuestKernel(release, spec.image)  # already the guest root's own modules
    with step(f"copying modules of {release} into the guest root"):
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(spec.modules, target, symlinks=True)
        _chroot(root, "depmod", release, failure=f"depmod {release}")
    return GuestKernel(release, spec.image)


def ensure_kernel(root: Path, spec: kernels.KernelSpec, do_refresh: bool = False) -> GuestKernel:
    if spec.series is None:
        return install_user_kernel(root, spec)
    try:
        return install_debian_kernel(root, spec.series, do_refresh)
    except VmemtraceError:
        if do_refresh:
            raise
        say("retrying with fresh package lists")
        return install_debian_kernel(root, spec.series, True)


def prepare(specs, do_refresh: bool = False, cache: Optional[Path] = None):
    """The guest root and one GuestKernel per spec, building what the cache lacks."""
    cache = cache or cache_dir()
    ensure_writable(cache)
    with locked(cache):
        root = ensure_root(cache)
        return root, [ensure_kernel(root, s, do_refresh) for s in specs]
