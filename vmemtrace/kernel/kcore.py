"""Kernel memory through /proc/kcore, and the x86_64 page-table walk of the vmemmap.

/proc/kcore is an ELF64 core file (fs/proc/kcore.c): one PT_LOAD per kernel region, p_vaddr its
kernel virtual address. The kernel image (KCORE_TEXT) holds init_top_pgt and the KASLR-chosen
bases; every page-table page below the top one is RAM, read through the direct map at
page_offset_base + phys (KCORE_RAM). The walk only reads page tables, never the vmemmap pages
themselves: device memory is not in kcore's RAM list, and we only want where each page lives.

Paging follows arch/x86/include/asm/pgtable_64_types.h: 9 bits per level, 4 KiB PTEs, _PAGE_PSE
at the PUD (1 GiB) and PMD (2 MiB) level; 5-level paging adds the P4D level above the PUD when
__pgtable_l5_enabled (CONFIG_X86_5LEVEL and a CPU with LA57).
"""

import os
import stat
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from vmemtrace.errors import VmemtraceError
from vmemtrace.kernel.environment import CAP_SYS_RAWIO, effective_caps, lockdown_mode

PT_LOAD = 1
PHDR_SIZE = 56  # sizeof(Elf64_Phdr)
PN_XNUM = 0xFFFF
_PRESENT = 1 << 0
_RW = 1 << 1
_PSE = 1 << 7
# Physical address bits 12..51 of an entry (PTE_PFN_MASK with __PHYSICAL_MASK_SHIFT 52).
_ADDR = ((1 << 52) - 1) & ~0xFFF
PAGE_SHIFT = 12
ENTRIES = 512
# The direct map starts at 0xffff888000000000 with 4-level paging and 0xff11000000000000 with
# 5-level (Documentation/arch/x86/x86_64/mm.rst); KASLR only moves it up within its hole, so an
# address below the 4-level kernel half proves 5-level paging.
_L4_KERNEL_HALF = 0xFFFF800000000000

LEVEL_NAMES = {30: "pud", 21: "pmd", 12: "pte"}


@dataclass(frozen=True)
class Segment:
    vaddr: int
    offset: int
    size: int


class Kcore:
    """Reads kernel virtual addresses from an ELF64 core file (/proc/kcore, or a test image)."""

    def __init__(self, path: str):
        self.path = path
        try:
            self.fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            raise VmemtraceError(f"no {path} (kernel built without CONFIG_PROC_KCORE)") from None
        except PermissionError:
            raise VmemtraceError(f"{path}: permission denied ({lockdown_hint() or 'why unknown'})") from None
        try:
            self.segments = self._segments()
        except Exception:
            os.close(self.fd)
            raise

    def close(self) -> None:
        os.close(self.fd)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _pread(self, size: int, offset: int) -> bytes:
        try:
            data = os.pread(self.fd, size, offset)
        except OSError as e:
            raise VmemtraceError(f"cannot read {self.path}: {e.strerror} "
                                 f"({lockdown_hint() or 'why unknown'})") from None
        if len(data) != size:
            raise VmemtraceError(f"{self.path}: short read at offset {offset:#x}")
        return data

    def _segments(self) -> list[Segment]:
        ehdr = self._pread(64, 0)
        if ehdr[:4] != b"\x7fELF" or ehdr[4] != 2 or ehdr[5] != 1:
            raise VmemtraceError(f"{self.path}: not a little-endian ELF64 core file")
        shoff, = struct.unpack_from("<Q", ehdr, 40)
        phoff, = struct.unpack_from("<Q", ehdr, 32)
        phentsize, phnum = struct.unpack_from("<HH", ehdr, 54)
        if phnum == PN_XNUM:  # more segments than e_phnum holds: the count is in section 0
            phnum, = struct.unpack_from("<I", self._pread(64, shoff), 44)
        if phentsize < PHDR_SIZE:
            raise VmemtraceError(f"{self.path}: program headers of {phentsize} bytes, "
                                 f"not an ELF64 core file (they take {PHDR_SIZE})")
        table = self._pread(phentsize * phnum, phoff)
        out = []
        for i in range(phnum):
            p_type, _flags, off, vaddr, _paddr, filesz = struct.unpack_from(
                "<IIQQQQ", table, i * phentsize)
            if p_type == PT_LOAD and filesz:
                out.append(Segment(vaddr, off, filesz))
        if not out:
            raise VmemtraceError(f"{self.path}: no loadable segments")
        return out

    def read(self, vaddr: int, size: int) -> bytes:
        for s in self.segments:
            if s.vaddr <= vaddr and vaddr + size <= s.vaddr + s.size:
                return self._pread(size, s.offset + vaddr - s.vaddr)
        raise VmemtraceError(f"{self.path}: address {vaddr:#x} is in no segment")

    def u64(self, vaddr: int) -> int:
        return struct.unpack("<Q", self.read(vaddr, 8))[0]


