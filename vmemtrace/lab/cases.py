"""The lab's namespace cases: how each one asks ndctl for device-dax memory.

mem-*: struct pages in RAM (`-M mem`, no altmap): eligible for the optimisation when the
alignment gives compound pages larger than 4 KiB. dev-*: struct pages on the device itself
(`-M dev`, an altmap): never optimised (mm/sparse-vmemmap.c, vmemmap_can_optimize()).
"""

from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

from vmemtrace.errors import VmemtraceError

KiB, MiB, GiB, TiB = 1 << 10, 1 << 20, 1 << 30, 1 << 40


@dataclass(frozen=True)
class Case:
    name: str
    map_mode: str  # ndctl -M: "mem" or "dev"
    align: int  # ndctl -a, bytes: the compound page size of the dax device

    def create_args(self, where: list[str]) -> list[str]:
        """ndctl's command line, `where` saying which namespace or region and how much."""
        return ["ndctl", "create-namespace", *where, "-m", "devdax",
                "-M", self.map_mode, "-a", _ndctl_size(self.align)]

    def ndctl_args(self, namespace: str) -> list[str]:
        """Reconfigure a namespace (the memmap= region's only one), whole."""
        return self.create_args(["-f", "-e", namespace])


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


@dataclass(frozen=True)
class Part:
    region: int  # which region, by position in `ndctl list -R` order of their names
    case: Case
    share: int  # this namespace's share of its region, in 1/SHARES


SHARES = 2


@dataclass(frozen=True)
class Multi:
    """Several devices set up by one traced command, as a host's boot or an operator's script
    does: the namespaces of one region one after another (ndctl creates each in the region's
    seed namespace, so two at once in one region collide), those of different regions at the
    same time. Needs label-based regions (--pmem nfit): a memmap= region holds one namespace."""

    name: str
    parts: tuple[Part, ...]
    attach: str = "auto"  # verify --attach: "kprobe" runs the kprobe programs where the
    # kernel has trampolines (a map read while another range populates skips kprobes only)
    # The namespaces made before tracing and their dax devices unbound; the traced command
    # binds them all at once (device_dax's probe maps each: dev_dax_probe() ->
    # devm_memremap_pages()), so that one range is populated right as the one before it is
    # initialised (the memory hotplug lock serialises their populates), with no ndctl start-up
    # between them.
    rebind: bool = False
    pmem = "nfit"

    def regions(self) -> int:
        return 1 + max(p.region for p in self.parts)

    def command(self, regions: list[tuple[str, int]], align: int) -> list[str]:
        """`sh -c` of one ndctl chain per region, run concurrently; exits with the first
        failing chain's status. regions: (name, size) in order; align: the regions' own
        alignment, to which each share is rounded down."""
        chains = []
        for i, (name, size) in enumerate(regions[:self.regions()]):
            steps = []
            for p in (p for p in self.parts if p.region == i):
                share = size * p.share // SHARES // max(align, p.case.align) * max(align, p.case.align)
                steps.append(" ".join(p.case.create_args(["-r", name, "-s", str(share)])))
            chains.append(" && ".join(steps))
        script = "".join(f"( {c} ) & p{i}=$!; " for i, c in enumerate(chains))
        script += "s=0; " + "".join(f"wait $p{i} || s=$?; " for i in range(len(chains))) + "exit $s"
        return ["sh", "-c", script]


# two namespaces in region 0 (eligible 2 MiB, then an altmap one that never is), one of 1 GiB
# compound pages in region 1 beside them
_MULTI_PARTS = (Part(0, CASES["mem-2M"], 1), Part(0, CASES["dev-2M"], 1), Part(1, CASES["mem-1G"], 2))
MULTI = {m.name: m for m in (
    Multi("multi", _MULTI_PARTS),
    Multi("multi-kprobe", _MULTI_PARTS, attach="kprobe", rebind=True),
)}


@dataclass(frozen=True)
class Hugetlb:
    """hvo-*: hugetlb pages of one size allocated through sysfs under verify, audited, then
    freed under verify, with HVO switched on (or off) by its sysctl first: judge/hvo.py."""

    name: str
    size: int  # the hugepage size, bytes
    count: int  # pages to allocate
    hvo: bool = True

    @property
    def nr_hugepages(self) -> str:
        return f"/sys/kernel/mm/hugepages/hugepages-{self.size // KiB}kB/nr_hugepages"

    def command(self, count: int) -> list[str]:
        return ["sh", "-c", f"echo {count} > {self.nr_hugepages}"]


