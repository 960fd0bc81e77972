// SPDX-License-Identifier: GPL-2.0
/*
 * vmemtrace: watch the kernel build the vmemmap of device-dax memory (BCC program).
 *
 * One program for every kernel, parametrised by defines that vmemtrace/probes/loader.py takes
 * from the kernel's BTF, headers and version; nothing here is pasted together from strings.
 * Every probe function is compiled; the attach plan decides which ones are loaded and attached,
 * so the compile does not wait for the plan (it runs while the kernel's facts are read):
 *
 *   section_*  __populate_section_memmap(pfn, nr_pages, nid, altmap[, pgmap])
 *   vpa_*      vmemmap_populate_address(addr, node, altmap, reuse|ptpfn[, flags])
 *   alloc_*    vmemmap_alloc_block_buf(size, node, altmap)
 *   mizd_*     memmap_init_zone_device(zone, start_pfn, nr_pages, pgmap)
 *   mic_*      memmap_init_compound(head, head_pfn, zone_idx, nid, pgmap, nr_pages)
 *
 *   HAVE_SECTION_PGMAP  5.19+: __populate_section_memmap has the pgmap argument
 *   HAVE_VMEMMAP_SHIFT  5.17+: struct dev_pagemap has vmemmap_shift
 *   VPA_PTPFN           6.15+: vmemmap_populate_address takes (ptpfn, flags), ptpfn -1 = allocate
 *
 * Aggregation happens here: one event per section and per range (perf buffer), one map entry
 * per compound page (drained by user space when its range is initialised). Nothing is emitted
 * per struct page or per vmemmap page.
 *
 * All probes are nested calls of one thread (memremap_pages() -> pagemap_range() ->
 * add_pages() -> ... -> __populate_section_memmap(), then memmap_init_zone_device()), so the
 * per-thread context maps below tie callees to their caller.
 */
#include <uapi/linux/ptrace.h>

/*
 * Struct layout. The loader passes the sizes and offsets the program reads as LAYOUT_* defines,
 * taken from the kernel's BTF (vmemtrace/kernel/btf.py): BCC parsing linux/mm_types.h and
 * linux/memremap.h is most of its compile time. Without BTF it passes LAYOUT_FROM_HEADERS and
 * the same numbers come from those headers; LAYOUT_CHECK (tests) has the compiler compare both.
 */
#if defined(LAYOUT_FROM_HEADERS) || defined(LAYOUT_CHECK)
#include <linux/mm_types.h>
#include <linux/memremap.h>
#include <linux/range.h>
#define HDR_STRUCT_PAGE sizeof(struct page)
#define HDR_PGMAP_ALTMAP offsetof(struct dev_pagemap, altmap)
#define HDR_PGMAP_FLAGS offsetof(struct dev_pagemap, flags)
#define HDR_PGMAP_NR_RANGE offsetof(struct dev_pagemap, nr_range)
#define HDR_PGMAP_RANGES offsetof(struct dev_pagemap, ranges)
#define HDR_ALTMAP_BASE_PFN offsetof(struct vmem_altmap, base_pfn)
#define HDR_ALTMAP_RESERVE offsetof(struct vmem_altmap, reserve)
#define HDR_ALTMAP_FREE offsetof(struct vmem_altmap, free)
#define HDR_RANGE_SIZE sizeof(struct range)
#ifdef HAVE_VMEMMAP_SHIFT
#define HDR_PGMAP_VMEMMAP_SHIFT offsetof(struct dev_pagemap, vmemmap_shift)
#endif
#endif

