"""Kernel specs: a Debian series or package resolved from the archive at run time, or a kernel
you built.

Each Debian kernel boots in the guest root of a suite that can build for it (image.py): the
bookworm root (with bullseye and bookworm-backports) up to the 6.12 series, the trixie root
(with trixie-backports, sid and experimental; BCC 0.31) for everything newer.
"""

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from vmemtrace.errors import VmemtraceError

BOOKWORM, TRIXIE = "bookworm", "trixie"


@dataclass(frozen=True)
class Series:
    """A Debian kernel series (x86_64, generic flavour). The ABI part of the release changes
    with every upload, so the newest is looked up when the lab runs, never written down here."""

    name: str
    release: "re.Pattern"  # over package names; group 1 the release without "-amd64"
    suite: str  # the guest root it boots in


SERIES = {s.name: s for s in (
    Series("5.10", re.compile(r"^linux-image-(5\.10\.0-\d+)-amd64$"), BOOKWORM),  # bullseye
    Series("6.1", re.compile(r"^linux-image-(6\.1\.0-\d+)-amd64$"), BOOKWORM),
    Series("6.12", re.compile(r"^linux-image-(6\.12\.\d+\+deb12)-amd64$"), BOOKWORM),
    # trixie-backports today (docs/kernels.md: a meta package over linux-binary-/linux-modules-).
    Series("7.3", re.compile(r"^linux-image-(7\.3\.\d+\+deb\d+)-amd64$"), TRIXIE),
)}

PACKAGE = re.compile(r"^linux-image-(?P<release>\d+\.\d+[0-9A-Za-z.+~-]*-amd64)$")
# Releases of Debian 12 and older: the bookworm root's sources carry them.
_OLD_RELEASE = re.compile(r"^(5\.10\.0-\d+|6\.1\.0-\d+|6\.\d+\.\d+\+(deb1[12]|bpo)|6\.\d+\.\d+-\d+~bpo1[12]\+\d+)")


@dataclass(frozen=True)
class KernelSpec:
    spec: str  # what the user typed
    series: str | None = None  # a key of SERIES
    package: str | None = None  # an exact linux-image-<release> package
    image: Path | None = None  # user-built: the bzImage
    modules: Path | None = None  # user-built: the lib/modules/<release> directory
    headers: Path | None = None  # user-built: the build tree BCC compiles against

    @property
    def suite(self) -> str:
        """The guest root this kernel boots in."""
        if self.series is not None:
            return SERIES[self.series].suite
        if self.package is not None:
            return suite_of_release(release_of_package(self.package))
        return BOOKWORM


def suite_of_release(release: str) -> str:
    return BOOKWORM if _OLD_RELEASE.match(release) else TRIXIE


def parse_spec(spec: str, modules: str | None = None, headers: str | None = None) -> KernelSpec:
    if spec in SERIES:
        return KernelSpec(spec, series=spec)
    if spec.startswith("linux-image-"):
        if not PACKAGE.match(spec):
            raise VmemtraceError(f"--kernel {spec}: not a Debian x86_64 kernel package name "
                                 "(linux-image-<release>-amd64, e.g. linux-image-6.1.0-56-amd64)")
        return KernelSpec(spec, package=spec)
    path = Path(spec)
    if path.is_file():
        return _user_kernel(spec, path, modules, headers)
    raise VmemtraceError(f"unknown kernel spec {spec!r}: use one of {', '.join(SERIES)}, a "
                         "Debian package name linux-image-<release>, or the path of a kernel image")


def _user_kernel(spec: str, path: Path, modules: str | None, headers: str | None) -> KernelSpec:
    if modules is None:
        raise VmemtraceError(f"--kernel {spec}: a kernel you built needs --modules DIR "
                             "(its lib/modules/<release> directory)")
    mods = Path(modules)
    if not (mods / "modules.order").exists() and not (mods / "kernel").is_dir():
        raise VmemtraceError(f"--modules {modules}: not a lib/modules/<release> directory")
    # BCC compiles in the guest against the kernel's build tree: the modules directory's
    # `build` link (make modules_install writes it), or the tree given with --headers.
    build = Path(headers) if headers is not None else mods / "build"
    if not (build / "include").is_dir() or not (build / "Makefile").exists():
        raise VmemtraceError(
            f"--kernel {spec}: no kernel build tree at {build} (BCC needs its include/ and "
            "Makefile in the guest): pass --headers DIR, the tree the kernel was built in")
    return KernelSpec(spec, image=path.resolve(), modules=mods.resolve(), headers=build.resolve())


def _release_key(release: str) -> tuple[int, ...]:
    """Numeric order of releases of one series: 6.1.0-9 < 6.1.0-56, 6.12.9 < 6.12.117."""
    return tuple(int(n) for n in re.findall(r"\d+", release))


def newest_abi(series: str, package_names: Iterable[str]) -> str:
    """The newest release ("6.1.0-56-amd64" style) of a series among package names."""
    found = [m.group(1) for m in (SERIES[series].release.match(n.strip()) for n in package_names) if m]
    if not found:
        raise VmemtraceError(f"the Debian archive offers no linux-image for {series} "
                             "(is the archive reachable? try again with --refresh)")
    return max(found, key=_release_key) + "-amd64"


def release_of_package(package: str) -> str:
    return PACKAGE.match(package).group("release")


def abi_of_release(release: str) -> str:
    """The release without its flavour: what every package of one kernel build names
    (linux-binary-, linux-modules-, linux-headers-...-common)."""
    return re.sub(r"-(cloud-|rt-)?amd64$", "", release)