def lockdown_hint(root: Path = Path("/")) -> str | None:
    """Why kcore may be refused: lockdown's confidentiality mode (LOCKDOWN_KCORE) or no root."""
    if lockdown_mode(root) == "confidentiality":
        return "kernel lockdown is in confidentiality mode, which forbids /proc/kcore"
    caps = effective_caps(root)
    if caps is not None and not caps & (1 << CAP_SYS_RAWIO):  # fs/proc/kcore.c open_kcore()
        return "reading /proc/kcore needs root"
    return None


@dataclass(frozen=True)
class Layout:
    """Where the kernel put things this boot (KASLR applied)."""

    init_top_pgt: int  # virtual address of the top-level table
    page_offset_base: int
    vmemmap_base: int
    levels: int  # 4 or 5
    # The physical-address bits of an entry: bits 12..51 less the memory-encryption bit (AMD
    # SME/SEV's C-bit, sme_me_mask) or a confidential guest's shared bit, which the kernel sets
    # in its table entries and takes out of physical_mask (arch/x86/mm/mem_encrypt_identity.c,
    # arch/x86/include/asm/pgtable_types.h __PHYSICAL_MASK).
    addr_mask: int = _ADDR


REQUIRED_SYMBOLS = ("init_top_pgt", "page_offset_base", "vmemmap_base")
# Read when present: without the first the direct map's place tells the paging depth; the others
# say which entry bits are not address bits (CONFIG_DYNAMIC_PHYSICAL_MASK, CONFIG_AMD_MEM_ENCRYPT).
DATA_SYMBOLS = REQUIRED_SYMBOLS + ("__pgtable_l5_enabled", "physical_mask", "sme_me_mask",
                                    "mem_section")


def symbol_problem(addresses: dict[str, int]) -> str | None:
    """What kallsyms lacks for the walk, or None."""
    missing = [s for s in REQUIRED_SYMBOLS if s not in addresses]
    if missing:
        return (f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not in "
                "/proc/kallsyms (kernel built without CONFIG_KALLSYMS_ALL)")
    if not all(addresses[s] for s in REQUIRED_SYMBOLS):
        return "/proc/kallsyms hides addresses (not root, or kptr_restrict)"
    return None


def layout(kcore: Kcore, addresses: dict[str, int]) -> Layout:
    """Read the layout from kernel data; `addresses` are kallsyms' data symbol addresses."""
    problem = symbol_problem(addresses)
    if problem:
        raise VmemtraceError(f"{problem}: cannot walk the page tables")
    pob = kcore.u64(addresses["page_offset_base"])
    vmb = kcore.u64(addresses["vmemmap_base"])
    if addresses.get("__pgtable_l5_enabled"):
        l5 = struct.unpack("<I", kcore.read(addresses["__pgtable_l5_enabled"], 4))[0]
    else:  # newer kernels test X86_FEATURE_LA57 instead; the direct map's place tells the same
        l5 = pob < _L4_KERNEL_HALF
    return Layout(addresses["init_top_pgt"], pob, vmb, 5 if l5 else 4, address_mask(kcore, addresses))