#ifdef LAYOUT_FROM_HEADERS
#define LAYOUT_STRUCT_PAGE HDR_STRUCT_PAGE
#define LAYOUT_PGMAP_ALTMAP HDR_PGMAP_ALTMAP
#define LAYOUT_PGMAP_FLAGS HDR_PGMAP_FLAGS
#define LAYOUT_PGMAP_NR_RANGE HDR_PGMAP_NR_RANGE
#define LAYOUT_PGMAP_RANGES HDR_PGMAP_RANGES
#define LAYOUT_ALTMAP_BASE_PFN HDR_ALTMAP_BASE_PFN
#define LAYOUT_ALTMAP_RESERVE HDR_ALTMAP_RESERVE
#define LAYOUT_ALTMAP_FREE HDR_ALTMAP_FREE
#define LAYOUT_RANGE_SIZE HDR_RANGE_SIZE
#ifdef HAVE_VMEMMAP_SHIFT
#define LAYOUT_PGMAP_VMEMMAP_SHIFT HDR_PGMAP_VMEMMAP_SHIFT
#endif
#endif

#ifdef LAYOUT_CHECK
_Static_assert(LAYOUT_STRUCT_PAGE == HDR_STRUCT_PAGE, "sizeof(struct page)");
_Static_assert(LAYOUT_PGMAP_ALTMAP == HDR_PGMAP_ALTMAP, "dev_pagemap.altmap");
_Static_assert(LAYOUT_PGMAP_FLAGS == HDR_PGMAP_FLAGS, "dev_pagemap.flags");
_Static_assert(LAYOUT_PGMAP_NR_RANGE == HDR_PGMAP_NR_RANGE, "dev_pagemap.nr_range");
_Static_assert(LAYOUT_PGMAP_RANGES == HDR_PGMAP_RANGES, "dev_pagemap.ranges");
_Static_assert(LAYOUT_ALTMAP_BASE_PFN == HDR_ALTMAP_BASE_PFN, "vmem_altmap.base_pfn");
_Static_assert(LAYOUT_ALTMAP_RESERVE == HDR_ALTMAP_RESERVE, "vmem_altmap.reserve");
_Static_assert(LAYOUT_ALTMAP_FREE == HDR_ALTMAP_FREE, "vmem_altmap.free");
_Static_assert(LAYOUT_RANGE_SIZE == HDR_RANGE_SIZE, "sizeof(struct range)");
#ifdef HAVE_VMEMMAP_SHIFT
_Static_assert(LAYOUT_PGMAP_VMEMMAP_SHIFT == HDR_PGMAP_VMEMMAP_SHIFT, "dev_pagemap.vmemmap_shift");
#endif
#endif

/* include/linux/memremap.h: "pgmap->altmap is valid" (bit 0 of dev_pagemap.flags since 4.20). */
#define VT_PGMAP_ALTMAP_VALID (1U << 0)

/* x86_64 pte: physical frame number bits 12..51 (arch/x86/include/asm/pgtable_types.h). */
#define VT_PTE_PFN_MASK 0x000ffffffffff000ULL

enum { EV_SECTION = 1, EV_RANGE = 2 };
enum { ERR_CP_MAP_FULL = 0, ERR_NO_CONTEXT = 1, ERR_READ = 2, ERR_MAX = 3 };
enum { SETTING_ALLOC_PROBED = 0, SETTING_MAX = 1 };

struct cp_val {
    u64 range_start_pfn;
    u64 pfns_per_compound;
    u64 ptes;
    u64 fresh;
    u64 reused;
    u64 existing;
    u64 head_fresh;   /* vmemmap page 0 of the compound page got a new page */
    u64 tail_fresh;   /* vmemmap page 1 (the first tail page) got a new page */
    u64 tail_pfn;     /* backing pfn of vmemmap page 1 */
    u64 on_tail;      /* reused PTEs mapped onto tail_pfn */
    u64 max_index;    /* highest vmemmap page index seen within the compound page, + 1 */
};

