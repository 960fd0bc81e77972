"""The probe targets: the one list every command, the BPF program and the tests draw from.

`since` is the upstream release that introduced the function (git log -S of mm/sparse-vmemmap.c,
mm/page_alloc.c, mm/mm_init.c); it only decides whether a function missing from kallsyms is
reported "inlined" (the source has it, this build folded it into its caller) or "absent".
"""

from dataclasses import dataclass
from typing import Optional, Tuple


@dataclass(frozen=True)
class Target:
    name: str
    attach: str  # "kprobe", "kretprobe" or "kprobe+kretprobe" when traceable
    since: Tuple[int, int]
    tells: str
    fallback: Optional[str] = None  # the target that answers the same question when this one can't
    deep_only: bool = False  # per-struct-page: only in an explicit deep mode


WALK = "page-table walk"

TARGETS = (
    # mm/sparse-vmemmap.c, 5.19+: the populate loop for one section of a compound-page pgmap.
    # Static and called once: every Debian build inlines it into __populate_section_memmap.
    Target("vmemmap_populate_compound_pages", "kprobe", (5, 19),
           "one call per section of a compound devmap (start_pfn, vmemmap range, pgmap)",
           fallback="__populate_section_memmap"),
    # mm/sparse-vmemmap.c: the caller; pgmap argument added in 5.19 ("mm/sparse-vmemmap: add a
    # pgmap argument to section activation").
    Target("__populate_section_memmap", "kprobe+kretprobe", (5, 4),
           "one call per section: pfn, nr_pages, altmap, pgmap->vmemmap_shift"),
    # mm/sparse-vmemmap.c, 5.19-6.14: pte_t *(addr, node, altmap, struct page *reuse);
    # 6.15+: (addr, node, altmap, unsigned long ptpfn, unsigned long flags).
    Target("vmemmap_populate_address", "kprobe+kretprobe", (5, 19),
           "one call per vmemmap page: the PTE it installs and whether its page is reused",
           fallback=WALK),
    # Entry only: the allocation happens inside a vmemmap_populate_address call, whose return
    # says whether it succeeded (bpf/vmemtrace.bpf.c, alloc_enter).
    Target("vmemmap_alloc_block_buf", "kprobe", (4, 5),
           "one call per freshly allocated vmemmap page", fallback=WALK),
    # mm/page_alloc.c up to 6.3, mm/mm_init.c from 6.4: stable signature 5.17-6.19.
    Target("memmap_init_zone_device", "kprobe+kretprobe", (4, 19),
           "one call per pgmap range: zone, start_pfn, nr_pages, pgmap; its duration"),
    # mm/page_alloc.c (5.17+): initialises the struct pages of one compound page.
    Target("memmap_init_compound", "kprobe", (5, 17),
           "one call per compound page: how many struct pages it initialises"),
    Target("__init_zone_device_page", "kprobe", (5, 17),
           "one call per struct page initialised", deep_only=True),
)

# What is left behind can be read instead of the act: the vmemmap page tables (kernel/kcore.py),
# walked once memmap_init_zone_device has returned for the range.
WALK_TARGETS = tuple(t.name for t in TARGETS if t.fallback == WALK)

BY_NAME = {t.name: t for t in TARGETS}

# memmap_init_zone_device is the one target without which nothing can be verified: it names every
# device range and it is traceable on every kernel measured (lab-notes.md).
REQUIRED = "memmap_init_zone_device"
