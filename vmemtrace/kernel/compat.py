"""What differs between kernel releases, in one place, each change with the upstream change that
made it (libbpf-tools' core_fixes.bpf.h and drgn's helpers keep theirs the same way).

Versions are the last resort: facts are read from the running kernel first (kallsyms, ftrace,
BTF, headers), and a version decides only what those cannot show. Debian backports fixes into
stable kernels, so a version never stands in for a fix (VMSTAT_DAX_FIX has none).
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class Change:
    since: tuple[int, int] | None  # the upstream release; None: judged by what a kernel does
    what: str
    upstream: str  # the commit's title (and id where known) and its release


COMPOUND_DEVMAP = Change(
    (5, 17), "device-dax sets pgmap->vmemmap_shift from the device's align; "
             "memmap_init_compound() and __init_zone_device_page() appear",
    '"device-dax: compound devmap support" (5.17)')

FEATURE = Change(
    (5, 19), "compound devmaps keep 2 vmemmap pages per compound page and map every other tail "
             "vmemmap page onto the second (vmemmap_populate_compound_pages, "
             "vmemmap_populate_address); memmap_init_zone_device() initialises 2 pages' worth of "
             "struct pages per compound page",
    '"mm/sparse-vmemmap: improve memory savings for compound devmaps", series "sparse-vmemmap: '
    'memory savings for compound devmaps (device-dax)" v9 (5.19)')

# A kprobe whose BPF program cannot run because another BPF program, or a map system call
# (bpf_disable_instrumentation()), holds bpf_prog_active on that CPU is skipped; since 6.7
# trace_call_bpf() counts each skip in the program's stats (bpf_prog_info.recursion_misses).
KPROBE_MISSES = Change(
    (6, 7), "kprobe BPF programs skipped for recursion are counted (recursion_misses)",
    '"bpf: Count missed stats in trace_call_bpf", series "bpf: Add missed stats for kprobes" '
    '(Jiri Olsa, 6.7)')

# fentry/fexit: a BPF program called from the function's own trampoline (a direct call patched
# into its ftrace site) instead of a kprobe's breakpoint or ftrace handler; the function must be
# in the kernel's BTF. vmemtrace attaches by trampoline where it can: cheaper per hit (docs/performance.md).
BPF_TRAMPOLINE = Change(
    (5, 5), "fentry/fexit BPF programs run from a BPF trampoline of the traced function (x86_64)",
    '"bpf: Introduce BPF trampoline" fec56f5890d9 (5.5)')
# A trampoline's program skipped because it was already running on that CPU is counted in
# bpf_prog_info.recursion_misses from 5.12 (kprobes only from 6.7: KPROBE_MISSES).
TRAMPOLINE_MISSES = Change(
    (5, 12), "fentry/fexit programs skipped for recursion are counted (recursion_misses)",
    '"bpf: Count the number of times recursion was prevented" 9ed9e9ba2337 (5.12)')

# The layout that follows the two-page one (not in a release yet): read from the mm tree
# (include/linux/vmemmap-optimization.h, mm/sparse-vmemmap.c vmemmap_populate_compound_pages()),
# never seen by vmemtrace in a running kernel (judge/layouts.py marks it not validated).
SHARED_TAIL_DAX = Change(
    None, "device-dax compound pages keep 1 vmemmap page (the head page); every tail vmemmap "
          "page maps a read-only page shared per zone and order (vmemmap_shared_tail_page()); "
          "mem_section carries the compound order (section_compound_order())",
    'series "mm: Switch device DAX to section-based vmemmap optimization" (Muchun Song, v5, '
    '2026): "mm/sparse-vmemmap: factor out shared vmemmap tail page allocation", "... switch '
    'device DAX to shared tail vmemmap pages", "... drop the extra tail page from device DAX '
    'reservation"; in mm-unstable and linux-next (next-20261008), not yet in a release')

# HugeTLB Vmemmap Optimisation (mm/hugetlb_vmemmap.c; judge/hvo.py): the layouts it has had.
HVO_ONE_PAGE = Change(
    (5, 18), "HVO keeps 1 vmemmap page per hugetlb folio (the head's) and maps every tail "
             "vmemmap PTE onto it read-only (it kept 2 from 5.14)",
    '"mm: hugetlb: free the 2nd vmemmap page associated with each HugeTLB page" (Muchun Song, '
    '5.18)')
# In releases (Debian's 7.3.4 has it); read from BTF, never from a version: struct zone
# gains vmemmap_tails[].
HVO_SHARED_TAIL = Change(
    None, "HVO maps tail vmemmap PTEs onto a read-only page of tail struct pages shared per zone "
          "and order (zone->vmemmap_tails[]) instead of the head's page",
    '"mm/hugetlb: Remove fake head pages", series "Eliminate fake head pages" (Kiryl '
    'Shutsemau, v7, 2026)')

SECTION_PGMAP = Change(
    (5, 19), "__populate_section_memmap(pfn, nr_pages, nid, altmap, pgmap): pgmap added",
    '"mm/sparse-vmemmap: add a pgmap argument to section activation" (5.19)')

# The architecture's opt-in to the device-dax vmemmap optimisation: include/linux/mm.h compiles
# __vmemmap_can_optimize() only under this config symbol (otherwise it is false). It has no
# prompt, so a .config carries it as "=y" where the architecture selects it and not at all
# elsewhere: a readable config without the line means "not on this architecture".
ARCH_GATE = Change(
    (6, 4), "vmemmap_can_optimize() needs CONFIG_ARCH_WANT_OPTIMIZE_VMEMMAP (selected by x86_64 "
            "and powerpc book3s64, not by arm64, s390 or loongarch)",
    '"mm/vmemmap/devdax: fix kernel crash when probing devdax devices" 87a7ae75d738 (6.4)')
ARCH_GATE_DAX = Change(
    (6, 6), "the gate is CONFIG_ARCH_WANT_OPTIMIZE_DAX_VMEMMAP, split from the HugeTLB one",
    '"mm/vmemmap: allow architectures to override how vmemmap optimization works" '
    '0b6f15824cc7 (6.6)')


def arch_gate(version: tuple) -> str | None:
    """The config symbol that gates the optimisation on this release, None before there was one."""
    if has(version, ARCH_GATE_DAX):
        return "ARCH_WANT_OPTIMIZE_DAX_VMEMMAP"
    if has(version, ARCH_GATE):
        return "ARCH_WANT_OPTIMIZE_VMEMMAP"
    return None


# What each architecture's kernel does with device-dax vmemmap, for `check` to say where vmemtrace
# cannot look (its probes decode, and its walk reads, x86_64 page tables only; the lab boots
# x86_64). Keys are `uname -m`.
ARCH_BEHAVIOUR = {
    "x86_64": "optimises with the generic vmemmap_populate_compound_pages() "
              "(selects CONFIG_ARCH_WANT_OPTIMIZE_DAX_VMEMMAP)",
    "aarch64": "does not optimise since 87a7ae75d738 (6.4, backported to 6.1.y): arm64 does not "
               "select the gate; 5.19 to 6.3 optimised with the generic code",
    "s390x": "does not optimise since 87a7ae75d738 (6.4, backported to 6.1.y): s390 does not "
             "select the gate",
    "loongarch64": "does not optimise since 87a7ae75d738 (6.4): loongarch does not select the gate",
    "ppc64le": "optimises only under the radix MMU (vmemmap_can_optimize() is radix_enabled(), "
               "6.6), with its own vmemmap_populate_compound_pages() and static helpers that no "
               "probe here decodes; never under the hash MMU",
    "ppc64": "optimises only under the radix MMU (vmemmap_can_optimize() is radix_enabled(), 6.6), "
             "with its own vmemmap_populate_compound_pages(); never under the hash MMU",
    "riscv64": "optimises since 6.11 (selects CONFIG_ARCH_WANT_OPTIMIZE_DAX_VMEMMAP); its PTEs "
               "keep the pfn at bit 10, which this tool does not decode",
}
# The kernel config symbol of each architecture (a recorded root says its architecture there).
ARCH_CONFIG = (("X86_64", "x86_64"), ("ARM64", "aarch64"), ("S390", "s390x"),
               ("LOONGARCH", "loongarch64"), ("PPC64", "ppc64le"), ("RISCV", "riscv64"))
OBSERVED_ARCH = "x86_64"


MM_INIT = Change(
    (6, 4), "memmap_init_zone_device() and its helpers move from mm/page_alloc.c to mm/mm_init.c",
    '"mm: move most of core MM initialization to mm/mm_init.c" (6.4)')

VPA_PTPFN = Change(
    (6, 15), "vmemmap_populate_address(addr, node, altmap, ptpfn, flags): a pfn to reuse, or -1 "
             "to allocate, instead of struct page *reuse (NULL to allocate)",
    '"mm/sparse: add vmemmap_*_hvo functions" (6.15)')

NR_MEMMAP_PAGES = Change(
    (6, 11), "/proc/vmstat nr_memmap_pages counts memmap pages",
    '"mm: report per-page metadata information" (6.11)')

VMSTAT_DAX_FIX = Change(
    None, "nr_memmap_pages counts the optimised size of a compound devmap; without the fix it "
          "adds the unoptimised size although only 2 pages per compound page are allocated",
    '"Fix DAX vmemmap accounting with optimization" (2026; Fixes: 15995a352474; sent to '
    'stable: 7.0 still over-reports, Debian\'s 7.3.4 and 6.12.117 are exact)')


BOOT_MEMMAP_INIT = Change(
    None, "compound_nr_pages() initialises every struct page of a compound page whose head lies "
          "in an early (boot) section: such a piece reuses the unoptimised boot memmap "
          "(section_activate()), so skipping tails would leave them uninitialised",
    '"mm/mm_init: fix uninitialized struct pages for ZONE_DEVICE" (Muchun Song, 2026; merged '
    'into mm-stable 2026-05-28; Fixes: 6fd3620b3428 "mm/page_alloc: reuse tail struct pages '
    'for compound devmaps"; Cc stable)')


def has(version: tuple, change: Change) -> bool:
    """Whether a kernel of this version has the change (only for changes with a release)."""
    return change.since is not None and tuple(version[:2]) >= change.since