# 16 pages of 2 MiB: 128 vmemmap pages, 112 of them freed with HVO; one 1 GiB page, from a CMA
# area kept for gigantic pages at boot (hugetlb_cma_args()).
HUGETLB = {h.name: h for h in (
    Hugetlb("hvo-1G", GiB, 1),
    Hugetlb("hvo-2M", 2 * MiB, 16),
    Hugetlb("hvo-off-2M", 2 * MiB, 16, hvo=False),
)}


def hugetlb_cma_args(cases) -> str:
    """hugetlb_cma= for the gigantic pages the cases allocate at run time: a guest of 2 GiB
    may have no free aligned GiB left once booted, while a CMA area the kernel sets aside at
    boot lends its pages to movable allocations only and gets them back for hugetlb
    (hugetlb_cma_reserve(), Documentation/admin-guide/kernel-parameters.txt)."""
    need = sum(c.size * c.count for c in cases if isinstance(c, Hugetlb) and c.size >= GiB)
    return f"hugetlb_cma={need >> 20}M" if need else ""


def parse_cases(text: str, pmem: str = "e820") -> list[Case | Multi | Hugetlb]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    known: dict[str, Case | Multi | Hugetlb] = {**CASES, **MULTI, **HUGETLB}
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise VmemtraceError(f"unknown case {', '.join(unknown) or repr(text)}: "
                             f"choose from {', '.join(known)}")
    chosen = [known[n] for n in names]
    for c in chosen:
        if getattr(c, "pmem", pmem) != pmem:
            raise VmemtraceError(f"case {c.name} needs --pmem {c.pmem} (several label-based "
                                 f"namespaces per region, and two regions)")
    return chosen


def _bytes(option: str, text: str) -> int:
    units = {"T": TiB, "G": GiB, "M": MiB}
    t = text.strip().upper().rstrip("B").rstrip("I")
    try:
        return int(t[:-1]) * units[t[-1]] if t[-1:] in units else int(t)
    except (ValueError, KeyError):
        raise VmemtraceError(f"{option} {text}: expected a size such as 3G or 1536M") from None


def parse_size(text: str) -> int:
    """"3G", "1536M", "1T" -> bytes. The pmem region must be whole 128 MiB memory sections."""
    value = _bytes("--size", text)
    if value <= 0 or value % (128 * MiB):
        raise VmemtraceError(f"--size {text}: must be a positive multiple of 128M "
                             "(the region is made of whole memory sections)")
    return value


# The region's default start, 5 GiB: above the PCI hole, 1 GiB aligned (so 1 GiB compound pages
# fit) and section aligned, with guest RAM on both sides of it.
PMEM_START = 5 * GiB
HIGH_RAM = 4 * GiB  # where qemu's RAM above the 32-bit PCI hole begins
LOW_RAM = 2 * GiB  # q35 keeps 2 GiB below the hole once the guest has more than 2.75 GiB
# qemu's pc_memory_init() (hw/i386/pc.c, 7.1+): on an AMD CPU model (TCG's "max" is one), RAM
# above 4 GiB that would reach the HyperTransport hole at 1012 GiB starts at 1 TiB instead.
# It asks whether the highest address used, the 64-bit PCI hole after RAM included (q35: 32 GiB),
# would reach it.
HT_HOLE = 1012 * GiB
ABOVE_HT = TiB
PCI_HOLE64 = 32 * GiB
TCG_ADDRESSES = TiB  # qemu 7.2's TCG CPU models have 40 physical address bits
# Beyond this size the guest is set up for large regions (Region.large).
LARGE = 16 * GiB


def cpu_options(accel: str, end: int, *flags: str) -> list[str]:
    """-cpu beyond vng's "max" for guest memory that ends at `end`: 48 physical address bits
    under TCG past its default 40 (KVM takes the host's), and these flags; nothing where
    neither is needed."""
    if accel == "tcg" and end > TCG_ADDRESSES:
        flags += ("phys-bits=48",)
    return ["-cpu", ",".join(("max",) + flags)] if flags else []


def _moves_high_ram(high_ram: int) -> bool:
    return HIGH_RAM + high_ram + PCI_HOLE64 >= HT_HOLE