struct section_ctx {
    /* Emitted (the first 13 fields, SECTION_FIELDS in vmemtrace/probes/loader.py): */
    u64 pfn;
    u64 nr_pages;
    u64 range_start_pfn;   /* pgmap->ranges[pgmap->nr_range].start >> PAGE_SHIFT */
    u64 start_addr;        /* vmemmap address of pfn: the first populate call's addr */
    u64 pfns_per_compound; /* 1 << pgmap->vmemmap_shift */
    u64 ptes;              /* vmemmap_populate_address calls */
    u64 fresh;             /* ... that allocated a new vmemmap page */
    u64 reused;            /* ... that mapped an existing page (reuse != NULL) */
    u64 existing;          /* ... whose PTE was already present (neither) */
    u64 alloc_calls;       /* vmemmap_alloc_block_buf calls in this section */
    u64 alloc_bytes;
    u64 altmap;
    u64 has_pgmap;
    /* The vmemmap_populate_address call in flight (calls do not nest): kept here rather than
     * in a map of its own, one hash update and delete less per vmemmap page. */
    u64 vpa_live;
    u64 vpa_addr;
    u64 vpa_reuse;
    u64 vpa_allocated;     /* vmemmap_alloc_block_buf was entered during this call */
    u64 alloc_probed;      /* the settings map's answer, read once per section, not per PTE */
    /* The compound page being populated: a copy of its map entry, written back when the next
     * compound page starts and when the section returns (one map update per compound page
     * and section instead of one per vmemmap page). */
    u64 cp_head;
    u64 cp_live;
    struct cp_val cp;
};

struct range_ctx {
    u64 ts;
    u64 start_pfn;
    u64 nr_pages;
    u64 pfns_per_compound;
    u64 altmap;
    u64 altmap_base_pfn;
    u64 altmap_reserve;
    u64 altmap_free;
    u64 mic_calls;
    u64 mic_pages;
    u64 mic_min;
    u64 mic_max;
    u64 cpu;
};

struct event {
    u64 type;
    u64 struct_page_size;
    u64 page_size;
    u64 a[13]; /* section_ctx or range_ctx (13 fields each), in declaration order */
    u64 duration_ns;
};

BPF_PERF_OUTPUT(events);
BPF_HASH(sections, u32, struct section_ctx, 1024);
BPF_HASH(ranges, u32, struct range_ctx, 1024);
BPF_F_TABLE("hash", u64, struct cp_val, compound, CP_MAP_ENTRIES, BPF_F_NO_PREALLOC);
BPF_ARRAY(errors, u64, ERR_MAX);
/* Set by the loader before attaching: which probes the plan attached (SETTING_*). */
BPF_ARRAY(settings, u64, SETTING_MAX);

static __always_inline void count_error(int which)
{
    u64 *v = errors.lookup(&which);
    if (v)
        __sync_fetch_and_add(v, 1);
}

/* vmemmap_alloc_block_buf is attached: it, not the reuse argument, tells a fresh page. */
static __always_inline int alloc_probed(void)
{
    int key = SETTING_ALLOC_PROBED;
    u64 *v = settings.lookup(&key);
    return v && *v;
}

static __always_inline u32 tid(void)
{
    return (u32)bpf_get_current_pid_tgid();
}

/* The pfns per compound page and the start pfn of the range being populated (5.19+:
 * mm/sparse-vmemmap.c, reuse_compound_section(), reads the same ranges[nr_range]). */
static __always_inline void read_pgmap(void *pgmap, u64 *pfns, u64 *range_start)
{
    *pfns = 1;
    *range_start = 0;
    if (!pgmap)
        return;
#ifdef LAYOUT_PGMAP_VMEMMAP_SHIFT
    u64 shift = 0;
    bpf_probe_read_kernel(&shift, sizeof(shift), pgmap + LAYOUT_PGMAP_VMEMMAP_SHIFT);
    if (shift < 64)
        *pfns = 1ULL << shift;
#endif
    int nr_range = 0;
    u64 start = 0; /* struct range { u64 start; u64 end; } (include/linux/range.h) */
    bpf_probe_read_kernel(&nr_range, sizeof(nr_range), pgmap + LAYOUT_PGMAP_NR_RANGE);
    if (nr_range < 0 || nr_range > 64)
        return;
    if (bpf_probe_read_kernel(&start, sizeof(start),
                              pgmap + LAYOUT_PGMAP_RANGES + nr_range * LAYOUT_RANGE_SIZE) == 0)
        *range_start = start >> PAGE_SHIFT;
}

