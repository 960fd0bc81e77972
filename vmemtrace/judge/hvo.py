"""HugeTLB Vmemmap Optimisation (HVO, mm/hugetlb_vmemmap.c) judged per hugepage size from a
"hugetlb" event (walk/hugetlb.py): the layouts HVO has had, which one the kernel has (read from
its BTF, its config and its sysctl), and the checks, in the per-device document verify and audit
give dax devices (judge/verdict.py), so every consumer reads a hugepage size as a device.

Pure: events in, document out.
"""

from dataclasses import dataclass

from vmemtrace.judge import check_names
from vmemtrace.judge.checks import device_verdict
from vmemtrace.judge.outcome import ERROR, FAIL, PASS, SKIP, Check
from vmemtrace.kernel import compat
from vmemtrace.log.rows import HUGETLB_ROW


@dataclass(frozen=True)
class HvoLayout:
    name: str
    shared_tails: bool  # tails map a read-only page shared per zone and order, not the head's
    what: str
    upstream: str
    kept: int = 1  # vmemmap pages each optimised folio keeps (HUGETLB_VMEMMAP_RESERVE_SIZE)

    def distinct(self, per_folio: int) -> int:
        """Distinct pages behind one optimised folio's vmemmap PTEs."""
        return 2 if self.shared_tails and per_folio > 1 else 1


HEAD_ONLY = HvoLayout(
    "head-page", shared_tails=False,
    what="1 vmemmap page kept per folio (the one holding the head); every tail vmemmap PTE "
         "maps it read-only",
    upstream=compat.HVO_ONE_PAGE.upstream)
SHARED_TAIL = HvoLayout(
    "head+shared-tail", shared_tails=True,
    what="1 vmemmap page kept per folio (the one holding the head); every tail vmemmap PTE "
         "maps a read-only page of tail struct pages shared per zone and order "
         "(struct zone's vmemmap_tails[])",
    upstream=compat.HVO_SHARED_TAIL.upstream)


def detect(ev: dict, version: tuple) -> tuple[HvoLayout | None, str]:
    """The kernel's HVO layout and what says so; None where nothing known matches."""
    tails = ev["hvo"].get("zone_vmemmap_tails")
    if tails:
        return SHARED_TAIL, "struct zone has vmemmap_tails[] (BTF)"
    if tails is None:
        return None, "no BTF to tell whether struct zone has vmemmap_tails[]"
    if compat.has(version, compat.HVO_ONE_PAGE):
        return HEAD_ONLY, ("struct zone has no vmemmap_tails[] (BTF), and "
                           + compat.HVO_ONE_PAGE.upstream)
    return None, ("a kernel before " + compat.HVO_ONE_PAGE.upstream
                  + " keeps 2 vmemmap pages per folio: a layout vmemtrace has not modelled")


def built(ev: dict) -> tuple[bool, str]:
    """Whether the kernel has HVO: its config, else the sysctl that exists only with it."""
    hvo = ev["hvo"]
    config, sysctl = hvo.get("config"), hvo.get("sysctl")
    if config is not None:
        have = config == "y"
        return have, f"CONFIG_HUGETLB_PAGE_OPTIMIZE_VMEMMAP={config}"
    if sysctl is not None:
        return True, "vm.hugetlb_optimize_vmemmap exists (no kernel config to read)"
    return False, "no kernel config and no vm.hugetlb_optimize_vmemmap"


def switched_on(ev: dict) -> tuple[bool, str]:
    hvo = ev["hvo"]
    sysctl, cmdline = hvo.get("sysctl"), hvo.get("cmdline")
    boot = f", hugetlb_free_vmemmap={cmdline} at boot" if cmdline else ""
    if sysctl == 1:
        return True, f"vm.hugetlb_optimize_vmemmap = 1{boot}"
    return False, (f"vm.hugetlb_optimize_vmemmap = {sysctl}{boot}: HVO is off (the command "
                   "line's hugetlb_free_vmemmap=on, or vm.hugetlb_optimize_vmemmap=1, turns it on)")