def address_mask(kcore: Kcore, addresses: dict[str, int]) -> int:
    """The entry bits that are physical address: physical_mask where the kernel keeps one (it
    excludes every encryption or shared bit), else all but sme_me_mask."""
    if addresses.get("physical_mask"):
        return _ADDR & kcore.u64(addresses["physical_mask"])
    if addresses.get("sme_me_mask"):
        return _ADDR & ~kcore.u64(addresses["sme_me_mask"])
    return _ADDR


class PageTables:
    """Translate kernel virtual addresses through init_top_pgt, one table page read at most once."""

    def __init__(self, kcore: Kcore, lay: Layout):
        self.kcore = kcore
        self.layout = lay
        self.shifts = (48, 39, 30, 21, 12)[5 - lay.levels:]
        self._tables: dict[int, tuple[int, ...]] = {}

    def _table(self, vaddr: int) -> tuple[int, ...]:
        t = self._tables.get(vaddr)
        if t is None:
            t = struct.unpack(f"<{ENTRIES}Q", self.kcore.read(vaddr, ENTRIES * 8))
            self._tables[vaddr] = t
        return t

    def translate(self, vaddr: int) -> tuple[int, str] | None:
        """(physical address, "pte"|"pmd"|"pud") of the page mapping vaddr, or None."""
        hit = self.mapping(vaddr)
        return None if hit is None else hit[:2]

    def mapping(self, vaddr: int) -> tuple[int, str, bool] | None:
        """translate(), with whether the entry that maps the page lets it be written (_PAGE_RW:
        HVO maps the vmemmap it frees read-only, mm/hugetlb_vmemmap.c)."""
        table = self.layout.init_top_pgt
        for shift in self.shifts:
            entry = self._table(table)[(vaddr >> shift) & (ENTRIES - 1)]
            if not entry & _PRESENT:
                return None
            if shift == 12 or (shift in (21, 30) and entry & _PSE):
                size = 1 << shift
                base = entry & self.layout.addr_mask & ~(size - 1)
                return (base + (vaddr & (size - 1) & ~0xFFF), LEVEL_NAMES[shift],
                        bool(entry & _RW))
            table = self.layout.page_offset_base + (entry & self.layout.addr_mask)
        raise AssertionError("unreachable: the last level is a PTE")

    def vmemmap_backing(self, start_pfn: int, nr_pages: int,
                        struct_page_size: int) -> Iterator[tuple[int, str] | None]:
        """Per vmemmap page of the struct pages of [start_pfn, start_pfn + nr_pages), in order:
        the pfn of the physical page behind it and the level that maps it, None where nothing
        is mapped. One at a time: 1 TiB of device has 4 Mi vmemmap pages."""
        for hit in self.vmemmap_mappings(start_pfn, nr_pages, struct_page_size):
            yield None if hit is None else hit[:2]

    def vmemmap_mappings(self, start_pfn: int, nr_pages: int,
                         struct_page_size: int) -> Iterator[tuple[int, str, bool] | None]:
        """vmemmap_backing(), each with whether its entry is writable."""
        page = 1 << PAGE_SHIFT
        first = self.layout.vmemmap_base + start_pfn * struct_page_size
        last = self.layout.vmemmap_base + (start_pfn + nr_pages) * struct_page_size
        for va in range(first & ~(page - 1), last, page):
            hit = self.mapping(va)
            yield None if hit is None else (hit[0] >> PAGE_SHIFT, hit[1], hit[2])


# include/linux/mmzone.h: section_mem_map's flag bits (an enum since 5.17, the same values as the
# defines before it since 4.19): SECTION_IS_EARLY_BIT is 3.
SECTION_IS_EARLY = 1 << 3


