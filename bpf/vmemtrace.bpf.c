// SPDX-License-Identifier: GPL-2.0
/*
 * vmemtrace: watch the kernel build the vmemmap of device-dax memory (BCC program).
 *
 * One program for every kernel, parametrised by defines that vmemtrace/probes/program.py takes
 * from the kernel's BTF (headers and version only without it); nothing here is pasted together
 * from strings. Every kprobe function is compiled, and an fentry/fexit pair for each target
 * the kernel's BTF has; the attach plan decides which ones are loaded and attached
 * (vmemtrace/probes/targets.py names them), so the compile does not wait for the plan (it runs
 * while the kernel's facts are read):
 *
 *   section_*      __populate_section_memmap(pfn, nr_pages, nid, altmap[, pgmap])
 *   vpa_*          vmemmap_populate_address(addr, node, altmap, reuse|ptpfn[, flags])
 *   alloc_buf_*    vmemmap_alloc_block_buf(size, node, altmap)
 *   alloc_altmap_* altmap_alloc_block_buf(size, altmap)
 *   alloc_block_*  vmemmap_alloc_block(size, node)
 *   mizd_*         memmap_init_zone_device(zone, start_pfn, nr_pages, pgmap)
 *   mic_enter      memmap_init_compound(head, head_pfn, zone_idx, nid, pgmap, nr_pages)
 *   *_count        hits only, no argument read: safe on a .constprop/.isra clone, whose
 *                  calling convention the compiler changed
 *
 *   HAVE_SECTION_PGMAP  __populate_section_memmap has the pgmap argument (5.19+)
 *   HAVE_VMEMMAP_SHIFT  struct dev_pagemap has vmemmap_shift (5.17+)
 *   VPA_PTPFN           vmemmap_populate_address takes (ptpfn, flags), ptpfn -1 = allocate (6.15+)
 *   VT_ARGS_<function>  the function is in BTF with this many arguments: its fentry/fexit
 *                       programs are compiled (vmemtrace/kernel/btf.py, Signatures.arity)
 *   VT_POS_<function>__<argument>  where that argument sits, found by its name in the
 *                       kernel's BTF prototype (vmemtrace/probes/args.py; the version rule
 *                       without BTF); VT_NARGS_<function> the arguments its fentry lists
 *
 * Aggregation happens here: one event per section and per range (perf buffers, each with its
 * own named struct of vmemtrace.h, decoded by field name in user space), and one summary per
 * range of its compound pages. A compound page is kept in a map entry while it is populated;
 * when all its vmemmap PTEs are there it is judged into its range's summary (struct cp_sum: the
 * layout classes, per-part digests and the difference table of vmemtrace/log/compounds.py,
 * computed the same way) and its entry freed. Only a page whose layout is none of its range's
 * CP_CLASSES classes is sent on its own. The summary, and the pages that cannot complete, are
 * sent when the range is initialised (cp_send_range()): a 1 TiB range's 524288 compound pages
 * of 2 MiB cost one summary and no memory beyond it. User space reads no map while the
 * probes fire: a map system call disables BPF tracing programs on its CPU while it runs
 * (bpf_disable_instrumentation(), kernel/bpf/syscall.c), and a kprobe that fires meanwhile is
 * skipped, unseen. Nothing is emitted per vmemmap page; per struct page only a counter, and
 * only where memmap_init_compound is a clone.
 *
 * Probes that attach can still be blind: the compiler may inline every call of a function and
 * keep an unused out-of-line copy (Debian 7.3's vmemmap_alloc_block_buf). So every probe counts
 * its hits (struct hits_t), every counter below says what it saw, and user space checks that
 * the counts add up (vmemtrace/judge/account.py) instead of reading a silent probe as zero.
 *
 * All probes are nested calls of one thread (memremap_pages() -> pagemap_range() ->
 * add_pages() -> ... -> __populate_section_memmap(), then memmap_init_zone_device()), so the
 * per-thread context maps below tie callees to their caller.
 */
#include <uapi/linux/ptrace.h>

#include "vmemtrace.h" /* the structs user space reads: the event contract */

/*
 * Struct layout. vmemtrace/probes/program.py passes the sizes and offsets the program reads as
 * LAYOUT_<name> defines, taken from the kernel's BTF (vmemtrace/kernel/btf.py Layout): BCC
 * parsing linux/mm_types.h and linux/memremap.h is most of its compile time. Without BTF it
 * passes LAYOUT_FROM_HEADERS and the same numbers come from those headers; LAYOUT_CHECK (tests)
 * has the compiler compare both. VT_LAYOUT is the one list of them: (name, its value in the
 * headers); VT_L(name) is the value the program reads.
 */
#define VT_LAYOUT(X)                                              \
    X(STRUCT_PAGE, sizeof(struct page))                           \
    X(PGMAP_ALTMAP, offsetof(struct dev_pagemap, altmap))         \
    X(PGMAP_FLAGS, offsetof(struct dev_pagemap, flags))           \
    X(PGMAP_NR_RANGE, offsetof(struct dev_pagemap, nr_range))     \
    X(PGMAP_RANGES, offsetof(struct dev_pagemap, ranges))         \
    X(ALTMAP_BASE_PFN, offsetof(struct vmem_altmap, base_pfn))    \
    X(ALTMAP_RESERVE, offsetof(struct vmem_altmap, reserve))      \
    X(ALTMAP_FREE, offsetof(struct vmem_altmap, free))            \
    X(RANGE_SIZE, sizeof(struct range))                           \
    VT_LAYOUT_SHIFT(X)
