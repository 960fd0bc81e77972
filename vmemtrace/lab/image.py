"""The guest roots: Debian trees in the user's cache (bookworm, and trixie for 7.x kernels),
with the lab's kernels in them.

Kernels are unpacked into this tree (dpkg-deb, no maintainer scripts), never into the host's /boot:
a test lab must not touch the host's boot loader. Built once, then reused; a marker records the
recipe it was built from, so a changed recipe rebuilds it.
"""

import fcntl
import hashlib
import os
import shutil
import subprocess
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from vmemtrace.errors import VmemtraceError
from vmemtrace.kernel import config
from vmemtrace.lab import kernels, libdisk
from vmemtrace.lab.steps import run, say, step

MIRROR = "http://deb.debian.org/debian"
SECURITY = "http://deb.debian.org/debian-security"
# What the guest needs to create namespaces and run vmemtrace: ndctl/daxctl, kmod for modprobe,
# Debian's BCC (python3-bpfcc) and vmemtrace's own Python dependencies from Debian; a real
# Prometheus server to scrape the exporter, bpftrace as the benchmark's baseline, and bpftool to
# see which BPF programs are loaded; man-db and python3-venv for the tests that install the built
# .deb and wheel in a guest (tests/lab/test_lab_e2e_systemd.py).
PACKAGES = ("kmod", "udev", "procps", "python3", "python3-bpfcc", "ndctl", "daxctl",
            "python3-click", "python3-tabulate", "python3-prometheus-client", "prometheus",
            "bpftrace", "iproute2", "bpftool", "man-db", "python3-venv",
            # systemd as PID 1 for `lab --systemd` (the .deb's unit as a host runs it); the other
            # boots start virtme-ng's own init and never run it.
            "systemd-sysv")
# Per guest root, the archive suites its kernels come from (kernels.py says which root a kernel
# boots in). Only kernels are taken from the extra suites, by `apt-get download`, never installed
# with their dependencies: the root's own packages stay those of its suite.
SOURCES = {
    # 5.10 is only in bullseye; 6.12 for bookworm is in bookworm itself (and backports before).
    kernels.BOOKWORM: (
        f"deb {MIRROR} bookworm main",
        f"deb {MIRROR} bookworm-updates main",
        f"deb {SECURITY} bookworm-security main",
        f"deb {MIRROR} bookworm-backports main",
        f"deb {MIRROR} bullseye main",
        f"deb {SECURITY} bullseye-security main",
    ),
    # 7.x: trixie-backports; sid and experimental carry the newest series and release candidates.
    kernels.TRIXIE: (
        f"deb {MIRROR} trixie main",
        f"deb {MIRROR} trixie-updates main",
        f"deb {SECURITY} trixie-security main",
        f"deb {MIRROR} trixie-backports main",
        f"deb {MIRROR} sid main",
        f"deb {MIRROR} experimental main",
    ),
}
# Mount points for the project tree (read-only) and the results directory (read-write).
GUEST_SRC = "/opt/vmemtrace"
GUEST_OUT = "/var/lib/vmemtrace-out"
# Where the build tree of a kernel you built is mounted (read-only) for BCC.
GUEST_BUILD = "/opt/vmemtrace-build"

MARKER = ".vmemtrace-root"
KERNEL_MARKER = ".vmemtrace-installed"
# sid's and experimental's Release files expire within days; a mirror or snapshot that lags a
# little must not stop the lab (the packages are still checked against the archive's keys).
APT = ["apt-get", "-q", "-o", "APT::Sandbox::User=root", "-o", "Acquire::Check-Valid-Until=false"]