@dataclass(frozen=True)
class SectionTable:
    """How mem_section is laid out: sizeof(struct mem_section) (16, or 32 with
    CONFIG_PAGE_EXTENSION; from BTF where there is one) and whether it is an array of pointers to
    root pages (CONFIG_SPARSEMEM_EXTREME, x86_64's default) or one static array."""

    entry_size: int
    extreme: bool = True


def early_sections(kcore: Kcore, address: int, table: SectionTable,
                   numbers: Iterable[int]) -> set[int]:
    """Which of these memory sections were present at boot: early_section() (mmzone.h) reads
    SECTION_IS_EARLY in mem_section[root][nr % SECTIONS_PER_ROOT].section_mem_map, where
    SECTIONS_PER_ROOT = PAGE_SIZE / sizeof(struct mem_section)."""
    per_root = (1 << PAGE_SHIFT) // table.entry_size
    base = kcore.u64(address) if table.extreme else address
    out = set()
    for nr in numbers:
        if table.extreme:
            if not base:
                break
            root = kcore.u64(base + (nr // per_root) * 8)
            entry = root + (nr % per_root) * table.entry_size if root else 0
        else:
            entry = base + nr * table.entry_size
        if entry and kcore.u64(entry) & SECTION_IS_EARLY:
            out.add(nr)
    return out


def kcore_path(root: Path) -> Path:
    """The kernel's core file: root's proc/kcore, or for the live system $VMEMTRACE_KCORE where
    set. Container runtimes mask /proc/kcore with /dev/null (runc's default maskedPaths), so a
    container mounts the host's /proc elsewhere (deploy/daemonset.yaml: /host/proc) and names it."""
    if str(root) == "/" and os.environ.get("VMEMTRACE_KCORE"):
        return Path(os.environ["VMEMTRACE_KCORE"])
    return root / "proc/kcore"


def walk_blocker(root: Path, addresses: dict[str, int], machine: str) -> str | None:
    """Why this host cannot walk its vmemmap page tables, or None. Cheap: no kcore read."""
    if machine != "x86_64":
        return f"the page-table walk knows x86_64 paging only, not {machine}"
    path = kcore_path(root)
    try:
        mode = path.stat().st_mode
    except OSError:
        if path != root / "proc/kcore":
            return f"no {path}, which VMEMTRACE_KCORE names"
        return "no /proc/kcore (kernel built without CONFIG_PROC_KCORE)"
    if stat.S_ISCHR(mode):
        return (f"{path} is masked by a character device (a container runtime's /dev/null): "
                "mount the host's /proc elsewhere and set VMEMTRACE_KCORE to its kcore")
    return symbol_problem(addresses) or lockdown_hint(root)


class Walker:
    """The walk of this running kernel: open once, walk many ranges."""

    def __init__(self, addresses: dict[str, int], path: str | None = None,
                 sections: SectionTable | None = None):
        self.addresses, self.sections = addresses, sections
        self.kcore = Kcore(path or str(kcore_path(Path("/"))))
        try:
            self.layout = layout(self.kcore, addresses)
        except Exception:
            self.kcore.close()
            raise

    def close(self) -> None:
        self.kcore.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def backing(self, start_pfn: int, nr_pages: int, struct_page_size: int):
        """PageTables.vmemmap_backing(), read as it is consumed (the walker must stay open)."""
        # Fresh tables (and table cache) per range: page tables change as namespaces come and go.
        return PageTables(self.kcore, self.layout).vmemmap_backing(start_pfn, nr_pages,
                                                                   struct_page_size)

    def tables(self) -> "PageTables":
        """Page tables read afresh, each table page once for as long as the caller keeps them
        (one snapshot of every hugetlb folio's vmemmap)."""
        return PageTables(self.kcore, self.layout)

    def boot_sections(self, numbers: Iterable[int]) -> list[int] | None:
        """Which of these memory sections were present at boot; None where mem_section
        cannot be read."""
        address = self.addresses.get("mem_section")
        if not address or self.sections is None:
            return None
        try:
            return sorted(early_sections(self.kcore, address, self.sections, numbers))
        except VmemtraceError:
            return None
