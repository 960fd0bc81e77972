"""The probe targets: the one registry every command, the BPF program and the tests draw from.

Each target names the kernel function, the BPF functions (bpf/vmemtrace.bpf.c) attached to it
per probe kind, and what it lets vmemtrace see. A target with programs can also be attached by
BPF trampoline: fentry in place of its kprobe, fexit in place of its kretprobe, programs that
BCC names after the function (KFUNC_PROBE, KRETFUNC_PROBE). `count` is a BPF function that
only counts hits and reads no argument: it is what may be attached to a compiler clone
(`.constprop`, `.isra`), whose calling convention the compiler changed. `since` is the upstream
release that introduced the function (git log -S of mm/sparse-vmemmap.c, mm/page_alloc.c,
mm/mm_init.c); it only decides whether a function missing from kallsyms is reported "inlined"
or "absent". Where the function came with a change that kernel/compat.py records, `since` is
that change's release.
"""

from dataclasses import dataclass

from vmemtrace.kernel import compat

# What a target lets vmemtrace see (plan.Sources has one flag per kind).
SECTIONS = "sections"  # one call per section: pfn, nr_pages, altmap, pgmap
POPULATE = "populate"  # one call per vmemmap PTE: fresh or reused
ALLOC = "alloc"  # vmemmap pages allocated
RANGES = "ranges"  # one call per pgmap range
INIT = "init"  # struct pages initialised per compound page
INIT_PAGES = "init-pages"  # one call per struct page initialised
INFO = "info"  # nothing attached: said in `check` only

WALK = "page-table walk"


@dataclass(frozen=True)
class Arg:
    """An argument the BPF program reads, found in the kernel's prototype by its name."""

    names: tuple[str, ...]  # its parameter name in the kernel source; a later name after it
    position: int  # where the version rule puts it, for a kernel without BTF
    since: compat.Change | None = None  # a parameter only kernels from this change have

    @property
    def key(self) -> str:
        """What bpf/vmemtrace.bpf.c calls it (VT_POS_<function>__<key>)."""
        return self.names[0]


@dataclass(frozen=True)
class Target:
    name: str
    programs: tuple[tuple[str, str], ...]  # (probe kind, BPF function) when traceable
    since: tuple[int, int]
    sees: str
    tells: str
    fallback: str | None = None  # the target (or WALK) that answers when this one can't
    count: str | None = None  # BPF function that only counts hits (clones)
    # Attached only when this other target cannot be decoded: its answer is the same, cheaper.
    unless_decoded: str | None = None
    args: tuple[Arg, ...] = ()  # what its entry program reads, each declared once

    @property
    def attach(self) -> str:
        """The strategy when traceable: "kprobe", "kprobe+kretprobe", or "count"."""
        return "+".join(kind for kind, _ in self.programs) or "count"

    @property
    def trampoline(self) -> tuple[tuple[str, str], ...]:
        """(probe kind, BPF function) when attached by BPF trampoline: the same handlers, called
        by BCC's kfunc__/kretfunc__ programs (the loader finds BCC's exact name)."""
        return tuple((TRAMPOLINE_KIND[kind], f"{TRAMPOLINE_PREFIX[kind]}{self.name}")
                     for kind, _ in self.programs)

    @property
    def trampoline_attach(self) -> str:
        """The strategy when attached by trampoline: "fentry" or "fentry+fexit"."""
        return "+".join(kind for kind, _ in self.trampoline)


# A kprobe's counterpart on a BPF trampoline (kernel/compat.py BPF_TRAMPOLINE), and the prefix
# of the program BCC makes for it.
TRAMPOLINE_KIND = {"kprobe": "fentry", "kretprobe": "fexit"}
TRAMPOLINE_PREFIX = {"kprobe": "kfunc__", "kretprobe": "kretfunc__"}


def _since(change: compat.Change) -> tuple[int, int]:
    """The release a change came in, for a target that exists since it."""
    assert change.since is not None, change
    return change.since


