"""HugeTLB as the running kernel shows it: the pools in sysfs, HVO's switches (the sysctl and the
command line), the zones that hold memory, and where each hugetlb folio lies (/proc/kpageflags).

Readers only; what the vmemmap of those folios looks like is walked in walk/hugetlb.py and
judged in judge/hvo.py.
"""

import re
from dataclasses import dataclass
from pathlib import Path

from vmemtrace.errors import VmemtraceError

# include/uapi/linux/kernel-page-flags.h
KPF_COMPOUND_HEAD = 15
KPF_COMPOUND_TAIL = 16
KPF_HUGE = 17
PAGE_SIZE = 4096
_CHUNK = 1 << 20  # kpageflags entries read at once (8 MiB)


@dataclass(frozen=True)
class Switches:
    """Whether HVO is on: vm.hugetlb_optimize_vmemmap (None where the kernel has no such sysctl:
    built without CONFIG_HUGETLB_PAGE_OPTIMIZE_VMEMMAP), and hugetlb_free_vmemmap= as booted."""

    sysctl: int | None
    cmdline: str | None

    def as_json(self) -> dict:
        return {"sysctl": self.sysctl, "cmdline": self.cmdline}


def switches(root: Path = Path("/")) -> Switches:
    try:
        sysctl: int | None = int((root / "proc/sys/vm/hugetlb_optimize_vmemmap").read_text())
    except (OSError, ValueError):
        sysctl = None
    try:
        cmdline = (root / "proc/cmdline").read_text()
    except OSError:
        cmdline = ""
    found = re.findall(r"(?:^|\s)hugetlb_free_vmemmap=(\S+)", cmdline)
    return Switches(sysctl, found[-1] if found else None)  # the kernel takes the last one


def pools(root: Path = Path("/")) -> dict[int, int]:
    """Hugepage size in KiB -> nr_hugepages, for each size the kernel offers
    (/sys/kernel/mm/hugepages/hugepages-<size>kB)."""
    out = {}
    for d in sorted((root / "sys/kernel/mm/hugepages").glob("hugepages-*kB")):
        try:
            out[int(d.name[len("hugepages-"):-len("kB")])] = int((d / "nr_hugepages").read_text())
        except (OSError, ValueError):
            continue
    return out


def node_pools(size_kb: int, root: Path = Path("/")) -> dict[int, int]:
    """Node -> nr_hugepages of this size on it (/sys/devices/system/node/node<N>/hugepages/);
    empty where sysfs has no nodes."""
    out = {}
    pattern = f"node[0-9]*/hugepages/hugepages-{size_kb}kB/nr_hugepages"
    for f in (root / "sys/devices/system/node").glob(pattern):
        try:
            out[int(f.parts[-4][len("node"):])] = int(f.read_text())
        except (OSError, ValueError):
            continue
    return dict(sorted(out.items()))


def populated_zones(root: Path = Path("/")) -> int:
    """How many zones hold memory (/proc/zoneinfo, "present" > 0): the most shared tail pages
    one order can have, since the kernel keeps one per zone and order."""
    try:
        text = (root / "proc/zoneinfo").read_text()
    except OSError:
        return 0
    return len([m for m in re.findall(r"^\s+present\s+(\d+)", text, re.M) if int(m)])


class Nodes:
    """Which NUMA node a pfn's memory belongs to, from the memory blocks sysfs links under each
    node (/sys/devices/system/node/node<N>/memory<M>, blocks of block_size_bytes); None where
    sysfs does not say (no memory hotplug support, a pfn in no block)."""

    def __init__(self, root: Path = Path("/")):
        self.block_pages = 0
        self.by_block: dict[int, int] = {}
        try:
            size = int((root / "sys/devices/system/memory/block_size_bytes").read_text(), 16)
        except (OSError, ValueError):
            return
        self.block_pages = size // PAGE_SIZE
        for node in (root / "sys/devices/system/node").glob("node[0-9]*"):
            for block in node.glob("memory[0-9]*"):
                self.by_block[int(block.name[len("memory"):])] = int(node.name[len("node"):])

    def of(self, pfn: int) -> int | None:
        return self.by_block.get(pfn // self.block_pages) if self.block_pages else None


@dataclass(frozen=True)
class Folios:
    heads: list[tuple[int, int]]  # (head pfn, pages) of each hugetlb folio
    stale: list[int]  # pfns that read as a hugetlb head with no hugetlb tail behind them


def read_folios(sizes_kb: list[int], path: str = "/proc/kpageflags") -> Folios:
    """Every hugetlb folio: KPF_HUGE and KPF_COMPOUND_HEAD at a pfn aligned to the smallest size,
    with a hugetlb tail right after it; its size is the smallest one whose next aligned pfn is
    no tail of it. Only the first two entries of each aligned run of the smallest size are
    looked at.

    The tail is asked for because a head's flags alone can lie: once 6.12 has restored and freed
    an optimised 1 GiB folio, the first struct page of every vmemmap page it restored is still a
    copy of the head (KPF_HUGE and KPF_COMPOUND_HEAD), with no tail behind it, and the kernel
    keeps those pages as bad ("BUG: Bad page state", docs/findings.md): they are `stale`, no
    folio (head_copies() counts them in the folios freed).
    """
    if not sizes_kb:
        return Folios([], [])
    steps = sorted(kb * 1024 // PAGE_SIZE for kb in sizes_kb)
    step = steps[0]
    flags: list[int] = []
    seconds: list[int] = []
    try:
        with open(path, "rb") as f:
            while True:
                data = f.read(_CHUNK * 8)
                if not data:
                    break
                # Whole chunks are whole runs of `step` entries; only the last one is short.
                words = memoryview(data[:len(data) - len(data) % 8]).cast("Q")
                flags.extend(words[::step])
                seconds.extend(words[1::step])
    except OSError as e:
        raise VmemtraceError(f"cannot read {path}: {e.strerror}") from None
    head = (1 << KPF_HUGE) | (1 << KPF_COMPOUND_HEAD)
    tail = 1 << KPF_COMPOUND_TAIL
    huge_tail = (1 << KPF_HUGE) | tail
    out, stale = [], []
    for i, word in enumerate(flags):
        if word & head != head:
            continue
        pfn = i * step
        if i >= len(seconds) or seconds[i] & huge_tail != huge_tail:
            stale.append(pfn)
            continue
        for size in steps:
            nxt = (pfn + size) // step
            if pfn % size == 0 and (nxt >= len(flags) or not flags[nxt] & tail):
                out.append((pfn, size))
                break
    return Folios(out, stale)


def head_copies(heads: list[int], pages: int, stride: int,
                path: str = "/proc/kpageflags") -> int:
    """How many struct pages of these folios, other than their heads, read as a hugetlb head
    (KPF_HUGE and KPF_COMPOUND_HEAD). Only the first struct page of each vmemmap page is looked
    at (every `stride` pfns: PAGE_SIZE / sizeof(struct page)): where an optimised folio's
    vmemmap, restored by copying the page it kept, has a copy of the head. Freed folios have
    none once restore cleans them; the kernel keeps a folio with such copies as bad pages."""
    head = (1 << KPF_HUGE) | (1 << KPF_COMPOUND_HEAD)
    found = 0
    try:
        with open(path, "rb") as f:
            for first in heads:
                f.seek(first * 8)
                data = f.read(pages * 8)
                words = memoryview(data[:len(data) - len(data) % 8]).cast("Q")
                found += sum(1 for w in words[stride::stride] if w & head == head)
    except OSError as e:
        raise VmemtraceError(f"cannot read {path}: {e.strerror}") from None
    return found
