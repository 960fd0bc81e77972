"""The lab's namespace cases: how each one asks ndctl for device-dax memory.

mem-*: struct pages in RAM (`-M mem`, no altmap): eligible for the optimisation when the
alignment gives compound pages larger than 4 KiB. dev-*: struct pages on the device itself
(`-M dev`, an altmap): never optimised (mm/sparse-vmemmap.c, vmemmap_can_optimize()).
"""

from dataclasses import dataclass
from typing import List

from vmemtrace.errors import VmemtraceError

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30


@dataclass(frozen=True)
class Case:
    name: str
    map_mode: str  # ndctl -M: "mem" or "dev"
    align: int  # ndctl -a, bytes: the compound page size of the dax device

    def ndctl_args(self, namespace: str) -> List[str]:
        return ["ndctl", "create-namespace", "-f", "-e", namespace, "-m", "devdax",
                "-M", self.map_mode, "-a", _ndctl_size(self.align)]


def _ndctl_size(n: int) -> str:
    for unit, suffix in ((GiB, "G"), (MiB, "M"), (KiB, "K")):
        if n % unit == 0:
            return f"{n // unit}{suffix}"
    return str(n)


CASES = {c.name: c for c in (
    Case("mem-2M", "mem", 2 * MiB),
    Case("mem-1G", "mem", 1 * GiB),
    Case("dev-2M", "dev", 2 * MiB),
    Case("mem-4K", "mem", 4 * KiB),
)}
DEFAULT_CASES = tuple(CASES)


def parse_cases(text: str) -> List[Case]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in CASES]
    if unknown or not names:
        raise VmemtraceError(f"unknown case {', '.join(unknown) or repr(text)}: "
                             f"choose from {', '.join(CASES)}")
    return [CASES[n] for n in names]


def _bytes(option: str, text: str) -> int:
    units = {"G": GiB, "M": MiB}
    t = text.strip().upper().rstrip("B").rstrip("I")
    try:
        return int(t[:-1]) * units[t[-1]] if t[-1:] in units else int(t)
    except (ValueError, KeyError):
        raise VmemtraceError(f"{option} {text}: expected a size such as 3G or 1536M")


def parse_size(text: str) -> int:
    """"3G", "1536M" -> bytes. The pmem region must be whole 128 MiB memory sections."""
    value = _bytes("--size", text)
    if value <= 0 or value % (128 * MiB):
        raise VmemtraceError(f"--size {text}: must be a positive multiple of 128M "
                             "(the region is made of whole memory sections)")
    return value


# The region's default start, 5 GiB: above the PCI hole, 1 GiB aligned (so 1 GiB compound pages
# fit) and section aligned, with guest RAM on both sides of it.
PMEM_START = 5 * GiB
HIGH_RAM = 4 * GiB  # where qemu's RAM above the 32-bit PCI hole begins


@dataclass(frozen=True)
class Region:
    """The guest's persistent memory: memmap=SIZE!START carves it out of guest RAM (legacy e820
    pmem, driver nd_e820), so RAM lies right below and right above it. A start that is not a
    multiple of 128 MiB puts the region's first and last memory sections beside boot RAM: those
    pieces reuse the boot memmap (mm/sparse.c, section_activate())."""

    size: int
    start: int = PMEM_START

    def memmap_arg(self) -> str:
        return f"memmap={self.size >> 20}M!{self.start >> 20}M"

    def guest_memory(self) -> int:
        """Guest RAM to ask for: everything up to the region's end, and RAM behind it."""
        return self.start + self.size

    def describe(self) -> str:
        at = "" if self.start == PMEM_START else f" at {self.start >> 20} MiB"
        return f"{self.size >> 20} MiB of pmem{at}"


def parse_start(text: str) -> int:
    """--pmem-start: a physical address in high RAM, 2 MiB aligned (a subsection: the kernel
    hot-adds device memory in subsections, memremap_compat_align() on x86)."""
    value = _bytes("--pmem-start", text)
    if value < HIGH_RAM or value % (2 * MiB):
        raise VmemtraceError(f"--pmem-start {text}: must be at least 4G (above the PCI hole) "
                             "and a multiple of 2M")
    return value