def rows(ev: dict, key: str = "rows") -> list[dict]:
    """A "hugetlb" event's rows (or its restored_rows) by log/rows.py HUGETLB_ROW."""
    return [dict(zip(HUGETLB_ROW, r, strict=True)) for r in ev[key]]


def per_folio(ev: dict) -> int:
    """Vmemmap pages behind one folio's struct pages (folios are aligned to their size)."""
    return ev["pfns_per_folio"] * ev["struct_page_size"] // ev["page_size"]


def unoptimized(r: dict, per: int) -> bool:
    """Every vmemmap page its own and writable: the memmap as the boot or restore left it."""
    return (r["ptes"] == per and r["mapped"] == per and r["distinct"] == per
            and r["head_writable"] and r["tails_writable"] == per - 1)


def optimized_problem(r: dict, per: int, layout: HvoLayout) -> str | None:
    """Why a folio's vmemmap is not laid out as this layout lays it out, or None."""
    head = f"folio at pfn {r['first_head']}"
    tails = per - 1
    if r["mapped"] != per:
        return f"{head}: {r['mapped']} of its {per} vmemmap pages mapped"
    if r["pte_mapped"] != per:
        return f"{head}: {per - r['pte_mapped']} vmemmap pages still mapped by a huge (PMD) entry"
    if r["distinct"] != layout.distinct(per):
        return (f"{head}: {r['distinct']} distinct pages behind its {per} vmemmap PTEs, "
                f"expected {layout.distinct(per)}")
    on = r["on_first_tail"] if layout.shared_tails else r["on_head"]
    if on != tails:
        onto = "the shared tail page" if layout.shared_tails else "the head's page"
        return f"{head}: {on} of its {tails} tail vmemmap PTEs map {onto}"
    if not r["head_writable"]:
        return f"{head}: the head's vmemmap page is mapped read-only"
    if r["tails_writable"]:
        return f"{head}: {r['tails_writable']} tail vmemmap PTEs writable, expected read-only"
    return None


@dataclass(frozen=True)
class Judged:
    optimized: int
    unoptimized: int
    problems: int
    first: str | None


def classify(ev: dict, layout: HvoLayout | None) -> Judged:
    per = per_folio(ev)
    opt = unopt = bad = 0
    first = None
    for r in rows(ev):
        if unoptimized(r, per):
            unopt += r["folios"]
            continue
        problem = "no known HVO layout" if layout is None else optimized_problem(r, per, layout)
        if problem is None:
            opt += r["folios"]
        else:
            bad += r["folios"]
            first = first or problem
    return Judged(opt, unopt, bad, first)


def name(ev: dict) -> str:
    return f"hugetlb-{ev['size_kb']}kB"


def eligibility(ev: dict, built_and_on: bool, why: str) -> tuple[bool, str]:
    """Whether HVO optimises this size's folios, and why: hugetlb_vmemmap_optimizable_size()
    optimises nothing unless sizeof(struct page) is a power of two (mm/hugetlb_vmemmap.h)."""
    pow2 = ev["struct_page_size"] & (ev["struct_page_size"] - 1) == 0
    if built_and_on and not pow2:
        why += f"; but sizeof(struct page) is {ev['struct_page_size']}, not a power of two"
    return built_and_on and pow2, why