static __always_inline void emit(struct pt_regs *ctx, u64 type, void *src, u64 duration)
{
    struct event ev = {};
    ev.type = type;
    ev.struct_page_size = LAYOUT_STRUCT_PAGE;
    ev.page_size = PAGE_SIZE;
    bpf_probe_read_kernel(&ev.a, sizeof(ev.a), src);
    ev.duration_ns = duration;
    events.perf_submit(ctx, &ev, sizeof(ev));
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
    zero.range_start_pfn = s->range_start_pfn;
    zero.pfns_per_compound = s->pfns_per_compound;
    struct cp_val *c = compound.lookup_or_try_init(&head, &zero);
    if (!c) {
        count_error(ERR_CP_MAP_FULL);
        return 0;
    }
    s->cp = *c;
    s->cp_head = head;
    s->cp_live = 1;
    return 1;
}

int section_enter(struct pt_regs *ctx, unsigned long pfn, unsigned long nr_pages, int nid,
                  void *altmap)
{
    struct section_ctx s = {};
    u32 t = tid();
    s.pfn = pfn;
    s.nr_pages = nr_pages;
    s.altmap = altmap != NULL;
    s.alloc_probed = alloc_probed();
#ifdef HAVE_SECTION_PGMAP
    void *pgmap = (void *)PT_REGS_PARM5(ctx);
    s.has_pgmap = pgmap != NULL;
    read_pgmap(pgmap, &s.pfns_per_compound, &s.range_start_pfn);
#else
    s.pfns_per_compound = 1;
#endif
    sections.update(&t, &s);
    return 0;
}

int section_return(struct pt_regs *ctx)
{
    u32 t = tid();
    struct section_ctx *s = sections.lookup(&t);
    if (!s)
        return 0;
    cp_store(s);
    /* NULL return: the memmap could not be populated; the event still reports what was done. */
    emit(ctx, EV_SECTION, s, PT_REGS_RC(ctx) != 0);
    sections.delete(&t);
    return 0;
}

int vpa_enter(struct pt_regs *ctx, unsigned long addr, int node, void *altmap)
{
    u32 t = tid();
    struct section_ctx *s = sections.lookup(&t);
    if (!s)
        return 0; /* not under __populate_section_memmap: e.g. 6.15's boot-time
                   * vmemmap_populate_hvo() for HugeTLB, which is not device-dax */
    s->vpa_live = 1;
    s->vpa_addr = addr;
#ifdef VPA_PTPFN
    s->vpa_reuse = PT_REGS_PARM4(ctx) != (u64)-1;
#else
    s->vpa_reuse = PT_REGS_PARM4(ctx) != 0;
#endif
    s->vpa_allocated = 0;
    return 0;
}

