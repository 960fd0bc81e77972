/* SPDX-License-Identifier: GPL-2.0 */
/*
 * vmemtrace's BPF contract: every struct that crosses between bpf/vmemtrace.bpf.c and user space,
 * declared once (as libbpf-tools keep a tool's x.h beside its x.bpf.c). The perf events and the
 * maps user space reads are decoded by field name (vmemtrace/probes/maps.py), so a field's name
 * here is its key in the event log (vmemtrace/log/events.py); tests/unit/test_contract.py holds each
 * struct against the Python that reads it, so a field added on one side fails the suite until the
 * other side has it.
 *
 * Every field is a u64 (or the task's comm): BCC's Python types keep one dimension of an array,
 * so a table of rows is one flat array, its row width written beside it.
 */
#ifndef VMEMTRACE_H
#define VMEMTRACE_H

/* One __populate_section_memmap() call: the "section" event. */
struct section_event {
    u64 pfn;
    u64 nr_pages;
    u64 range_start_pfn;   /* pgmap->ranges[pgmap->nr_range].start >> PAGE_SHIFT */
    u64 pfns_per_compound; /* 1 << pgmap->vmemmap_shift */
    u64 ptes;              /* vmemmap_populate_address calls that returned a PTE */
    u64 plain;             /* ... without a page to reuse: they allocate if the PTE is empty */
    u64 fresh;             /* ... whose PTE maps the page allocated for it during the call */
    u64 reused;            /* ... that were given a page to reuse (reuse / ptpfn) */
    u64 existing;          /* ... plain, with no allocation: the PTE was already there */
    u64 alloc_calls;       /* allocator calls (outermost) in this section, failed ones too */
    u64 allocs;            /* ... that returned memory */
    u64 direct_bytes;      /* vmemmap bytes allocated outside vmemmap_populate_address */
    u64 pt_pages;          /* page-table pages allocated */
    u64 altmap;
    u64 has_pgmap;
    u64 ok;                /* __populate_section_memmap returned the memmap (not NULL) */
    u64 struct_page_size;
    u64 page_size;
    u64 pid;               /* the task that populated it (`trace` shows pid and comm) */
    u64 ktime_ns;          /* bpf_ktime_get_ns() at return: CLOCK_MONOTONIC */
    char comm[16];         /* TASK_COMM_LEN */
};

/* One memmap_init_zone_device() call: the "range" event. */
struct range_event {
    u64 start_pfn;
    u64 nr_pages;
    u64 pfns_per_compound;
    u64 altmap;
    u64 altmap_base_pfn;
    u64 altmap_reserve;
    u64 altmap_free;
    u64 mic_calls;         /* memmap_init_compound calls (decoded or only counted) */
    u64 mic_pages;         /* ... their nr_pages, summed: only where decoded */
    u64 mic_min;
    u64 mic_max;
    u64 izdp_calls;        /* __init_zone_device_page calls: one per struct page initialised */
    u64 duration_ns;
    u64 struct_page_size;
    u64 page_size;
    u64 pid;
    u64 ktime_ns;
    char comm[16];
};

/* One compound page's vmemmap PTEs: the "compound" event (the compound map's value, and the
 * event sent for a page its range's summary has no class for). */
struct cp_val {
    u64 head_pfn;
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
    u64 out_of_order; /* PTEs whose index was not the next one: an index populated twice, or one
                       * skipped (vmemmap_populate_compound_pages() fills them in address order) */
};

/* A range's compound pages, judged as they complete (the "compounds" event; struct cp_sum's
 * sizes are vmemtrace/log/compounds.py's, passed as CP_* defines). */
struct cp_class {
    u64 pages;
    struct cp_val first;   /* the lowest-headed page of the class */
};

struct cp_sum {
    u64 range_start_pfn;
    u64 pfns_per_compound;
    u64 count;
    u64 part_shift;
    u64 lowest_head;
    u64 highest_head;
    u64 reused_head;       /* the lowest head with a reused PTE; (u64)-1: none */
    struct cp_class classes[CP_CLASSES];
    u64 parts[CP_PARTS * CP_PART_WIDTH];                          /* [pages, digest sum] */
    u64 cells[CP_TABLE_HASHES * CP_TABLE_WIDTH * CP_CELL_WIDTH];  /* [pages, head, digest, check] */
};

/* Counters of what went wrong in BPF: the "lost" event's error keys. */
struct errors_t {
    u64 compound_map_full;
    u64 no_context;        /* a callee ran without its caller's context */
    u64 read_failed;       /* a PTE could not be read */
    u64 missed_return;     /* a call's return probe never ran (kretprobe instances exhausted) */
    u64 unmatched_alloc;   /* a PTE allocated for that does not map the page allocated */
    u64 unpaired_return;   /* a return probe ran without its entry: the entry's run was skipped
                            * (kprobes before 6.7 count no skipped runs of their own) */
};

/* Entry-probe hits per probed function, by its name: the "hits" event. */
struct hits_t {
    u64 __populate_section_memmap;
    u64 vmemmap_populate_address;
    u64 vmemmap_alloc_block_buf;
    u64 altmap_alloc_block_buf;
    u64 vmemmap_alloc_block;
    u64 memmap_init_zone_device;
    u64 memmap_init_compound;
    u64 __init_zone_device_page;
};

/* From user space: kernel data addresses out of /proc/kallsyms (KASLR applied; 0: not there),
 * which the program reads itself once per section. */
struct kaddrs_t {
    u64 page_offset_base;  /* the direct map's base: __pa(p) = p - page_offset_base */
    u64 physical_mask;     /* the PTE bits that are physical address (CONFIG_DYNAMIC_PHYSICAL_MASK) */
    u64 sme_me_mask;       /* else the memory-encryption C-bit to strip (CONFIG_AMD_MEM_ENCRYPT) */
};

#endif /* VMEMTRACE_H */
