"""The device-dax vmemmap layouts vmemtrace knows: one entry each, with the upstream change that
made it, what a compound page keeps of its own, and what in a kernel says it has it.

Pure: which layout a kernel has is decided here from what the kernel readers found (kallsyms,
config); geometry takes a layout's numbers, the checks its per-page shape. A kernel whose
markers match no entry, or an entry vmemtrace has not yet seen a real kernel lay out, cannot
fail a device: what differs from the model makes the verdict incomplete (judge/checks.py).
"""

from collections.abc import Iterable
from dataclasses import dataclass

from vmemtrace.kernel import compat


@dataclass(frozen=True)
class Layout:
    name: str
    kept: int  # vmemmap pages of its own each optimised compound page keeps
    shared_tails: bool  # tail PTEs map one read-only page shared per zone and order
    whole_sections_only: bool  # pieces smaller than a memory section are never optimised
    validated: bool  # lab recordings of a real kernel confirmed this model
    what: str
    upstream: str

    def page_problem(self, c: dict, per_compound: int, by_walk: bool) -> str | None:
        """Why one compound page's vmemmap is not laid out as this layout lays it out, or None.

        The probes count the pages allocated for the compound page; the walk counts the distinct
        pages behind it (walk/backing.py), where a shared tail page is one more: so on the shared-tail
        layout the walk sees head + tail page and the tails on it, as on the two-page one, and
        only the sharing across compound pages tells the two apart (CompoundPages.sharing())."""
        head = c["head_pfn"]
        tails_on_own = not self.shared_tails or by_walk
        fresh = self.kept + (1 if self.shared_tails and by_walk else 0)
        on_first = per_compound - fresh if tails_on_own else 0
        if c["ptes"] != per_compound:
            return f"compound page at pfn {head}: {c['ptes']} vmemmap PTEs, expected {per_compound}"
        # In address order (vmemmap_populate_compound_pages()), each index once: none out of
        # order and the highest the last proves indices 0 to per_compound - 1 each arrived once.
        if c["out_of_order"]:
            return (f"compound page at pfn {head}: {c['out_of_order']} of its {c['ptes']} "
                    "vmemmap PTEs out of index order (an index populated twice, or one skipped)")
        if c["out_of_order"] is not None and c["max_index"] != per_compound:
            return (f"compound page at pfn {head}: vmemmap indices up to {c['max_index'] - 1}, "
                    f"expected 0 to {per_compound - 1}")
        first_tail = bool(c["tail_fresh"])
        if c["fresh"] != fresh or not c["head_fresh"] or first_tail != tails_on_own:
            what = "the head page and the first tail page" if fresh == 2 else "the head page"
            return (f"compound page at pfn {head}: {c['fresh']} freshly allocated vmemmap pages, "
                    f"expected {fresh} ({what})")
        tails = per_compound - fresh
        if c["reused"] != tails or c["on_tail"] != on_first:
            onto = "the first tail page" if tails_on_own else "the zone's shared tail page"
            shown = c["on_tail"] if tails_on_own else c["reused"]
            return (f"compound page at pfn {head}: {shown} of {tails} tail vmemmap pages "
                    f"mapped onto {onto} ({c['reused']} reused, {c['existing']} pre-existing)")
        return None


TWO_PAGES = Layout(
    "head+first-tail", kept=2, shared_tails=False, whole_sections_only=False, validated=True,
    what="2 vmemmap pages kept per compound page (the head page and the first tail page); every "
         "other tail vmemmap page maps the first tail page, across sections for 1 GiB pages",
    upstream=compat.FEATURE.upstream)

SHARED_TAIL = Layout(
    "head+shared-tail", kept=1, shared_tails=True, whole_sections_only=True, validated=False,
    what="1 vmemmap page kept per compound page (the head page); every tail vmemmap page maps a "
         "read-only page shared per zone and order (vmemmap_shared_tail_page()); pieces smaller "
         "than a memory section keep their whole memmap",
    upstream=compat.SHARED_TAIL_DAX.upstream)

KNOWN: tuple[Layout, ...] = (TWO_PAGES, SHARED_TAIL)
BY_NAME: dict[str, Layout] = {la.name: la for la in KNOWN}

# What marks the shared-tail layout in a kernel: the allocator the series factors out (out of
# line: mm/sparse-vmemmap.c and mm/hugetlb_vmemmap.c both call it), and its config symbol,
# spelled two ways across the series' versions.
SHARED_TAIL_SYMBOL = "vmemmap_shared_tail_page"
SHARED_TAIL_CONFIG = ("VMEMMAP_OPTIMIZATION", "SPARSEMEM_VMEMMAP_OPTIMIZATION")
MARKER_SYMBOLS = (SHARED_TAIL_SYMBOL,)


@dataclass(frozen=True)
class Detected:
    """The layout a kernel has, or None where no entry fits, and why."""

    layout: Layout | None
    evidence: str

    @property
    def name(self) -> str:
        return self.layout.name if self.layout is not None else "unknown"


def detect(symbols: Iterable[str], config: dict[str, str] | None) -> Detected:
    """The layout of a kernel that has the optimisation, from its markers: the shared-tail
    allocator in kallsyms and its config symbol agree, or neither is there (the two-page layout
    of 5.19 on). One without the other is a kernel vmemtrace does not know."""
    has_symbol = SHARED_TAIL_SYMBOL in set(symbols)
    configs = [f"CONFIG_{o}=y" for o in SHARED_TAIL_CONFIG if (config or {}).get(o) == "y"]
    if has_symbol and (configs or config is None):
        return Detected(SHARED_TAIL, f"{SHARED_TAIL_SYMBOL} in kallsyms"
                                     + (f", {configs[0]}" if configs else ""))
    if has_symbol or configs:
        found = SHARED_TAIL_SYMBOL + " in kallsyms" if has_symbol else configs[0]
        missing = ("no CONFIG_" + "/".join(SHARED_TAIL_CONFIG) if has_symbol
                   else f"no {SHARED_TAIL_SYMBOL} in kallsyms")
        return Detected(None, f"{found} but {missing}: a layout vmemtrace does not know")
    where = "kallsyms and config" if config is not None else "kallsyms (no config read)"
    return Detected(TWO_PAGES, f"no marker of a later layout in {where} "
                               f"({SHARED_TAIL_SYMBOL}, CONFIG_{SHARED_TAIL_CONFIG[0]})")


def from_header(feature: dict) -> Detected:
    """The layout an event log's header records; a log written before layouts were recorded
    comes from a kernel with the feature's one layout of then (5.19 to 7.3)."""
    name = feature.get("layout")
    if name is None:
        return Detected(TWO_PAGES, "recorded before layouts were: the 5.19 layout")
    evidence = str(feature.get("layout_evidence", ""))
    return Detected(BY_NAME.get(name), evidence or f"recorded as {name}")