@dataclass(frozen=True)
class Region:
    """The guest's persistent memory: memmap=SIZE!START carves it out of guest RAM (legacy e820
    pmem, driver nd_e820), so RAM lies right below and right above it. A start that is not a
    multiple of 128 MiB puts the region's first and last memory sections beside boot RAM: those
    pieces reuse the boot memmap (mm/sparse.c, section_activate()). start None: PMEM_START, or
    just above 1 TiB for a region that would reach the HyperTransport hole (qemu then moves
    high RAM to 1 TiB)."""

    size: int
    start: int | None = None
    kind = "e820"  # the guest's name for it (lab/guest.py); lab/nfit.py's Nvdimms is the other
    config = ("X86_PMEM_LEGACY",)  # nd_e820, beyond device-dax

    def __post_init__(self):
        if self.start is None:
            moves = _moves_high_ram(PMEM_START + self.size + self.ram_after() - HIGH_RAM)
            object.__setattr__(self, "start", ABOVE_HT + LOW_RAM if moves else PMEM_START)
        moved = self.start >= ABOVE_HT
        if _moves_high_ram(self.high_ram()) != moved:
            why = ("qemu moves RAM above 4 GiB to 1 TiB only when it would reach its "
                   "HyperTransport hole at 1012 GiB, and this guest's does not: start it below 1T"
                   if moved else
                   "with this region guest RAM reaches qemu's HyperTransport hole at 1012 GiB, "
                   "where qemu moves RAM above 4 GiB to 1 TiB: start it at "
                   f"{(ABOVE_HT + LOW_RAM) >> 30}G or above")
            raise VmemtraceError(f"--pmem-start {self.start >> 20}M with --size "
                                 f"{self.size >> 20}M: {why}")

    def high_ram(self) -> int:
        """Guest RAM above 4 GiB: from 4 GiB, or from 1 TiB, up to the region's end and after."""
        high_start = ABOVE_HT if self.start >= ABOVE_HT else HIGH_RAM
        return self.start + self.size + self.ram_after() - high_start

    @property
    def large(self) -> bool:
        """A region whose boot-time fsdax namespace would need more memmap than the guest
        has (16 GiB per TiB): nd_pmem is kept from binding at boot (devdax needs only
        dax_pmem), qemu's RAM is not reserved up front (the host has less than the guest's
        RAM, most of which is the region and never touched), and RAM after the region holds
        the vmemmap of the cases (4 GiB per TiB at 2 MiB compound pages, 16 GiB at 4 KiB)."""
        return self.size > LARGE

    def ram_after(self) -> int:
        """2 GiB, and for a large region room for its whole vmemmap (size / 64: one 64-byte
        struct page per 4 KiB, the mem-4K case's): never reserved, so a host backs only what
        a case touches."""
        return 2 * GiB + (self.size // 64 if self.large else 0)

    def kernel_args(self) -> str:
        extra = " modprobe.blacklist=nd_pmem" if self.large else ""
        return f"memmap={self.size >> 20}M!{self.start >> 20}M" + extra

    def guest_memory(self) -> int:
        """Guest RAM to ask for: LOW_RAM below 4 GiB, the rest above it (high_ram())."""
        return LOW_RAM + self.high_ram()

    def qemu_opts(self, accel: str, scratch: Path | None = None) -> list[str]:
        """qemu options beyond vng's: 48 physical address bits where the region ends above
        TCG's default 40 (KVM takes the host's), and RAM mapped MAP_NORESERVE for a large one."""
        opts = cpu_options(accel, self.start + self.size + self.ram_after())
        if self.large:
            opts += ["-object", f"memory-backend-ram,id=vt-ram,size={self.guest_memory() >> 20}M,"
                     "reserve=off", "-machine", "memory-backend=vt-ram"]
        return opts

    def backed(self, scratch: Path):
        """Nothing to back: the region is guest RAM (Nvdimms has files)."""
        return nullcontext()

    def guest_seconds(self) -> float:
        """How long a guest may take by default: 20 minutes, and 3 s more per GiB of region
        (6.12 under TCG took 13 minutes to verify a 1 TiB mem-2M namespace with --cross-check:
        524288 compound pages populated, walked and judged)."""
        return 1200.0 + 3 * (self.size >> 30)

    def describe(self) -> str:
        at = "" if self.start == PMEM_START else f" at {self.start >> 20} MiB"
        return f"{self.size >> 20} MiB of pmem{at}"


def parse_start(text: str | None) -> int | None:
    """--pmem-start: a physical address in high RAM, 2 MiB aligned (a subsection: the kernel
    hot-adds device memory in subsections, memremap_compat_align() on x86)."""
    if text is None or text == "auto":
        return None  # Region picks it
    value = _bytes("--pmem-start", text)
    if value < HIGH_RAM or value % (2 * MiB):
        raise VmemtraceError(f"--pmem-start {text}: must be at least 4G (above the PCI hole) "
                             "and a multiple of 2M")
    return value