def recipe_id(suite: str) -> str:
    return hashlib.sha256("\n".join((suite,) + PACKAGES + SOURCES[suite] + ("v1",)).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class GuestKernel:
    release: str
    image: Path  # the bzImage on the host
    root: Path  # the guest root it boots in
    headers: Path | None = None  # a user-built kernel's build tree, mounted at GUEST_BUILD
    libraries: Path | None = None  # BCC's libraries disk of its root (libdisk.py), if made


# What the lab's cases need of a kernel: device-dax, and the pmem driver that makes its devices
# (Debian's -rt flavour builds neither).
DEVICE_DAX_CONFIG = ("DEV_DAX", "DEV_DAX_PMEM")


def device_dax_problem(kernel: GuestKernel, pmem_config: tuple[str, ...] = ()) -> str | None:
    """Why this kernel cannot run the lab's namespace cases, as its config tells before it
    boots; None where it can, or where no config says. pmem_config: what the guest's kind of
    persistent memory needs beyond device-dax (CXL regions: the CXL drivers)."""
    options, source = config.read_config(kernel.root, kernel.release)
    missing = [f"CONFIG_{o}" for o in DEVICE_DAX_CONFIG if config.enabled(options, o) is False]
    if missing:
        return (f"{kernel.release} is built without {' and '.join(missing)} ({source}): it has "
                "no device-dax to verify")
    missing = [f"CONFIG_{o}" for o in pmem_config if config.enabled(options, o) is False]
    if missing:
        return (f"{kernel.release} is built without {', '.join(missing)} ({source}): it cannot "
                "make the persistent memory this lab asked for")
    return None


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "vmemtrace"


def ensure_writable(cache: Path) -> None:
    try:
        cache.mkdir(parents=True, exist_ok=True)
        # a name of its own: a lab started beside this one probes at the same moment
        with tempfile.NamedTemporaryFile(dir=cache, prefix=".write-test-"):
            pass
    except OSError as e:
        raise VmemtraceError(f"the lab cache {cache} is not writable: {e.strerror}") from None


@contextmanager
def locked(cache: Path):
    """One lab at a time builds the cache; a second waits rather than corrupting it."""
    with open(cache / "lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def _chroot(root: Path, *cmd: str, failure: str) -> str:
    return run(["chroot", str(root), *cmd], failure)


def root_dir(cache: Path, suite: str) -> Path:
    """The bookworm root keeps the name it always had; others are named after their suite."""
    return cache / ("root" if suite == kernels.BOOKWORM else f"root-{suite}")


def ensure_root(cache: Path, suite: str = kernels.BOOKWORM) -> Path:
    root = root_dir(cache, suite)
    marker = root / MARKER
    if marker.exists() and marker.read_text().strip() == recipe_id(suite):
        return root
    if os.geteuid() != 0:
        raise VmemtraceError("building the lab's guest root needs root (debootstrap, chroot)")
    if shutil.which("debootstrap") is None:
        raise VmemtraceError("debootstrap not found (apt install debootstrap)")
    new = root.with_name(root.name + ".new")
    _remove_tree(new)
    with step(f"building the guest root in {root} (debootstrap {suite}, about a minute)"):
        run(["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}",
             suite, str(new), MIRROR],
            f"debootstrap {suite} failed (is the Debian archive reachable?)")
        (new / "etc/apt/sources.list").write_text("\n".join(SOURCES[suite]) + "\n")
        _chroot(new, *APT, "update", failure="cannot reach the Debian archive (apt-get update)")
        for mount_point in (GUEST_SRC, GUEST_OUT, GUEST_BUILD):
            (new / mount_point.lstrip("/")).mkdir(parents=True, exist_ok=True)
        (new / MARKER).write_text(recipe_id(suite) + "\n")
    _remove_tree(root)
    new.rename(root)
    return root


def _remove_tree(tree: Path) -> None:
    """rmtree, but never through a mount point: a directory bind-mounted into the root by hand
    (the project tree at /opt/vmemtrace, /proc) would be emptied with it."""
    if not tree.exists():
        return
    mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
    inside = [m for m in mounts if m == str(tree) or m.startswith(str(tree) + "/")]
    if inside:
        raise VmemtraceError(f"cannot replace {tree}: {inside[0]} is mounted inside it "
                             "(unmount it first)")
    shutil.rmtree(tree)


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


def _depends(root: Path, package: str) -> list[str]:
    out = _chroot(root, "apt-cache", "depends", package, failure=f"apt-cache depends {package}")
    return [line.split(":", 1)[1].strip() for line in out.splitlines()
            if line.strip().startswith("Depends:")]


def kernel_packages(root: Path, release: str) -> list[str]:
    """The image and headers packages of one build, and every package of that same build they
    depend on: Debian 7.x's linux-image-REL is a meta package over linux-binary-REL and
    linux-modules-REL; the headers depend on linux-headers-ABI-common (the include tree)."""
    abi = kernels.abi_of_release(release)
    todo, seen = [f"linux-image-{release}", f"linux-headers-{release}"], []
    while todo:
        package = todo.pop(0)
        if package in seen:
            continue
        seen.append(package)
        todo += [d for d in _depends(root, package) if d.startswith("linux-") and abi in d]
    return seen


def image_path(root: Path, release: str) -> Path | None:
    """/boot/vmlinuz-REL, or /usr/lib/modules/REL/vmlinuz where Debian 7.x puts it."""
    for path in (root / "boot" / f"vmlinuz-{release}", root / "usr/lib/modules" / release / "vmlinuz"):
        if path.exists():
            return path
    return None


def available(root: Path, package: str) -> bool:
    """Whether the root's package lists know this package (some version of it)."""
    out = _chroot(root, "apt-cache", "showpkg", package, failure=f"apt-cache showpkg {package}")
    versions = out.split("Versions:", 1)[1].split("Reverse Depends:")[0] if "Versions:" in out else ""
    return bool(versions.strip())


def resolve_release(root: Path, spec: kernels.KernelSpec) -> str:
    if spec.series is not None:
        names = _chroot(root, "apt-cache", "pkgnames", "linux-image-",
                        failure="cannot list the archive's kernels").splitlines()
        return kernels.newest_abi(spec.series, names)
    if not available(root, spec.package):
        raise VmemtraceError(
            f"unknown kernel package {spec.package}: the lab's {spec.suite} guest root "
            f"({', '.join(s.split()[2] for s in SOURCES[spec.suite])}) does not carry it")
    return kernels.release_of_package(spec.package)


def install_debian_kernel(root: Path, spec: kernels.KernelSpec, do_refresh: bool = False) -> GuestKernel:
    if do_refresh:
        refresh(root)
    release = resolve_release(root, spec)
    moddir = root / "lib/modules" / release
    if (moddir / KERNEL_MARKER).exists() and image_path(root, release):
        return GuestKernel(release, image_path(root, release), root)
    debs = root / "var/cache/vmemtrace-debs"
    shutil.rmtree(debs, ignore_errors=True)
    debs.mkdir(parents=True)
    packages = kernel_packages(root, release)
    with step(f"installing {release} into the guest root ({', '.join(packages)})"):
        run(["chroot", str(root), "sh", "-c",
             f"cd /var/cache/vmemtrace-debs && {' '.join(APT)} download {' '.join(packages)}"],
            f"cannot download {release} from the Debian archive")
        for deb in sorted(debs.glob("*.deb")):
            _unpack(root, deb)
        _chroot(root, "depmod", release, failure=f"depmod {release}")
        shutil.rmtree(debs, ignore_errors=True)
        if image_path(root, release) is None:
            raise VmemtraceError(f"{release}: its packages ({', '.join(packages)}) hold no vmlinuz")
        (moddir / KERNEL_MARKER).write_text(release + "\n")
    return GuestKernel(release, image_path(root, release), root)


def install_user_kernel(root: Path, spec: kernels.KernelSpec) -> GuestKernel:
    """A kernel the user built: its modules are copied into the guest root under their name, and
    their `build` link points at GUEST_BUILD, where the guest mounts the user's build tree."""
    release = spec.modules.name
    target = root / "lib/modules" / release
    if target.resolve() == spec.modules.resolve():
        return GuestKernel(release, spec.image, root)  # the guest root's own kernel and headers
    if (target / KERNEL_MARKER).exists():
        raise VmemtraceError(f"--modules {spec.modules}: the lab root {root} holds Debian's "
                             f"{release} already; use --kernel {release.rsplit('-', 1)[0]}-style "
                             "series or package names for it, or another cache (XDG_CACHE_HOME)")
    with step(f"copying {release} and its modules into the guest root"):
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(spec.modules, target, symlinks=True,
                        ignore=lambda d, names: ["build", "source"] if Path(d) == spec.modules else [])
        (target / "build").symlink_to(GUEST_BUILD)
        _chroot(root, "depmod", release, failure=f"depmod {release}")
        # virtme-ng looks for a kernel's modules in the tree its image lies in: an image outside
        # the guest root would boot without them (no initramfs, no 9p root).
        image = root / "boot" / f"vmlinuz-{release}"
        image.parent.mkdir(exist_ok=True)
        shutil.copy(spec.image, image)
    return GuestKernel(release, image, root, headers=spec.headers)


def ensure_kernel(root: Path, spec: kernels.KernelSpec, do_refresh: bool = False) -> GuestKernel:
    if spec.image is not None:
        return install_user_kernel(root, spec)
    try:
        return install_debian_kernel(root, spec, do_refresh)
    except VmemtraceError:
        if do_refresh:
            raise
        say("retrying with fresh package lists")
        return install_debian_kernel(root, spec, True)


def prepare(specs, do_refresh: bool = False, cache: Path | None = None) -> list[GuestKernel]:
    """One GuestKernel per spec, each in the guest root of its suite, building what the cache
    lacks."""
    cache = cache or cache_dir()
    ensure_writable(cache)
    with locked(cache):
        roots = [ensure_root(cache, s.suite) for s in specs]
        disks = {root: libdisk.ensure(root) for root in dict.fromkeys(roots)}
        return [replace(ensure_kernel(root, s, do_refresh), libraries=disks[root])
                for root, s in zip(roots, specs)]
