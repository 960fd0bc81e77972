"""Kernel specs: a Debian series resolved from the archive at run time, or a kernel you built."""

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

from vmemtrace.errors import VmemtraceError

# Debian's ABI names per series (x86_64, generic flavour). 5.10 comes from bullseye, 6.1 from
# bookworm, 6.12 from bookworm (6.12.N+deb12). The ABI number changes with every upload, so the
# newest is looked up when the lab runs, never written down here.
SERIES = {
    "5.10": re.compile(r"^linux-image-(5\.10\.0-(\d+))-amd64$"),
    "6.1": re.compile(r"^linux-image-(6\.1\.0-(\d+))-amd64$"),
    "6.12": re.compile(r"^linux-image-(6\.12\.(\d+)\+deb12)-amd64$"),
}


@dataclass(frozen=True)
class KernelSpec:
    spec: str  # what the user typed
    series: Optional[str] = None  # a key of SERIES, or None for a user-built kernel
    image: Optional[Path] = None  # user-built: the bzImage
    modules: Optional[Path] = None  # user-built: the lib/modules/<release> directory


def parse_spec(spec: str, modules: Optional[str] = None) -> KernelSpec:
    if spec in SERIES:
        return KernelSpec(spec, series=spec)
    path = Path(spec)
    if path.is_file():
        if modules is None:
            raise VmemtraceError(f"--kernel {spec}: a kernel you built needs --modules DIR "
                                 "(its lib/modules/<release> directory)")
        mods = Path(modules)
        if not (mods / "modules.order").exists() and not (mods / "kernel").is_dir():
            raise VmemtraceError(f"--modules {modules}: not a lib/modules/<release> directory")
        return KernelSpec(spec, image=path.resolve(), modules=mods.resolve())
    raise VmemtraceError(f"unknown kernel spec {spec!r}: use one of "
                         f"{', '.join(SERIES)} or the path of a kernel image")


def newest_abi(series: str, package_names: Iterable[str]) -> str:
    """The newest ABI ("6.1.0-56-amd64" style release) of a series among package names."""
    best = None
    for name in package_names:
        m = SERIES[series].match(name.strip())
        if m and (best is None or int(m.group(2)) > best[0]):
            best = (int(m.group(2)), m.group(1) + "-amd64")
    if best is None:
        raise VmemtraceError(f"the Debian archive offers no linux-image for {series} "
                             "(is the archive reachable? try again with --refresh)")
    return best[1]