TARGETS = (
    # mm/sparse-vmemmap.c, 5.19+: the populate loop for one section of a compound-page pgmap.
    # Static and called once: every Debian build inlines it into __populate_section_memmap.
    Target("vmemmap_populate_compound_pages", (), _since(compat.FEATURE), INFO,
           "one call per section of a compound devmap (start_pfn, vmemmap range, pgmap)",
           fallback="__populate_section_memmap"),
    # mm/sparse-vmemmap.c: the caller; its pgmap argument came in 5.19 (kernel/compat.py).
    Target("__populate_section_memmap",
           (("kprobe", "section_enter"), ("kretprobe", "section_return")), (5, 4), SECTIONS,
           "one call per section: pfn, nr_pages, altmap, pgmap->vmemmap_shift",
           args=(Arg(("pfn",), 0), Arg(("nr_pages",), 1), Arg(("altmap",), 3),
                 Arg(("pgmap",), 4, compat.SECTION_PGMAP))),
    # mm/sparse-vmemmap.c, 5.19+; its reuse argument became (ptpfn, flags) in 6.15 (compat.py).
    Target("vmemmap_populate_address", (("kprobe", "vpa_enter"), ("kretprobe", "vpa_return")),
           _since(compat.FEATURE), POPULATE,
           "one call per vmemmap page: the PTE it installs and whether its page is reused",
           fallback=WALK, args=(Arg(("addr",), 0), Arg(("reuse", "ptpfn"), 3))),
    # The allocators, outermost first: vmemmap_alloc_block_buf -> altmap_alloc_block_buf (the
    # device's own pages) or vmemmap_alloc_block (the page allocator, also every page-table
    # page). Any of them may be inlined at every call site and still be probeable (Debian 7.3's
    # vmemmap_alloc_block_buf): all are attached where they can be, and the probes count only
    # the outermost call that fires and returns memory (bpf/vmemtrace.bpf.c, alloc_return).
    Target("vmemmap_alloc_block_buf",
           (("kprobe", "alloc_buf_enter"), ("kretprobe", "alloc_buf_return")), (4, 5), ALLOC,
           "one call per vmemmap page or PMD block allocated", fallback=WALK,
           args=(Arg(("size",), 0),)),
    Target("altmap_alloc_block_buf",
           (("kprobe", "alloc_altmap_enter"), ("kretprobe", "alloc_buf_return")), (4, 5), ALLOC,
           "one call per vmemmap block allocated from the device (altmap)", fallback=WALK,
           args=(Arg(("size",), 0),)),
    Target("vmemmap_alloc_block",
           (("kprobe", "alloc_block_enter"), ("kretprobe", "alloc_block_return")), (2, 6), ALLOC,
           "one call per page allocated for the vmemmap or its page tables", fallback=WALK,
           args=(Arg(("size",), 0),)),
    # mm/page_alloc.c up to 6.3, mm/mm_init.c from 6.4: stable signature 5.17-7.3.
    Target("memmap_init_zone_device", (("kprobe", "mizd_enter"), ("kretprobe", "mizd_return")),
           (4, 19), RANGES, "one call per pgmap range: zone, start_pfn, nr_pages, pgmap; its duration",
           args=(Arg(("start_pfn",), 1), Arg(("nr_pages",), 2), Arg(("pgmap",), 3))),
    # mm/page_alloc.c (5.17+): initialises the struct pages of one compound page. Static: out
    # of line in Debian's 6.1/6.12, only a .constprop clone in 7.3 and trixie's 6.12.
    Target("memmap_init_compound", (("kprobe", "mic_enter"),), _since(compat.COMPOUND_DEVMAP), INIT,
           "one call per compound page: how many struct pages it initialises",
           count="mic_count", fallback="__init_zone_device_page", args=(Arg(("nr_pages",), 5),)),
    # One call per struct page initialised: counted only where memmap_init_compound's nr_pages
    # cannot be read, since it costs a probe hit per struct page instead of per compound page.
    Target("__init_zone_device_page", (), _since(compat.COMPOUND_DEVMAP), INIT_PAGES,
           "one call per struct page initialised", count="izdp_count",
           unless_decoded="memmap_init_compound"),
)

BY_NAME = {t.name: t for t in TARGETS}

# What is left behind can be read instead of the act: the vmemmap page tables (kernel/kcore.py),
# walked once memmap_init_zone_device has returned for the range.
WALK_TARGETS = tuple(t.name for t in TARGETS if t.fallback == WALK)

# memmap_init_zone_device is the one target without which nothing can be verified: it names every
# device range and it is traceable on every kernel measured.
REQUIRED = "memmap_init_zone_device"

# Every target's name: kallsyms and ftrace are searched for these, and the BTF is asked for
# their argument counts (kernel/btf.py), which compile the fentry/fexit programs of those that
# have programs (bpf/vmemtrace.bpf.c). One tuple, so that the BTF is read once per process.
FUNCTIONS = tuple(t.name for t in TARGETS)

# Every BPF function the registry names (tests: each exists in bpf/vmemtrace.bpf.c and loads).
PROGRAMS = tuple(sorted({fn for t in TARGETS for _, fn in t.programs} |
                        {t.count for t in TARGETS if t.count}))