def check_size(ev: dict, version: tuple, expect: str, allow_skip=(),
               memmap_delta: int | None = None) -> dict:
    """One hugepage size's part of the document: checks, verdict, and the numbers.
    memmap_delta: the kernel's memmap pages' change across the command, where this size alone
    changed them (Ledger.memmap_delta())."""
    layout, layout_why = detect(ev, version)
    have, built_why = built(ev)
    on, on_why = switched_on(ev)
    folios, judged = ev["folios"], classify(ev, layout)
    shared = len(ev["shared_tails"]) if layout is not None and layout.shared_tails else 0
    eligible, on_why = eligibility(ev, have and on, on_why)
    # An audit cannot tell when a folio was allocated: one in the other state than the switch
    # says is counted as it is (its check skips), not expected otherwise.
    tolerated = ev["existing"] and (expect != "optimized" or not eligible)
    naive, expected, observed = numbers(ev, layout, eligible, shared,
                                        judged if tolerated else None)
    checks = [feature(have, built_why, expect),
              Check("eligibility", PASS if eligible or expect != "optimized" else FAIL,
                    ("eligible: " if eligible else "not eligible: ") + on_why)]
    checks.append(found(ev))
    defining: tuple[str, ...] = ()
    if folios and eligible:
        checks += [layout_check(ev, layout, layout_why, judged, expect),
                   accounting(ev, expected, shared, layout)]
        defining = check_names.HVO_ELIGIBLE
    elif folios:
        checks.append(no_false(ev, judged, have))
        defining = check_names.NOT_ELIGIBLE
    if ev.get("freed"):
        checks.append(restore(ev))
        defining += check_names.HVO_FREED
    if memmap_delta is not None and not ev["existing"]:
        checks.append(counters(ev, memmap_delta, judged, on, shared, layout))
    verdict, unjudged = device_verdict(checks, defining, allow_skip)
    return {
        "device": name(ev), "chardev": None, "namespace": None, "cxl": None,
        "start_pfn": min((r[1] for r in ev["rows"]), default=0),
        "nr_pages": folios * ev["pfns_per_folio"], "compound_pages": folios,
        "align": ev["size_kb"] * 1024, "altmap": False, "page_size": ev["page_size"],
        "expected_optimized": eligible and bool(folios),  # freed folios get their vmemmap back
        "optimized": (observed < naive) if naive else None,
        "vmemmap_pages": {"naive": naive, "expected": expected, "observed": observed},
        "vmemmap_saved_bytes": {"expected": (naive - expected) * ev["page_size"],
                                "observed": (naive - observed) * ev["page_size"]},
        "struct_pages_initialized": {"naive": None, "expected": None, "observed": None},
        "memmap_init_seconds": None, "kernel_log": None, "probe_account": {},
        "page_table_walk": {"paging": None, "vmemmap_pages": naive, "mapped": None,
                            "distinct": observed, "reused": None, "levels": None},
        "hugetlb": {"size_kb": ev["size_kb"], "nr_hugepages": ev["nr_hugepages"],
                    "folios": folios, "optimized": judged.optimized,
                    "unoptimized": judged.unoptimized, "other": judged.problems,
                    "shared_tail_pages": shared, "freed": ev.get("freed", 0), "hvo": ev["hvo"],
                    "layout": {"name": layout.name if layout else None, "evidence": layout_why},
                    "nodes": per_node(ev, layout)},
        "checks": [c.as_json() for c in checks], "unjudged": unjudged, "verdict": verdict,
    }


def per_node(ev: dict, layout: HvoLayout | None) -> list[dict] | None:
    """Each NUMA node's folios by state and the vmemmap pages behind them (the event's
    node_rows and node_distinct); None where the walk could not tell the nodes."""
    if "node_distinct" not in ev:
        return None
    per = per_folio(ev)
    out = []
    for node, distinct in ev["node_distinct"]:
        mine = [r[1:] for r in ev["node_rows"] if r[0] == node]
        j = classify({**ev, "rows": mine}, layout)
        folios = sum(r[0] for r in mine)
        out.append({"node": node, "folios": folios, "optimized": j.optimized,
                    "unoptimized": j.unoptimized, "other": j.problems,
                    "vmemmap_pages": {"naive": folios * per, "observed": distinct}})
    return out


def numbers(ev: dict, layout: HvoLayout | None, eligible: bool, shared: int,
            as_found: Judged | None = None) -> tuple[int, int, int]:
    """Vmemmap pages behind the folios walked: naive, expected, observed; where folios were only
    freed, those of the freed folios, whole again. as_found: the folios whose state is taken as
    found (unoptimised ones while eligible, optimised ones while not)."""
    per = per_folio(ev)
    if not ev["folios"] and ev.get("freed"):
        return ev["freed"] * per, ev["freed"] * per, ev["restored_distinct"]
    naive = ev["folios"] * per
    kept = layout.kept if layout is not None else 1
    if eligible:
        whole = as_found.unoptimized if as_found else 0
        return naive, (ev["folios"] - whole) * kept + shared + whole * per, ev["distinct"]
    optimised = as_found.optimized if as_found else 0
    expected = naive - optimised * (per - kept) + (shared if optimised else 0)
    return naive, expected, ev["distinct"]


