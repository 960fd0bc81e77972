"""One device range's folded events: its range and walk events, its section calls and compound
pages as each source saw them, and what they say about it (shape, totals, inconsistencies).

Pure: no kernel, no BPF.
"""

from dataclasses import dataclass, field

from vmemtrace.judge import geometry
from vmemtrace.judge.account import Account, account
from vmemtrace.judge.layouts import TWO_PAGES, Layout
from vmemtrace.log import events
from vmemtrace.log.compounds import CompoundPages
from vmemtrace.log.sections import Sections
from vmemtrace.probes.plan import Sources


@dataclass
class DeviceLedger:
    start_pfn: int
    nr_pages: int
    range: dict | None = None
    sections: Sections = field(default_factory=Sections)
    compounds: CompoundPages = field(default_factory=CompoundPages)
    device: dict | None = None
    walk: dict | None = None  # the page-table walk of this range, if one was made
    walk_compounds: CompoundPages = field(default_factory=lambda: CompoundPages("walk"))
    kernel_log: dict | None = None  # the kernel's own pr_info about this range, if any

    @property
    def name(self) -> str:
        """The dax device (daxctl's chardev), one of whose ranges this is: with its mapping
        index where the device has several, so that each range has a name of its own."""
        if not self.device:
            return f"pfn-{self.start_pfn}"
        if "mapping" in self.device:
            return f"{self.device['name']}/mapping{self.device['mapping']}"
        return self.device["name"]

    @property
    def chardev(self) -> str | None:
        return self.device["name"] if self.device else None

    @property
    def namespace(self) -> str | None:
        """The nvdimm namespace behind the device (ndctl's "dev"), None for hmem/CXL."""
        return (self.device or {}).get("namespace")

    @property
    def cxl(self) -> dict | None:
        """The CXL region the device lies in (events.cxl_of)."""
        return events.cxl_of(self.device or {})

    def known_as(self, names) -> bool:
        """What -d matches (events.named), or this range's own name (dax1.0/mapping1, pfn-N)."""
        return self.name in names or (self.device is not None and events.named(self.device, names))

    @property
    def pfns_per_compound(self) -> int:
        source = self.range or self.walk
        if source:
            return source["pfns_per_compound"]
        shared = self.sections.shared
        return shared["pfns_per_compound"] if self.sections and shared else 1

    @property
    def altmap(self) -> bool:
        source = self.range or self.walk
        if source:
            return bool(source["altmap"])
        return self.sections.altmap

    def boot_placement(self) -> tuple[frozenset[int], tuple[tuple[int, int], ...]]:
        """(the range's sections that were present at boot, the partly filled pieces that no
        source places). mem_section's reading (boot_sections on the range or walk event) says
        it; without it, a piece the populate probes saw was populated, so not on the boot
        memmap; any other partial piece cannot be told (a log recorded before the field, or
        kcore unreadable)."""
        for ev in (self.range, self.walk):
            if ev is not None and "boot_sections" in ev:
                return frozenset(ev["boot_sections"]), ()
        return frozenset(), tuple(p for p in geometry.partial_pieces(self.start_pfn, self.nr_pages)
                                  if not self.sections.populated(p[0]))

    def shape(self, feature: bool, layout: Layout = TWO_PAGES) -> geometry.RangeShape:
        r = self.range or self.walk or {}
        offset = 0
        if self.range and r.get("altmap"):
            # memmap_init_zone_device(): start = altmap->base_pfn + reserve + free
            offset = r["altmap_base_pfn"] + r["altmap_reserve"] + r["altmap_free"] - self.start_pfn
        return geometry.RangeShape(
            start_pfn=self.start_pfn, nr_pages=self.nr_pages,
            pfns_per_compound=self.pfns_per_compound, altmap=self.altmap, altmap_offset=offset,
            feature=feature, page_size=r.get("page_size", geometry.PAGE_SIZE),
            struct_page_size=r.get("struct_page_size", geometry.STRUCT_PAGE_SIZE),
            boot_sections=self.boot_placement()[0], layout=layout)

    def totals(self) -> dict[str, int]:
        return dict(self.sections.totals)

    def allocated_pages(self, page_size: int) -> int:
        """vmemmap pages the allocator probes saw: one per fresh PTE, and the blocks."""
        t = self.totals()
        return t["fresh"] + t["direct_bytes"] // page_size

    def inconsistencies(self) -> list[str]:
        """What no kernel can have produced for this range: the probes and the walk key compound
        pages by their head pfn, aligned within the range (bpf/vmemtrace.bpf.c, walk/backing.py), one
        event each. A log that says otherwise was cut or edited: judged as corrupt, not as the
        kernel's doing."""
        out = list(self.sections.problems)
        first = self.sections.first_pfn
        if self.sections.runs and first is not None and (self.range or self.walk) is not None \
                and not (self.start_pfn <= first
                         and self.sections.end_pfn <= self.start_pfn + self.nr_pages):
            out.append(f"section calls at pfns {self.sections.first_pfn} to "
                       f"{self.sections.end_pfn}, outside the range")
        r = self.range
        shared = self.sections.shared
        if r is not None and shared is not None and (
                shared["struct_page_size"] != r["struct_page_size"]
                or self.sections.altmap != bool(r["altmap"])
                or (shared["has_pgmap"] and shared["pfns_per_compound"] != r["pfns_per_compound"])):
            # The same pgmap behind both calls (__populate_section_memmap's pgmap from 5.19).
            out.append(f"the range's section calls say struct pages of {shared['struct_page_size']} "
                       f"bytes, altmap {self.sections.altmap}, {shared['pfns_per_compound']}-page "
                       f"compound pages; its range {r['struct_page_size']}, {bool(r['altmap'])}, "
                       f"{r['pfns_per_compound']}")
        if r is not None and r["pfns_per_compound"] == 1 and (r["mic_calls"] or r["mic_pages"]):
            out.append("memmap_init_compound calls for a range without compound pages")
        if r is not None and not _mic_adds_up(r):
            out.append(f"memmap_init_compound's {r['mic_calls']} calls of {r['mic_min']} to "
                       f"{r['mic_max']} pages cannot sum to {r['mic_pages']}")
        w = self.walk
        if w is not None and self.range is not None and w["nr_pages"] != self.range["nr_pages"]:
            out.append(f"the walk covers {w['nr_pages']} pages of a {self.range['nr_pages']}-page range")
        if w is not None and w["vmemmap_pages"] != geometry.vmemmap_span(
                w["start_pfn"], w["nr_pages"], w["struct_page_size"], w["page_size"]):
            out.append(f"the walk's {w['vmemmap_pages']} vmemmap pages are not those of its "
                       f"{w['nr_pages']} pages")
        if w is not None and (w["mapped"] > w["vmemmap_pages"] or w["distinct"] + w["reused"] != w["mapped"]
                              or sum(w["levels"].values()) != w["mapped"]):
            out.append(f"the walk does not add up (vmemmap pages {w['vmemmap_pages']}, mapped "
                       f"{w['mapped']}, distinct {w['distinct']}, reused {w['reused']}, by level "
                       f"{w['levels']})")
        ppc = self.pfns_per_compound
        for pages in (self.compounds, self.walk_compounds):
            out.extend(pages.problems)
            if pages.shared is not None and (self.range or self.walk) is not None \
                    and pages.shared != (self.start_pfn, ppc):
                out.append(f"the compound pages the {pages.what} saw are of a range at pfn "
                           f"{pages.shared[0]} with {pages.shared[1]}-page compound pages, not "
                           f"of this one at pfn {self.start_pfn} with {ppc}")
            end = self.start_pfn + max(self.nr_pages, 1)
            if pages.highest_head is not None and pages.highest_head >= end:
                out.append(f"compound page at pfn {pages.highest_head} is outside its range "
                           f"({pages.what})")
        return out + self._walk_totals_problem()

    def _walk_totals_problem(self) -> list[str]:
        """The walk's compound pages are its PTEs sorted by page (walk/backing.py): all of them where
        the range holds whole sections, fewer where a boot piece is set apart."""
        w = self.walk
        if w is None or w["pfns_per_compound"] <= 1 or not len(self.walk_compounds):
            return []
        totals = self.walk_compounds.totals(("ptes", "fresh", "reused"))
        if totals is None:
            return []
        theirs, walked = tuple(totals.values()), (w["mapped"], w["distinct"], w["reused"])
        whole = not (self.start_pfn % geometry.PAGES_PER_SECTION
                     or self.nr_pages % geometry.PAGES_PER_SECTION)
        if theirs == walked or (not whole and all(a <= b for a, b in zip(theirs, walked))):
            return []
        return ["the walk's compound pages hold {} PTEs ({} fresh, {} reused), its walk {} ({} "
                "distinct, {} reused)".format(*theirs, *walked)]

    def account(self, sources: Sources, shape: geometry.RangeShape) -> Account:
        """What the probes' counts say of this range of this shape (judge/account.py)."""
        return account(shape, self.sections, self.range, sources, list(sources.allocators))


def _mic_adds_up(r: dict) -> bool:
    """A range's memmap_init_compound calls, min and max: one call of each extreme among the
    calls, the others between (all equal where min is max); nothing decoded, all zero."""
    calls, lo, hi, pages = r["mic_calls"], r["mic_min"], r["mic_max"], r["mic_pages"]
    if not pages:
        return lo == hi == 0
    if lo == hi:
        return pages == lo * calls
    return lo < hi and calls >= 2 and lo * (calls - 1) + hi <= pages <= hi * (calls - 1) + lo