/* dev_pagemap.vmemmap_shift came in 5.17: read only where the kernel has it. */
#ifdef HAVE_VMEMMAP_SHIFT
#define VT_LAYOUT_SHIFT(X) X(PGMAP_VMEMMAP_SHIFT, offsetof(struct dev_pagemap, vmemmap_shift))
#else
#define VT_LAYOUT_SHIFT(X)
#endif

#if defined(LAYOUT_FROM_HEADERS) || defined(LAYOUT_CHECK)
#include <linux/mm_types.h>
#include <linux/memremap.h>
#include <linux/range.h>
#define VT_HDR_VALUE(name, value) VT_HDR_##name = (value),
enum vt_hdr_layout { VT_LAYOUT(VT_HDR_VALUE) };
#endif

#ifdef LAYOUT_FROM_HEADERS
#define VT_L(name) VT_HDR_##name
#else
#define VT_L(name) LAYOUT_##name
#endif

#ifdef LAYOUT_CHECK
#define VT_HDR_ASSERT(name, value) _Static_assert(LAYOUT_##name == (value), #name);
VT_LAYOUT(VT_HDR_ASSERT)
#endif

/* include/linux/memremap.h: "pgmap->altmap is valid" (bit 0 of dev_pagemap.flags since 4.20). */
#define VT_PGMAP_ALTMAP_VALID (1U << 0)

/* x86_64 pte: physical frame number bits 12..51 (arch/x86/include/asm/pgtable_types.h), less
 * what the kernel takes out of physical_mask (read per section: kaddrs_t). */
#define VT_PTE_PFN_MASK 0x000ffffffffff000ULL

struct section_ctx {
    struct section_event ev;
    u64 range_pages;       /* pfns in the pgmap range being populated (0: not read) */
    u64 start_addr;        /* vmemmap address of pfn: the first populate call's addr */
    /* The vmemmap_populate_address call in flight (calls do not nest): kept here rather than
     * in a map of its own, one hash update and delete less per vmemmap page. */
    u64 vpa_live;
    u64 vpa_addr;
    u64 vpa_reuse;
    u64 vpa_allocs;        /* successful allocations during this call */
    u64 vpa_alloc_addr;    /* ... the last one's address: the page a new PTE maps */
    /* From kernel data, read when the section starts (kaddrs_t): the PTE's address bits, and
     * the direct map's base (0: unknown, fresh then counted by allocations alone). */
    u64 pte_mask;
    u64 page_offset;
    /* The allocator call in flight: vmemmap_alloc_block_buf calls vmemmap_alloc_block or
     * altmap_alloc_block_buf, and only the outermost call's return counts. */
    u64 alloc_depth;
    u64 alloc_size;
    u64 alloc_buf;         /* the outermost call is a *_block_buf: never a page table */
    /* The compound page being populated: a copy of its map entry, written back when the next
     * compound page starts and when the section returns (one map update per compound page
     * and section instead of one per vmemmap page). */
    u64 cp_head;
    u64 cp_live;
    struct cp_val cp;
};

struct range_ctx {
    struct range_event ev;
    u64 ts;
    u64 range_start;       /* the pgmap range's first pfn: its summary's key (an altmap range's
                            * start_pfn lies past the pfns the altmap holds) */
    u64 range_pages;
};

BPF_PERF_OUTPUT(section_events);
BPF_PERF_OUTPUT(range_events);
BPF_PERF_OUTPUT(compound_events);
BPF_PERF_OUTPUT(summary_events);
BPF_HASH(sections, u32, struct section_ctx, 1024);
BPF_HASH(ranges, u32, struct range_ctx, 1024);
BPF_F_TABLE("hash", u64, struct cp_val, compound, CP_MAP_ENTRIES, BPF_F_NO_PREALLOC);
BPF_F_TABLE("hash", u64, struct cp_sum, cp_sums, 1024, BPF_F_NO_PREALLOC);
BPF_PERCPU_ARRAY(cp_sum_zero, struct cp_sum, 1); /* a zeroed value: 2 KiB is over the stack */
BPF_ARRAY(errors, struct errors_t, 1);
BPF_ARRAY(kaddrs, struct kaddrs_t, 1);
BPF_PERCPU_ARRAY(hits, struct hits_t, 1);

/* BCC rewrites map calls only outside macros: the lookups live in functions. */
static __always_inline struct errors_t *error_counters(void)
{
    int zero = 0;
    return errors.lookup(&zero);
}

static __always_inline struct hits_t *hit_counters(void)
{
    int zero = 0;
    return hits.lookup(&zero);
}

#define COUNT_ERROR(field)                              \
    do {                                                \
        struct errors_t *e_ = error_counters();         \
        if (e_)                                         \
            __sync_fetch_and_add(&e_->field, 1);        \
    } while (0)

#define HIT(field)                                      \
    do {                                                \
        struct hits_t *h_ = hit_counters();             \
        if (h_)                                         \
            h_->field++;                                \
    } while (0)

static __always_inline u32 tid(void)
{
    return (u32)bpf_get_current_pid_tgid();
}

/* The pfns per compound page, and the start pfn and size of the range being populated (5.19+:
 * mm/sparse-vmemmap.c, reuse_compound_section(), reads the same ranges[nr_range]). */