def feature(have: bool, why: str, expect: str) -> Check:
    if have:
        return Check("feature-present", PASS, f"HVO built in: {why}")
    if expect == "optimized":
        return Check("feature-present", FAIL, f"the kernel lacks HVO: {why}")
    return Check("feature-present", SKIP, f"HVO absent, nothing optimised: {why}")


def found(ev: dict) -> Check:
    """Every folio walked: the pool's own count (nr_hugepages) is the witness of completeness,
    its change across the command under verify."""
    name, size = "folios-found", f"{ev['size_kb']} kB"
    if "pool_before" not in ev:
        if ev["folios"] != ev["nr_hugepages"]:
            return Check(name, ERROR, f"found {ev['folios']} hugetlb folios of {size} in "
                                      f"/proc/kpageflags, the pool has {ev['nr_hugepages']} "
                                      "(nr_hugepages)")
        walked = {node: 0 for node, n in ev.get("node_pools", []) if n}
        walked.update((r[0], walked.get(r[0], 0) + r[1]) for r in ev.get("node_rows", []))
        pools = dict(map(tuple, ev.get("node_pools", [])))
        odd = [node for node, n in sorted(walked.items()) if pools and pools.get(node, 0) != n]
        if odd:
            node = odd[0]
            return Check(name, ERROR, f"found {walked[node]} folios of {size} on node {node}, "
                                      f"its pool has {pools.get(node, 0)} (node{node}'s "
                                      "nr_hugepages)")
        nodes = f", on {len(pools)} nodes as each node's pool says" if pools else ""
        return Check(name, PASS, f"all {ev['folios']} folios of the pool walked{nodes}")
    grew = ev["nr_hugepages"] - ev["pool_before"]
    if ev["folios"] - ev["freed"] != grew:
        return Check(name, ERROR, f"{ev['folios']} {size} folios appeared and {ev['freed']} went "
                                  f"in /proc/kpageflags, but the pool went from "
                                  f"{ev['pool_before']} to {ev['nr_hugepages']} (nr_hugepages)")
    return Check(name, PASS, f"{ev['folios']} folios allocated and {ev['freed']} freed, as the "
                             f"pool went from {ev['pool_before']} to {ev['nr_hugepages']}")


def restore(ev: dict) -> Check:
    """Freed folios get their whole vmemmap back, each page their own and writable
    (hugetlb_vmemmap_restore_folio()): none left on a kept or shared page, none shared."""
    name, per, freed = "restore", per_folio(ev), ev["freed"]
    bad = [r for r in rows(ev, "restored_rows") if not unoptimized(r, per)]
    if bad:
        r = bad[0]
        return Check(name, FAIL, f"{sum(b['folios'] for b in bad)} of {freed} freed folios still "
                                 f"without their own vmemmap: the one at pfn {r['first_head']} has "
                                 f"{r['distinct']} distinct pages behind {r['ptes']} PTEs, "
                                 f"{r['tails_writable']} tails writable")
    stale = ev.get("stale_heads", 0)
    if stale:
        return Check(name, FAIL, f"{stale} struct pages in the {freed} freed folios still read as "
                                 "hugetlb heads (/proc/kpageflags: KPF_HUGE and "
                                 "KPF_COMPOUND_HEAD), each the first of a restored vmemmap "
                                 "page: copies of the head that restore left, which the kernel "
                                 "then keeps as bad pages instead of freeing the memory (dmesg: "
                                 "\"Bad page state\")")
    if ev["restored_distinct"] != freed * per:
        return Check(name, FAIL, f"{ev['restored_distinct']} distinct vmemmap pages behind "
                                 f"{freed} freed folios, expected {freed * per}: a page behind two")
    return Check(name, PASS, f"all {freed} freed folios have their {per} vmemmap pages back, "
                             "each its own and writable (page-table walk)")


