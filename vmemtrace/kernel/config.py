"""The kernel's build configuration: /proc/config.gz, /boot/config-<release>, or
/lib/modules/<release>/config (where Debian 7.x packages put it)."""

import gzip
import zlib
from pathlib import Path

from vmemtrace.errors import VmemtraceError

# The options that decide whether the compound-devmap optimisation exists and can be watched.
# ARCH_WANT_OPTIMIZE_VMEMMAP (6.4, 6.5), then ARCH_WANT_OPTIMIZE_DAX_VMEMMAP (6.6+), are the arch
# gate (kernel/compat.py, arch_gate); older kernels have no such option and optimise whenever
# SPARSEMEM_VMEMMAP and ZONE_DEVICE are set.
RELEVANT = (
    "ZONE_DEVICE",
    "SPARSEMEM_VMEMMAP",
    "ARCH_WANT_OPTIMIZE_VMEMMAP",
    "ARCH_WANT_OPTIMIZE_DAX_VMEMMAP",
    "DEV_DAX",
    "KPROBES",
    "KPROBE_EVENTS",
    "KPROBE_EVENTS_ON_NOTRACE",
    "BPF_SYSCALL",
    "DEBUG_INFO_BTF",
    "KALLSYMS_ALL",
    "PROC_KCORE",
    "HUGETLB_PAGE_OPTIMIZE_VMEMMAP",
)


def parse_config(text: str) -> dict[str, str]:
    """CONFIG_X=value lines into {"X": value}; "# CONFIG_X is not set" into {"X": "n"}."""
    options = {}
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("CONFIG_") and "=" in line:
            key, value = line.split("=", 1)
            options[key[len("CONFIG_"):]] = value.strip('"')
        elif line.startswith("# CONFIG_") and line.endswith(" is not set"):
            options[line[len("# CONFIG_"):-len(" is not set")]] = "n"
    return options


def read_config(root: Path, release: str) -> tuple[dict[str, str] | None, str | None]:
    """(options, the file they came from), or (None, None) when the kernel publishes none."""
    proc = root / "proc/config.gz"
    if proc.exists():
        try:
            text = gzip.decompress(proc.read_bytes()).decode(errors="replace")
        except (OSError, EOFError, zlib.error) as e:
            raise VmemtraceError(f"/proc/config.gz: cannot read it ({e})") from None
        return parse_config(text), "/proc/config.gz"
    for rel in config_paths(release):
        path = root / rel.lstrip("/")
        if path.exists():
            try:
                return parse_config(path.read_text(errors="replace")), rel
            except OSError as e:
                raise VmemtraceError(f"{rel}: cannot read it ({e.strerror})") from None
    return None, None


def config_paths(release: str) -> tuple[str, ...]:
    return (f"/boot/config-{release}", f"/lib/modules/{release}/config")


def enabled(options: dict[str, str] | None, name: str) -> bool | None:
    """True for =y/=m, False for not set or absent, None when the config is unknown."""
    if options is None:
        return None
    return options.get(name, "n") in ("y", "m")