static __always_inline void read_pgmap(void *pgmap, u64 *pfns, u64 *range_start, u64 *range_pages)
{
    *pfns = 1;
    *range_start = 0;
    *range_pages = 0;
    if (!pgmap)
        return;
#ifdef HAVE_VMEMMAP_SHIFT
    u64 shift = 0;
    bpf_probe_read_kernel(&shift, sizeof(shift), pgmap + VT_L(PGMAP_VMEMMAP_SHIFT));
    if (shift < 64)
        *pfns = 1ULL << shift;
#endif
    int nr_range = 0;
    u64 range[2] = {}; /* struct range { u64 start; u64 end; }, end inclusive (include/linux/range.h) */
    bpf_probe_read_kernel(&nr_range, sizeof(nr_range), pgmap + VT_L(PGMAP_NR_RANGE));
    if (nr_range < 0 || nr_range > 64)
        return;
    if (bpf_probe_read_kernel(&range, sizeof(range),
                              pgmap + VT_L(PGMAP_RANGES) + nr_range * VT_L(RANGE_SIZE)) == 0) {
        *range_start = range[0] >> PAGE_SHIFT;
        if (range[1] >= range[0])
            *range_pages = (range[1] - range[0] + 1) >> PAGE_SHIFT;
    }
}

/* The PTE address mask and the direct map's base, as the kernel has them: physical_mask leaves
 * out an SME/SEV C-bit or a confidential guest's shared bit (arch/x86/mm/mem_encrypt_identity.c
 * clears sme_me_mask from it), and __pa() of a direct-map address subtracts page_offset_base
 * (arch/x86/include/asm/page_64.h, KASLR's base). */
static __always_inline void read_kaddrs(struct section_ctx *s)
{
    int zero = 0;
    u64 v = 0;
    struct kaddrs_t *k = kaddrs.lookup(&zero);
    s->pte_mask = VT_PTE_PFN_MASK;
    s->page_offset = 0;
    if (!k)
        return;
    if (k->physical_mask && bpf_probe_read_kernel(&v, sizeof(v), (void *)k->physical_mask) == 0)
        s->pte_mask &= v;
    else if (k->sme_me_mask && bpf_probe_read_kernel(&v, sizeof(v), (void *)k->sme_me_mask) == 0)
        s->pte_mask &= ~v;
    if (k->page_offset_base)
        bpf_probe_read_kernel(&s->page_offset, sizeof(s->page_offset), (void *)k->page_offset_base);
}

/* Write the compound page held in the section context back to its map entry. */
static __always_inline void cp_store(struct section_ctx *s)
{
    if (s->cp_live) {
        u64 head = s->cp_head;
        compound.update(&head, &s->cp);
        s->cp_live = 0;
    }
}

/* Make `head` the compound page held in the section context: its map entry so far (a 1 GiB
 * compound page spans 8 sections, and reuse_compound_section() in mm/sparse-vmemmap.c maps a
 * later section's PTEs onto the tail page allocated in the first), or a new one. */
static __always_inline int cp_load(struct section_ctx *s, u64 head)
{
    if (s->cp_live && s->cp_head == head)
        return 1;
    cp_store(s);
    struct cp_val zero = {};
    zero.head_pfn = head;
    zero.range_start_pfn = s->ev.range_start_pfn;
    zero.pfns_per_compound = s->ev.pfns_per_compound;
    struct cp_val *c = compound.lookup_or_try_init(&head, &zero);
    if (!c) {
        COUNT_ERROR(compound_map_full);
        return 0;
    }
    s->cp = *c;
    s->cp_head = head;
    s->cp_live = 1;
    return 1;
}