int vpa_return(struct pt_regs *ctx)
{
    u32 t = tid();
    struct section_ctx *s = sections.lookup(&t);
    u64 pte_ptr = PT_REGS_RC(ctx), pte = 0, backing;
    if (!s || !s->vpa_live)
        return 0;
    s->vpa_live = 0;
    if (pte_ptr == 0 || bpf_probe_read_kernel(&pte, sizeof(pte), (void *)pte_ptr) != 0) {
        count_error(ERR_READ);
        return 0;
    }
    backing = (pte & VT_PTE_PFN_MASK) >> PAGE_SHIFT;
    u64 addr = s->vpa_addr;

    /* Both populate paths start at the vmemmap address of the section's first pfn
     * (vmemmap_populate_compound_pages() and vmemmap_populate_range() begin at `start`). */
    if (s->ptes == 0)
        s->start_addr = addr;
    s->ptes++;
    int fresh = 0, reused = 0;
    if (s->alloc_probed) {
        /* vmemmap_pte_populate() allocates only for an empty PTE without a page to reuse; a
         * failed allocation makes this call return NULL, counted above. */
        fresh = s->vpa_allocated != 0;
        reused = !fresh && s->vpa_reuse;
    } else {
        fresh = !s->vpa_reuse;
        reused = s->vpa_reuse;
    }
    if (fresh)
        s->fresh++;
    else if (reused)
        s->reused++;
    else
        s->existing++;

    u64 ppc = s->pfns_per_compound;
    if (ppc > 1 && addr >= s->start_addr) {
        u64 pfn = s->pfn + (addr - s->start_addr) / LAYOUT_STRUCT_PAGE;
        u64 head = s->range_start_pfn + ((pfn - s->range_start_pfn) & ~(ppc - 1));
        u64 index = ((pfn - head) * LAYOUT_STRUCT_PAGE) / PAGE_SIZE;
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
            if (index + 1 > c->max_index)
                c->max_index = index + 1;
        }
    }
    return 0;
}

int alloc_enter(struct pt_regs *ctx, unsigned long size)
{
    u32 t = tid();
    struct section_ctx *s = sections.lookup(&t);
    if (!s)
        return 0; /* boot-time or non-device users */
    s->alloc_calls++;
    s->alloc_bytes += size;
    s->vpa_allocated = s->vpa_live;
    return 0;
}

int mizd_enter(struct pt_regs *ctx, void *zone, unsigned long start_pfn, unsigned long nr_pages,
               void *pgmap)
{
    struct range_ctx r = {};
    u32 t = tid();
    u64 unused;
    unsigned int flags = 0;
    r.ts = bpf_ktime_get_ns();
    r.start_pfn = start_pfn;
    r.nr_pages = nr_pages;
    read_pgmap(pgmap, &r.pfns_per_compound, &unused);
    bpf_probe_read_kernel(&flags, sizeof(flags), pgmap + LAYOUT_PGMAP_FLAGS);
    if (flags & VT_PGMAP_ALTMAP_VALID) {
        /* memmap_init_zone_device() skips the pfns whose struct pages the altmap holds:
         * start_pfn = altmap->base_pfn + vmem_altmap_offset(altmap), i.e. + reserve + free
         * (include/linux/mm.h). */
        r.altmap = 1;
        void *altmap = pgmap + LAYOUT_PGMAP_ALTMAP;
        bpf_probe_read_kernel(&r.altmap_base_pfn, sizeof(u64), altmap + LAYOUT_ALTMAP_BASE_PFN);
        bpf_probe_read_kernel(&r.altmap_reserve, sizeof(u64), altmap + LAYOUT_ALTMAP_RESERVE);
        bpf_probe_read_kernel(&r.altmap_free, sizeof(u64), altmap + LAYOUT_ALTMAP_FREE);
    }
    r.mic_min = (u64)-1;
    r.cpu = bpf_get_smp_processor_id();
    ranges.update(&t, &r);
    return 0;
}

int mizd_return(struct pt_regs *ctx)
{
    u32 t = tid();
    struct range_ctx *r = ranges.lookup(&t);
    if (!r)
        return 0;
    emit(ctx, EV_RANGE, r, bpf_ktime_get_ns() - r->ts);
    ranges.delete(&t);
    return 0;
}

int mic_enter(struct pt_regs *ctx)
{
    u32 t = tid();
    struct range_ctx *r = ranges.lookup(&t);
    u64 nr = PT_REGS_PARM6(ctx);
    if (!r) {
        count_error(ERR_NO_CONTEXT);
        return 0;
    }
    r->mic_calls++;
    r->mic_pages += nr;
    if (nr < r->mic_min)
        r->mic_min = nr;
    if (nr > r->mic_max)
        r->mic_max = nr;
    return 0;
}
