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


def parse_size(text: str) -> int:
    """"3G", "1536M" -> bytes. The pmem region must be whole 128 MiB memory sections."""
    units = {"G": GiB, "M": MiB}
    t = text.strip().upper().rstrip("B").rstrip("I")
    try:
        value = int(t[:-1]) * units[t[-1]] if t[-1:] in units else int(t)
    except (ValueError, KeyError):
        raise VmemtraceError(f"--size {text}: expected a size such as 3G or 1536M")
    if value <= 0 or value % (128 * MiB):
        raise VmemtraceError(f"--size {text}: must be a positive multiple of 128M "
                             "(the region is made of whole memory sections)")
    return value