/* splitmix64's finaliser: log/compounds.py mix(), bit for bit. */
#define VT_GOLDEN 0x9E3779B97F4A7C15ULL
static __always_inline u64 vt_mix(u64 z)
{
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

static __always_inline u64 vt_step(u64 h, u64 v)
{
    return vt_mix((h ^ v) + VT_GOLDEN);
}

/* A compound page's (head, layout) as 64 bits: log/compounds.py digest(), fields in its LAYOUT
 * order. */
static __always_inline u64 cp_digest(struct cp_val *c)
{
    u64 h = vt_step(0, c->head_pfn);
    h = vt_step(h, c->ptes);
    h = vt_step(h, c->fresh);
    h = vt_step(h, c->reused);
    h = vt_step(h, c->on_tail);
    h = vt_step(h, c->tail_pfn);
    h = vt_step(h, c->head_fresh);
    return vt_step(h, c->tail_fresh);
}

/* Two pages of one layout class: log/compounds.py CLASS. */
static __always_inline int cp_same_class(struct cp_val *a, struct cp_val *b)
{
    return a->ptes == b->ptes && a->fresh == b->fresh && a->reused == b->reused &&
           a->existing == b->existing && a->head_fresh == b->head_fresh &&
           a->tail_fresh == b->tail_fresh && a->on_tail == b->on_tail &&
           a->max_index == b->max_index && a->out_of_order == b->out_of_order;
}

/*
 * A range's compound pages, judged as they complete into its struct cp_sum (vmemtrace/log/compounds.py CompoundPages, whose
 * constants the loader passes as CP_* defines): CP_CLASSES layout classes, each with its page
 * count and lowest-headed page; per part of 2^part_shift pages (part_shift chosen so that the
 * range has at most CP_PARTS parts) the pages and the sum of their digests; the difference
 * table, CP_TABLE_HASHES sub-tables of CP_TABLE_WIDTH cells of (pages, head xor, digest xor,
 * check xor). One thread populates a range (memremap_pages() -> pagemap_range()), so no cell
 * is written by two CPUs at once.
 */

/* The range's summary, made on its first compound page: parts of 2^part_shift pages, the
 * smallest shift from CP_PART_SHIFT up that leaves the range at most CP_PARTS parts. */
static __always_inline struct cp_sum *cp_summary(struct section_ctx *s, u64 key)
{
    struct cp_sum *r = cp_sums.lookup(&key);
    if (r)
        return r;
    int zero = 0;
    struct cp_sum *z = cp_sum_zero.lookup(&zero);
    if (!z)
        return 0;
    cp_sums.update(&key, z);
    r = cp_sums.lookup(&key);
    if (!r)
        return 0;
    u64 n = s->range_pages / s->ev.pfns_per_compound, shift = CP_PART_SHIFT;
#pragma unroll
    for (int i = 0; i < 40; i++) {
        if (n == 0 || ((n - 1) >> shift) < CP_PARTS)
            break;
        shift++;
    }
    r->range_start_pfn = key;
    r->pfns_per_compound = s->ev.pfns_per_compound;
    r->part_shift = shift;
    r->lowest_head = (u64)-1;
    r->reused_head = (u64)-1;
    return r;
}

/* Into the page's layout class: 0 where the range has CP_CLASSES others already. */
static __always_inline int cp_classify(struct cp_sum *r, struct cp_val *c)
{
#pragma unroll
    for (int i = 0; i < CP_CLASSES; i++) {
        struct cp_class *k = &r->classes[i];
        if (k->pages == 0) {
            k->first = *c;
            k->pages = 1;
            return 1;
        }
        if (cp_same_class(&k->first, c)) {
            k->pages++;
            if (c->head_pfn < k->first.head_pfn)
                k->first = *c;
            return 1;
        }
    }
    return 0;
}

/* A complete compound page into its range's summary; sent on its own where it does not fit. */
static __always_inline void cp_fold(void *ctx, struct section_ctx *s, struct cp_val *c)
{
    u64 key = c->range_start_pfn, ppc = c->pfns_per_compound;
    struct cp_sum *r = cp_summary(s, key);
    if (!r) {
        COUNT_ERROR(compound_map_full);
        goto send;
    }
    u64 part = ((c->head_pfn - key) / ppc) >> r->part_shift;
    if (part >= CP_PARTS || !cp_classify(r, c))
        goto send; /* a range larger than its pgmap said, or a fifth layout */
    r->count++;
    if (c->head_pfn < r->lowest_head)
        r->lowest_head = c->head_pfn;
    if (c->head_pfn > r->highest_head)
        r->highest_head = c->head_pfn;
    if (c->reused && c->head_pfn < r->reused_head)
        r->reused_head = c->head_pfn;
    u64 d = cp_digest(c), chk = vt_mix(d + VT_GOLDEN);
    part &= CP_PARTS - 1;
    r->parts[part * CP_PART_WIDTH]++;
    r->parts[part * CP_PART_WIDTH + 1] += d;
#pragma unroll
    for (int j = 0; j < CP_TABLE_HASHES; j++) {
        u32 cell = (j * CP_TABLE_WIDTH + ((chk >> (16 * j)) & (CP_TABLE_WIDTH - 1))) * CP_CELL_WIDTH;
        r->cells[cell]++;
        r->cells[cell + 1] ^= c->head_pfn;
        r->cells[cell + 2] ^= d;
        r->cells[cell + 3] ^= chk;
    }
    return;
send:
    compound_events.perf_submit(ctx, c, sizeof(*c));
}

/* The compound page held in the section context has all its vmemmap PTEs
 * (vmemmap_populate_compound_pages() fills each once): judge it and free its map entry. */
static __always_inline void cp_complete(void *ctx, struct section_ctx *s)
{
    u64 head = s->cp_head;
    cp_fold(ctx, s, &s->cp);
    compound.delete(&head);
    s->cp_live = 0;
}

/*
 * The handlers. Each takes its function's arguments as values, so that one body serves both
 * ways of attaching (the plan chooses per target, vmemtrace/probes/plan.py):
 *   - a kprobe (kretprobe) program, which reads them from the registers (PT_REGS_PARMn, the
 *     x86-64 calling convention; PT_REGS_RC for the return value);
 *   - an fentry (fexit) program, run by the function's BPF trampoline
 *     (kernel/bpf/trampoline.c), which hands them over as an array of u64, the return value
 *     after the arguments. The trampolines are compiled only for a function the kernel's BTF
 *     has, as VT_ARGS_<function> = its argument count (vmemtrace/probes/program.py), and are
 *     cheaper per hit than kprobes (bench/guest_bench.py, docs/performance.md).
 */
static __always_inline int on_section_enter(void *ctx, u64 pfn, u64 nr_pages, u64 altmap,
                                            u64 pgmap)
{
    struct section_ctx s = {};
    u32 t = tid();
    HIT(__populate_section_memmap);
    if (sections.lookup(&t))
        COUNT_ERROR(missed_return); /* the previous call on this thread never returned to us */
    s.ev.pfn = pfn;
    s.ev.nr_pages = nr_pages;
    s.ev.altmap = altmap != 0;
    s.ev.struct_page_size = VT_L(STRUCT_PAGE);
    s.ev.page_size = PAGE_SIZE;
    read_kaddrs(&s);
#ifdef HAVE_SECTION_PGMAP
    s.ev.has_pgmap = pgmap != 0;
    read_pgmap((void *)pgmap, &s.ev.pfns_per_compound, &s.ev.range_start_pfn, &s.range_pages);
#else
    s.ev.pfns_per_compound = 1;
#endif
    sections.update(&t, &s);
    return 0;
}

/* __populate_section_memmap's pgmap argument, where it has one (5.19+, kernel/compat.py). */
#ifdef HAVE_SECTION_PGMAP
#define SECTION_PGMAP(arg) (arg)
#else
#define SECTION_PGMAP(arg) 0
#endif

static __always_inline int on_section_return(void *ctx, u64 memmap)
{
    u32 t = tid();
    struct section_ctx *s = sections.lookup(&t);
    if (!s) {
        COUNT_ERROR(unpaired_return);
        return 0;
    }
    cp_store(s);
    if (s->alloc_depth || s->vpa_live)
        COUNT_ERROR(missed_return);
    /* NULL return: the memmap could not be populated; the event still reports what was done. */
    s->ev.ok = memmap != 0;
    s->ev.pid = bpf_get_current_pid_tgid() >> 32;
    s->ev.ktime_ns = bpf_ktime_get_ns();
    bpf_get_current_comm(&s->ev.comm, sizeof(s->ev.comm));
    section_events.perf_submit(ctx, &s->ev, sizeof(s->ev));
    sections.delete(&t);
    return 0;
}

/* reuse: the fourth argument, a struct page * (NULL: allocate) before 6.15, ptpfn ((unsigned
 * long)-1: allocate) from 6.15 (VPA_PTPFN). */
static __always_inline int on_vpa_enter(u64 addr, u64 reuse)
{
    u32 t = tid();
    HIT(vmemmap_populate_address);
    struct section_ctx *s = sections.lookup(&t);
    if (!s)
        return 0; /* not under __populate_section_memmap: e.g. 6.15's boot-time
                   * vmemmap_populate_hvo() for HugeTLB, which is not device-dax */
    if (s->vpa_live)
        COUNT_ERROR(missed_return);
    s->vpa_live = 1;
    s->vpa_addr = addr;
#ifdef VPA_PTPFN
    s->vpa_reuse = reuse != (u64)-1;
#else
    s->vpa_reuse = reuse != 0;
#endif
    s->vpa_allocs = 0;
    s->vpa_alloc_addr = 0;
    return 0;
}

static __always_inline int on_vpa_return(void *ctx, u64 pte_ptr)
{
    u32 t = tid();
    struct section_ctx *s = sections.lookup(&t);
    u64 pte = 0, backing;
    if (!s)
        return 0;
    if (!s->vpa_live) {
        COUNT_ERROR(unpaired_return);
        return 0;
    }
    s->vpa_live = 0;
    if (pte_ptr == 0 || bpf_probe_read_kernel(&pte, sizeof(pte), (void *)pte_ptr) != 0) {
        COUNT_ERROR(read_failed);
        return 0;
    }
    backing = (pte & s->pte_mask) >> PAGE_SHIFT;
    u64 addr = s->vpa_addr;

    /* Both populate paths start at the vmemmap address of the section's first pfn
     * (vmemmap_populate_compound_pages() and vmemmap_populate_range() begin at `start`). */
    if (s->ev.ptes == 0)
        s->start_addr = addr;
    s->ev.ptes++;
    /* vmemmap_pte_populate() allocates only for an empty PTE without a page to reuse, the
     * page-table pages above it first, its own page last (set_pte_at(..., pfn_pte(__pa(p) >>
     * PAGE_SHIFT, ...))): a PTE is fresh when it maps the last page allocated during its call,
     * a witness independent of the PTE's own counts; a call without reuse that saw no
     * allocation found its PTE there. Without the direct map's base, allocations alone say. */
    int allocated = !s->vpa_reuse && s->vpa_allocs > 0;
    int fresh = allocated;
    if (allocated && s->page_offset) {
        fresh = ((s->vpa_alloc_addr - s->page_offset) >> PAGE_SHIFT) == backing;
        if (!fresh)
            COUNT_ERROR(unmatched_alloc);
    }
    int reused = s->vpa_reuse != 0;
    s->ev.pt_pages += s->vpa_allocs - fresh;
    if (!s->vpa_reuse)
        s->ev.plain++;
    if (fresh)
        s->ev.fresh++;
    else if (reused)
        s->ev.reused++;
    else
        s->ev.existing++;

    u64 ppc = s->ev.pfns_per_compound;
    if (ppc > 1 && addr >= s->start_addr) {
        u64 pfn = s->ev.pfn + (addr - s->start_addr) / VT_L(STRUCT_PAGE);
        u64 start = s->ev.range_start_pfn;
        u64 head = start + ((pfn - start) & ~(ppc - 1));
        u64 index = ((pfn - head) * VT_L(STRUCT_PAGE)) / PAGE_SIZE;
        if (cp_load(s, head)) {
            struct cp_val *c = &s->cp;
            c->ptes++;
            if (fresh) {
                c->fresh++;
                if (index == 0)
                    c->head_fresh = 1;
                if (index == 1) {
                    c->tail_fresh = 1;
                    c->tail_pfn = backing;
                }
            } else if (reused) {
                c->reused++;
                if (c->tail_fresh && backing == c->tail_pfn)
                    c->on_tail++;
            } else {
                c->existing++;
            }
            if (index != c->max_index)
                c->out_of_order++;
            if (index + 1 > c->max_index)
                c->max_index = index + 1;
            if (c->ptes >= (ppc * VT_L(STRUCT_PAGE)) / PAGE_SIZE)
                cp_complete(ctx, s);
        }
    }
    return 0;
}

/* Allocators: vmemmap_alloc_block_buf (data pages and PMD blocks) calls altmap_alloc_block_buf
 * (the device's own pages) or vmemmap_alloc_block (the page allocator, which also serves every
 * page-table page, through vmemmap_alloc_block_zero). Any may be inlined on a given build: all
 * are probed where they can be, the outermost call that fires is the one counted, and only
 * when it returns memory (a failed order-9 attempt followed by the base-page fallback counts
 * once). */
static __always_inline int alloc_enter(unsigned long size, int buf)
{
    u32 t = tid();
    struct section_ctx *s = sections.lookup(&t);
    if (!s)
        return 0; /* boot-time or non-device users */
    if (s->alloc_depth == 0) {
        s->ev.alloc_calls++;
        s->alloc_size = size;
        s->alloc_buf = buf;
    }
    s->alloc_depth++;
    return 0;
}

static __always_inline int alloc_return(u64 memory)
{
    u32 t = tid();
    struct section_ctx *s = sections.lookup(&t);
    if (!s)
        return 0;
    if (s->alloc_depth == 0) {
        COUNT_ERROR(unpaired_return);
        return 0;
    }
    if (--s->alloc_depth)
        return 0; /* an inner allocator: its caller's return counts */
    if (memory == 0)
        return 0;
    s->ev.allocs++;
    if (s->vpa_live) {
        s->vpa_allocs++; /* sorted out when vmemmap_populate_address returns */
        s->vpa_alloc_addr = memory;
    }
    else if (s->alloc_buf || s->alloc_size > PAGE_SIZE)
        s->ev.direct_bytes += s->alloc_size; /* PMD blocks; base pages before 5.19 */
    else
        s->ev.pt_pages++; /* vmemmap_{pgd,p4d,pud,pmd}_populate() */
    return 0;
}

static __always_inline int on_mizd_enter(u64 start_pfn, u64 nr_pages, u64 pgmap_arg)
{
    struct range_ctx r = {};
    u32 t = tid();
    unsigned int flags = 0;
    void *pgmap = (void *)pgmap_arg;
    HIT(memmap_init_zone_device);
    if (ranges.lookup(&t))
        COUNT_ERROR(missed_return);
    r.ts = bpf_ktime_get_ns();
    r.ev.start_pfn = start_pfn;
    r.ev.nr_pages = nr_pages;
    r.ev.struct_page_size = VT_L(STRUCT_PAGE);
    r.ev.page_size = PAGE_SIZE;
    read_pgmap(pgmap, &r.ev.pfns_per_compound, &r.range_start, &r.range_pages);
    bpf_probe_read_kernel(&flags, sizeof(flags), pgmap + VT_L(PGMAP_FLAGS));
    if (flags & VT_PGMAP_ALTMAP_VALID) {
        /* memmap_init_zone_device() skips the pfns whose struct pages the altmap holds:
         * start_pfn = altmap->base_pfn + vmem_altmap_offset(altmap), i.e. + reserve + free
         * (include/linux/mm.h). */
        r.ev.altmap = 1;
        void *altmap = pgmap + VT_L(PGMAP_ALTMAP);
        bpf_probe_read_kernel(&r.ev.altmap_base_pfn, sizeof(u64), altmap + VT_L(ALTMAP_BASE_PFN));
        bpf_probe_read_kernel(&r.ev.altmap_reserve, sizeof(u64), altmap + VT_L(ALTMAP_RESERVE));
        bpf_probe_read_kernel(&r.ev.altmap_free, sizeof(u64), altmap + VT_L(ALTMAP_FREE));
    }
    r.ev.mic_min = (u64)-1;
    ranges.update(&t, &r);
    return 0;
}

/* A compound page that never completed, sent as it is and removed from the map. */
static __always_inline void cp_send_page(void *ctx, u64 head)
{
    struct cp_val *c = compound.lookup(&head);
    if (c) {
        compound_events.perf_submit(ctx, c, sizeof(*c));
        compound.delete(&head);
    }
}

/* The range is populated and initialised: its summary, and the compound pages that cannot
 * complete (the last where the range cuts it short; the first where it starts in a section
 * whose boot memmap holds its first struct pages), go to user space before its range event,
 * and leave the maps. So user space reads no map while another range may be populating: a map
 * system call makes the kernel skip kprobe programs on its CPU (bpf_disable_instrumentation(),
 * kernel/bpf/syscall.c). A page left in the map for any other reason is read at the end. */
static __always_inline void cp_send_range(void *ctx, struct range_ctx *r)
{
    u64 key = r->range_start, ppc = r->ev.pfns_per_compound;
    struct cp_sum *sum = cp_sums.lookup(&key);
    if (sum) {
        summary_events.perf_submit(ctx, sum, sizeof(*sum));
        cp_sums.delete(&key);
    }
    if (ppc > 1 && r->range_pages) {
        cp_send_page(ctx, key);
        cp_send_page(ctx, key + ((r->range_pages - 1) & ~(ppc - 1)));
    }
}

static __always_inline int on_mizd_return(void *ctx)
{
    u32 t = tid();
    struct range_ctx *r = ranges.lookup(&t);
    if (!r) {
        COUNT_ERROR(unpaired_return);
        return 0;
    }
    r->ev.ktime_ns = bpf_ktime_get_ns();
    r->ev.duration_ns = r->ev.ktime_ns - r->ts;
    r->ev.pid = bpf_get_current_pid_tgid() >> 32;
    bpf_get_current_comm(&r->ev.comm, sizeof(r->ev.comm));
    if (r->ev.mic_min == (u64)-1)
        r->ev.mic_min = 0; /* no nr_pages read: none called, or only counted (a clone) */
    cp_send_range(ctx, r);
    range_events.perf_submit(ctx, &r->ev, sizeof(r->ev));
    ranges.delete(&t);
    return 0;
}

static __always_inline int on_mic_enter(u64 nr)
{
    u32 t = tid();
    HIT(memmap_init_compound);
    struct range_ctx *r = ranges.lookup(&t);
    if (!r) {
        COUNT_ERROR(no_context);
        return 0;
    }
    r->ev.mic_calls++;
    r->ev.mic_pages += nr;
    if (nr < r->ev.mic_min)
        r->ev.mic_min = nr;
    if (nr > r->ev.mic_max)
        r->ev.mic_max = nr;
    return 0;
}

/*
 * Each target's arguments, declared once for its kprobe and its fentry program alike (as
 * libbpf-tools' BPF_KPROBE names each argument once): ARG(function, name) is the argument the
 * kernel's prototype calls so (VT_POS_<function>__<name>), read from its register by a kprobe
 * (PT_REGS_PARMn, the x86-64 calling convention) or from the trampoline's array by fentry.
 */
#define VT_REG_0(ctx) PT_REGS_PARM1(ctx)
#define VT_REG_1(ctx) PT_REGS_PARM2(ctx)
#define VT_REG_2(ctx) PT_REGS_PARM3(ctx)
#define VT_REG_3(ctx) PT_REGS_PARM4(ctx)
#define VT_REG_4(ctx) PT_REGS_PARM5(ctx)
#define VT_REG_5(ctx) PT_REGS_PARM6(ctx)
#define VT_PASTE(a, b) a##b
#define VT_CAT(a, b) VT_PASTE(a, b)
#define VT_KPROBE_ARG(fn, name) VT_CAT(VT_REG_, VT_POS_##fn##__##name)(ctx)
#define VT_FENTRY_ARG(fn, name) VT_CAT(a, VT_POS_##fn##__##name)

#define SECTION_ARGS(ARG) ARG(__populate_section_memmap, pfn), \
    ARG(__populate_section_memmap, nr_pages), ARG(__populate_section_memmap, altmap), \
    SECTION_PGMAP(ARG(__populate_section_memmap, pgmap))
#define VPA_ARGS(ARG) ARG(vmemmap_populate_address, addr), ARG(vmemmap_populate_address, reuse)
#define MIZD_ARGS(ARG) ARG(memmap_init_zone_device, start_pfn), \
    ARG(memmap_init_zone_device, nr_pages), ARG(memmap_init_zone_device, pgmap)
#define MIC_ARGS(ARG) ARG(memmap_init_compound, nr_pages)

/* kprobes and kretprobes: the names vmemtrace/probes/targets.py gives them. */
int section_enter(struct pt_regs *ctx)
{
    return on_section_enter(ctx, SECTION_ARGS(VT_KPROBE_ARG));
}

int section_return(struct pt_regs *ctx)
{
    return on_section_return(ctx, PT_REGS_RC(ctx));
}

int vpa_enter(struct pt_regs *ctx)
{
    return on_vpa_enter(VPA_ARGS(VT_KPROBE_ARG));
}

int vpa_return(struct pt_regs *ctx)
{
    return on_vpa_return(ctx, PT_REGS_RC(ctx));
}

int alloc_buf_enter(struct pt_regs *ctx)
{
    HIT(vmemmap_alloc_block_buf);
    return alloc_enter(VT_KPROBE_ARG(vmemmap_alloc_block_buf, size), 1);
}

int alloc_altmap_enter(struct pt_regs *ctx)
{
    HIT(altmap_alloc_block_buf);
    return alloc_enter(VT_KPROBE_ARG(altmap_alloc_block_buf, size), 1);
}

int alloc_block_enter(struct pt_regs *ctx)
{
    HIT(vmemmap_alloc_block);
    return alloc_enter(VT_KPROBE_ARG(vmemmap_alloc_block, size), 0);
}

int alloc_buf_return(struct pt_regs *ctx)
{
    return alloc_return(PT_REGS_RC(ctx));
}

int alloc_block_return(struct pt_regs *ctx)
{
    return alloc_return(PT_REGS_RC(ctx));
}

int mizd_enter(struct pt_regs *ctx)
{
    return on_mizd_enter(MIZD_ARGS(VT_KPROBE_ARG));
}

int mizd_return(struct pt_regs *ctx)
{
    return on_mizd_return(ctx);
}

int mic_enter(struct pt_regs *ctx)
{
    return on_mic_enter(MIC_ARGS(VT_KPROBE_ARG));
}

/* memmap_init_compound only as a clone: its calls counted, nr_pages left unread. */
int mic_count(struct pt_regs *ctx)
{
    u32 t = tid();
    HIT(memmap_init_compound);
    struct range_ctx *r = ranges.lookup(&t);
    if (!r) {
        COUNT_ERROR(no_context);
        return 0;
    }
    r->ev.mic_calls++;
    return 0;
}

/* __init_zone_device_page (out of line or a clone): one call per struct page initialised,
 * heads and tails alike (mm/mm_init.c, memmap_init_zone_device() and memmap_init_compound()). */
int izdp_count(struct pt_regs *ctx)
{
    u32 t = tid();
    HIT(__init_zone_device_page);
    struct range_ctx *r = ranges.lookup(&t);
    if (r)
        r->ev.izdp_calls++;
    return 0;
}

/*
 * fentry and fexit: BCC's KFUNC_PROBE / KRETFUNC_PROBE name the program after the function
 * (kfunc__<function>, or kfunc__vmlinux__<function> in later BCC) and read the arguments listed
 * from the trampoline's array. fexit lists every argument, VT_ARGS_<function> of them, for the
 * return value that follows them; fentry lists those up to the last one it reads (the verifier
 * refuses a read past the function's arguments, btf_ctx_access()). The names are not BCC's
 * auto-attach prefixes to us: the loader turns auto-attach off and attaches what the plan says.
 */
#define VT_FENTRY_1(fn) KFUNC_PROBE(fn, u64 a0)
#define VT_FENTRY_2(fn) KFUNC_PROBE(fn, u64 a0, u64 a1)
#define VT_FENTRY_3(fn) KFUNC_PROBE(fn, u64 a0, u64 a1, u64 a2)
#define VT_FENTRY_4(fn) KFUNC_PROBE(fn, u64 a0, u64 a1, u64 a2, u64 a3)
#define VT_FENTRY_5(fn) KFUNC_PROBE(fn, u64 a0, u64 a1, u64 a2, u64 a3, u64 a4)
#define VT_FENTRY_6(fn) KFUNC_PROBE(fn, u64 a0, u64 a1, u64 a2, u64 a3, u64 a4, u64 a5)
#define VT_FEXIT_1(fn) KRETFUNC_PROBE(fn, u64 a0, u64 ret)
#define VT_FEXIT_2(fn) KRETFUNC_PROBE(fn, u64 a0, u64 a1, u64 ret)
#define VT_FEXIT_3(fn) KRETFUNC_PROBE(fn, u64 a0, u64 a1, u64 a2, u64 ret)
#define VT_FEXIT_4(fn) KRETFUNC_PROBE(fn, u64 a0, u64 a1, u64 a2, u64 a3, u64 ret)
#define VT_FEXIT_5(fn) KRETFUNC_PROBE(fn, u64 a0, u64 a1, u64 a2, u64 a3, u64 a4, u64 ret)
#define VT_FEXIT_6(fn) KRETFUNC_PROBE(fn, u64 a0, u64 a1, u64 a2, u64 a3, u64 a4, u64 a5, u64 ret)
#define VT_FENTRY(fn, n) VT_CAT(VT_FENTRY_, n)(fn)
#define VT_FEXIT(fn, n) VT_CAT(VT_FEXIT_, n)(fn)

#ifdef VT_ARGS___populate_section_memmap
VT_FENTRY(__populate_section_memmap, VT_NARGS___populate_section_memmap)
{
    return on_section_enter(ctx, SECTION_ARGS(VT_FENTRY_ARG));
}

VT_FEXIT(__populate_section_memmap, VT_ARGS___populate_section_memmap)
{
    return on_section_return(ctx, ret);
}
#endif

#ifdef VT_ARGS_vmemmap_populate_address
VT_FENTRY(vmemmap_populate_address, VT_NARGS_vmemmap_populate_address)
{
    return on_vpa_enter(VPA_ARGS(VT_FENTRY_ARG));
}

VT_FEXIT(vmemmap_populate_address, VT_ARGS_vmemmap_populate_address)
{
    return on_vpa_return(ctx, ret);
}
#endif

/* An allocator's fentry and fexit, as its kprobes above: buf 1 for a *_block_buf (never a
 * page-table page). */
#define VT_ALLOCATOR(fn, buf)                                  \
    VT_FENTRY(fn, VT_NARGS_##fn)                               \
    {                                                          \
        HIT(fn);                                               \
        return alloc_enter(VT_FENTRY_ARG(fn, size), buf);      \
    }                                                          \
    VT_FEXIT(fn, VT_ARGS_##fn)                                 \
    {                                                          \
        return alloc_return(ret);                              \
    }

#ifdef VT_ARGS_vmemmap_alloc_block_buf
VT_ALLOCATOR(vmemmap_alloc_block_buf, 1)
#endif

#ifdef VT_ARGS_altmap_alloc_block_buf
VT_ALLOCATOR(altmap_alloc_block_buf, 1)
#endif

#ifdef VT_ARGS_vmemmap_alloc_block
VT_ALLOCATOR(vmemmap_alloc_block, 0)
#endif

#ifdef VT_ARGS_memmap_init_zone_device
VT_FENTRY(memmap_init_zone_device, VT_NARGS_memmap_init_zone_device)
{
    return on_mizd_enter(MIZD_ARGS(VT_FENTRY_ARG));
}

/* It returns void: nothing follows the arguments, and nothing is read. */
KRETFUNC_PROBE(memmap_init_zone_device)
{
    return on_mizd_return(ctx);
}
#endif

#ifdef VT_ARGS_memmap_init_compound
VT_FENTRY(memmap_init_compound, VT_NARGS_memmap_init_compound)
{
    return on_mic_enter(MIC_ARGS(VT_FENTRY_ARG));
}
#endif