def layout_check(ev: dict, layout: HvoLayout | None, why: str, j: Judged, expect: str) -> Check:
    name = "tail-reuse"
    if layout is None:
        return Check(name, SKIP, f"HVO layout unknown: {why}")
    if j.problems:
        more = f" (and {j.problems - 1} more folios)" if j.problems > 1 else ""
        return Check(name, FAIL, (j.first or "") + more)
    if j.unoptimized and (not ev["existing"] or expect == "optimized"):
        return Check(name, FAIL, f"{j.unoptimized} of {ev['folios']} folios not optimised "
                                 "although HVO is on")
    if j.unoptimized:
        return Check(name, SKIP, f"{j.unoptimized} of {ev['folios']} folios not optimised: "
                                 "allocated while HVO was off? A walk after the fact cannot tell "
                                 "(verify sees them allocated)")
    return Check(name, PASS, f"all {j.optimized} folios: {layout.what} ({why})")


def accounting(ev: dict, expected: int, shared: int, layout: HvoLayout | None) -> Check:
    name = "accounting"
    if layout is None:
        return Check(name, SKIP, "HVO layout unknown")
    if layout.shared_tails and shared > max(ev["zones"], 1):
        return Check(name, FAIL, f"{shared} shared tail pages behind {ev['size_kb']} kB folios, "
                                 f"at most one per zone ({ev['zones']} zones hold memory)")
    if ev["heads_shared"]:
        return Check(name, FAIL, f"{ev['heads_shared']} {ev['size_kb']} kB folios share the "
                                 "vmemmap page behind their heads with another folio: each "
                                 "folio keeps a page of its own")
    if ev["distinct"] != expected:
        return Check(name, FAIL, f"{ev['distinct']} distinct vmemmap pages behind "
                                 f"{ev['folios']} folios, expected {expected}")
    plural = "s" if shared != 1 else ""
    tail = f" and {shared} shared tail page{plural}" if layout.shared_tails else ""
    per = per_folio(ev)
    whole = (expected - shared - ev["folios"] * layout.kept) // max(per - layout.kept, 1)
    also = f", {per} for each of {whole} folios not optimised" if whole else ""
    each = "optimised folio" if whole else "folio"
    return Check(name, PASS, f"{ev['distinct']} vmemmap pages: one per {each}{tail}{also} "
                             f"instead of {ev['folios'] * per_folio(ev)} (page-table walk)")


def counters(ev: dict, delta: int, j: Judged, on: bool, shared: int,
             layout: HvoLayout | None) -> Check:
    """The kernel's own count beside the walk: nr_memmap_pages + nr_memmap_boot_pages (6.11+,
    mm/hugetlb_vmemmap.c accounts what it frees and allocates) change by what the walk says
    HVO freed (all but the pages kept, per folio optimised) and restore gave back (the same per
    folio freed, taken as optimised while HVO is on), give or take the shared tail pages."""
    if layout is None and on:
        return Check("memmap-counters", SKIP, f"HVO layout unknown: the counters changed by "
                                              f"{delta:+d}, what each folio keeps is not known")
    per = per_folio(ev) - (layout.kept if layout is not None else 1)
    freed = ev.get("freed", 0) if on else 0
    expected = per * (freed - j.optimized)
    what = (f"nr_memmap_pages + nr_memmap_boot_pages changed by {delta:+d} across the command, "
            f"expected {expected:+d} ({j.optimized} folios optimised, {freed} restored, "
            f"{per} pages each)")
    if abs(delta - expected) > shared:
        return Check("memmap-counters", FAIL, what)
    return Check("memmap-counters", PASS, what)


def no_false(ev: dict, j: Judged, have: bool) -> Check:
    name = "no-false-optimisation"
    if j.problems:
        return Check(name, FAIL, (j.first or "") + ": neither unoptimised nor a known HVO layout")
    if j.optimized and not ev["existing"]:
        return Check(name, FAIL, f"{j.optimized} folios optimised although HVO is off")
    if j.optimized:
        return Check(name, SKIP, f"{j.optimized} folios optimised with HVO off now: allocated "
                                 "while it was on? A walk after the fact cannot tell")
    return Check(name, PASS, f"all {j.unoptimized} folios keep their whole vmemmap "
                             f"({per_folio(ev)} pages each)" + ("" if have else ": no HVO"))
