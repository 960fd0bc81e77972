"""One range's compound pages as one source saw them (the probes, or the page-table walk): folded
as they come into what the checks judge, in memory that does not grow with the range.

A 1 TiB range of 2 MiB compound pages has 524288 of them per source. Kept one by one (as JSON
objects, then as columns) they cost 1.9 GB, then 80 bytes each, and every scrape re-read them all.
Here each page is judged as it is appended and only this is kept:
- its layout class: the counts the checks judge (layouts.Layout.page_problem), with how many pages
  have it and the lowest-headed one (at most MAX_CLASSES classes; a well-formed range has one);
- the pages headed in the range's first section and in the highest section seen so far, whole:
  boot memory can only share a section with a range's first or last piece (geometry.boot_shared),
  so these are the only pages the checks may have to set apart as on the boot memmap;
- per part of the range, a count and an order-independent digest of each page's (head, layout),
  and one difference table (log/difference.py) for the whole range: what --cross-check compares between
  sources, naming the compound pages that differ where few do;
- one bit per compound page (a head seen twice) and one per first tail page's pfn (two pages
  sharing one), both sparse;
- the first few things no kernel can have produced (an edited or cut log).
Pure: no I/O.
"""

from collections.abc import Callable, Iterator

from vmemtrace.judge.geometry import PAGES_PER_SECTION
from vmemtrace.log import rows
from vmemtrace.log.difference import (
    MASK,
    TABLE_CELLS,
    coarsen,
    digest,
    new_table,
    table_add,
    table_sums,
)
from vmemtrace.log.pfnset import PfnSet

# Keys every compound page of one range shares (the range's start and its compound size, which
# bpf/vmemtrace.bpf.c and walk/backing.py copy into each).
SHARED = ("range_start_pfn", "pfns_per_compound")
# A layout class: the counts a page is judged by, without its own pfns.
CLASS = ("ptes", "fresh", "reused", "existing", "head_fresh", "tail_fresh", "on_tail", "max_index",
         "out_of_order")
MAX_CLASSES = 64
# Compound pages per cross-check part: 2^8 at first (512 MiB of 2 MiB pages, 256 GiB of 1 GiB),
# doubled whenever there would be more than MAX_PARTS parts (digest sums add up, so two
# neighbouring parts merge into one exactly). The parts only say where to look when more pages
# differ than the difference table can name, so a few are enough, and the summary's size stops
# growing with the range as soon as it has them (8 GiB of 2 MiB pages).
PART_SHIFT = 8
MAX_PARTS = 16
PART_WIDTH = 2  # a part in BPF: [pages, digest sum]
LOGGED_PARTS = 1024  # the most a logged summary may hold (logs of schema 3 hold up to 1024)
MAX_PROBLEMS = 3
# Layout classes the BPF program keeps per range (struct cp_sum): a well-formed range has one; a
# page of a fifth is sent to user space on its own, and judged here.
BPF_CLASSES = 4


class CompoundPages:
    """One source's compound events of one range, folded one by one (module docstring)."""

    def __init__(self, source: str | None = None, pages_per_section: int = PAGES_PER_SECTION):
        self.source = source  # None: the probes; "walk": the page-table walk
        self.pages_per_section = pages_per_section
        self.shared: tuple[int, int] | None = None  # the first page's SHARED values
        self.count = 0
        self.classes: dict[tuple, list] = {}  # class -> [pages, lowest head, its event]
        self.unclassed = 0  # pages of classes beyond MAX_CLASSES
        self.part_shift = PART_SHIFT
        self.parts: dict[int, list[int]] = {}  # part -> [pages, digest sum]
        # the difference table of the summarised pages (None: read from a log that had none)
        self.table: list[list[int]] | None = new_table()
        self.first_section: list[dict] = []  # pages headed in the range's first section
        self.last_section: list[dict] = []  # ... in the highest other section seen so far
        self.last_section_nr: int | None = None
        self.lowest_head: int | None = None
        self.highest_head: int | None = None
        self.reused_head: int | None = None  # the lowest head with a reused PTE
        self.shared_tail: tuple[int, int] | None = None  # (tail pfn, head) first seen twice
        self.problems: list[str] = []  # what no kernel can have produced
        self._heads = PfnSet()  # compound page indices within the range
        self._tails = PfnSet()  # first tail pfns of the summarised pages

    @property
    def what(self) -> str:
        return "walk" if self.source == "walk" else "probes"

    def _problem(self, text: str) -> None:
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(f"{text} ({self.what})")

    def append(self, ev: dict) -> None:
        c = rows.page(ev)
        head = c["head_pfn"]
        shared = tuple(ev[k] for k in SHARED)
        if self.shared is None:
            self.shared = shared
        elif shared != self.shared:
            self._problem(f"compound page at pfn {head} belongs to a range at pfn {shared[0]} of "
                          f"{shared[1]}-page compound pages, the others to one at pfn "
                          f"{self.shared[0]} of {self.shared[1]}")
        start, ppc = self.shared
        self.count += 1
        self._check(c, start, ppc, self._heads)
        self.lowest_head = head if self.lowest_head is None else min(self.lowest_head, head)
        self.highest_head = head if self.highest_head is None else max(self.highest_head, head)
        if c["reused"] and (self.reused_head is None or head < self.reused_head):
            self.reused_head = head
        section = head // self.pages_per_section
        if section == start // self.pages_per_section:
            self.first_section.append(c)
        elif self.last_section_nr is None or section > self.last_section_nr:
            for old in self.last_section:
                self._summarise(old)
            self.last_section, self.last_section_nr = [c], section
        elif section == self.last_section_nr:
            self.last_section.append(c)
        else:
            self._summarise(c)

    def _check(self, c: dict, start: int, ppc: int, heads: PfnSet | None) -> None:
        head = c["head_pfn"]
        if c["ptes"] != c["fresh"] + c["reused"] + c["existing"] or c["on_tail"] > c["reused"] \
                or c["head_fresh"] > 1 or c["tail_fresh"] > 1 \
                or c["head_fresh"] + c["tail_fresh"] > c["fresh"] \
                or c["ptes"] > c["max_index"] + (c["out_of_order"] or 0) \
                or (c["out_of_order"] or 0) > c["ptes"]:
            self._problem(f"compound page at pfn {head} does not add up (ptes {c['ptes']}, fresh "
                          f"{c['fresh']}, reused {c['reused']}, on tail {c['on_tail']})")
        if head < start:
            self._problem(f"compound page at pfn {head} is outside its range")
        elif (head - start) % max(ppc, 1):
            self._problem(f"compound page at pfn {head} is not aligned to the range's "
                          f"{ppc}-page compound pages")
        elif heads is not None and not heads.add((head - start) // max(ppc, 1)):
            self._problem(f"compound page at pfn {head} appears twice")

    def _summarise(self, c: dict) -> None:
        key = tuple(c[k] for k in CLASS)
        cls = self.classes.get(key)
        if cls is None and len(self.classes) < MAX_CLASSES:
            cls = self.classes[key] = [0, c["head_pfn"], c]
        if cls is None:
            self.unclassed += 1
        else:
            cls[0] += 1
            if c["head_pfn"] < cls[1]:
                cls[1], cls[2] = c["head_pfn"], c
        d = digest(c)
        self._add_part(self.parts, c, d)
        assert self.table is not None, "pages appended to a summary read without its cells"
        table_add(self.table, c["head_pfn"], d)
        if c["tail_fresh"] and not self._tails.add(c["tail_pfn"]) and self.shared_tail is None:
            self.shared_tail = (c["tail_pfn"], c["head_pfn"])

    def _geometry(self) -> tuple[int, int]:
        """(range start pfn, pfns per compound page): known from the first page on."""
        assert self.shared is not None, "no compound page yet"
        return self.shared

    def _add_part(self, parts: dict[int, list[int]], c: dict, d: int) -> None:
        start, ppc = self._geometry()
        index = (c["head_pfn"] - start) // max(ppc, 1)
        part = parts.setdefault(index >> self.part_shift, [0, 0])
        part[0] += 1
        part[1] = (part[1] + d) & MASK
        if len(parts) > MAX_PARTS and parts is self.parts:
            self.part_shift += 1
            self.parts = coarsen(parts, 1)

    def fold_in(self, s: dict) -> None:
        """A summary the BPF program made of the pages it judged (struct cp_sum in
        bpf/vmemtrace.bpf.c, decoded by the loader: classes as (pages, lowest-headed page)),
        added to the pages it sent on their own. Its pages are in neither bitmap (BPF keeps
        none): a head seen twice there shows as one compound page too many."""
        shared = (s["range_start_pfn"], s["pfns_per_compound"])
        if self.shared is None:
            self.shared = shared
        elif shared != self.shared:
            self._problem(f"the BPF summary of the range at pfn {shared[0]} was folded into "
                          f"the one at pfn {self.shared[0]}")
        if not s["count"]:
            return
        self.count += s["count"]
        for n, first in s["classes"]:
            c = rows.page(first)
            key = tuple(c[k] for k in CLASS)
            cls = self.classes.get(key)
            if cls is None and len(self.classes) < MAX_CLASSES:
                cls = self.classes[key] = [0, c["head_pfn"], c]
            if cls is None:
                self.unclassed += n
                continue
            cls[0] += n
            if c["head_pfn"] < cls[1]:
                cls[1], cls[2] = c["head_pfn"], c
        self._fold_parts(s["part_shift"], {k: [n, d] for k, n, d in s["parts"]})
        for mine, theirs in zip(self.table or [], s["cells"]):
            mine[0] += theirs[0]
            for i in (1, 2, 3):
                mine[i] ^= theirs[i]
        low, high = s["lowest_head"], s["highest_head"]
        self.lowest_head = low if self.lowest_head is None else min(self.lowest_head, low)
        self.highest_head = high if self.highest_head is None else max(self.highest_head, high)
        if s["reused_head"] is not None and (self.reused_head is None or s["reused_head"] < self.reused_head):
            self.reused_head = s["reused_head"]

    def _fold_parts(self, shift: int, parts: dict[int, list[int]]) -> None:
        """Another summary's parts added to these, both at the coarser shift."""
        top = max(shift, self.part_shift)
        self.parts = coarsen(self.parts, top - self.part_shift)
        for k, (n, d) in coarsen(parts, top - shift).items():
            part = self.parts.setdefault(k, [0, 0])
            part[0] += n
            part[1] = (part[1] + d) & MASK
        self.part_shift = top
        while len(self.parts) > MAX_PARTS:
            self.part_shift += 1
            self.parts = coarsen(self.parts, 1)

    def __len__(self) -> int:
        return self.count

    def kept(self, skip: Callable[[int], bool] = lambda head: False) -> list[dict]:
        """The pages kept whole (those of the first and the highest section), less those whose
        head skip() sets apart, in head order."""
        return sorted((c for c in self.first_section + self.last_section if not skip(c["head_pfn"])),
                      key=lambda c: c["head_pfn"])

    def groups(self, skip: Callable[[int], bool] = lambda head: False) -> Iterator[tuple[dict, int]]:
        """(a compound event, how many pages have its layout): one per layout class, the class's
        lowest-headed page standing for it, then each kept page that skip() does not set apart.
        Pages beyond MAX_CLASSES classes are not among them (unclassed counts them)."""
        for n, _, c in self.classes.values():
            yield self._event(c), n
        for c in self.kept(skip):
            yield self._event(c), 1

    def _event(self, c: dict) -> dict:
        ev = {"type": "compound", **c}
        if self.source is not None:
            ev["source"] = self.source
        if self.shared is not None:
            ev.update(zip(SHARED, self.shared))
        return ev

    def totals(self, keys: tuple[str, ...]) -> dict[str, int] | None:
        """Each key summed over every page (classes times their pages, and the pages kept
        whole); None where pages beyond MAX_CLASSES classes were only counted."""
        if self.unclassed:
            return None
        out = dict.fromkeys(keys, 0)
        for n, _, c in self.classes.values():
            for k in keys:
                out[k] += n * c[k]
        for c in self.first_section + self.last_section:
            for k in keys:
                out[k] += c[k]
        return out

    def judged(self, skip: Callable[[int], bool] = lambda head: False) -> int:
        """Pages skip() does not set apart (it sees only the kept ones: the others cannot lie on
        the boot memmap)."""
        return self.count - len(self.first_section) - len(self.last_section) + len(self.kept(skip))

    def sharing(self, skip: Callable[[int], bool] = lambda head: False) -> tuple[int, int] | None:
        """(tail pfn, head) of a page whose first tail page another page has too, or None."""
        if self.shared_tail is not None:
            return self.shared_tail
        seen = set()
        for c in self.kept(skip):
            if not c["tail_fresh"]:
                continue
            if c["tail_pfn"] in self._tails or c["tail_pfn"] in seen:
                return c["tail_pfn"], c["head_pfn"]
            seen.add(c["tail_pfn"])
        return None

    def digests(self, skip: Callable[[int], bool] = lambda head: False) -> tuple[int, dict[int, list[int]]]:
        """(part shift, per part [pages, digest sum]) of every page skip() does not set apart."""
        if self.shared is None:
            return PART_SHIFT, {}
        parts = {k: list(v) for k, v in self.parts.items()}
        for c in self.kept(skip):
            self._add_part(parts, c, digest(c))
        return self.part_shift, parts

    def difference_table(self, skip: Callable[[int], bool] = lambda head: False
                         ) -> list[list[int]] | None:
        """The difference table of every page skip() does not set apart (None: none logged)."""
        if self.table is None:
            return None
        table = [list(cell) for cell in self.table]
        for c in self.kept(skip):
            table_add(table, c["head_pfn"], digest(c))
        return table

    def part_pfns(self, shift: int, part: int) -> tuple[int, int]:
        start, ppc = self._geometry()
        return start + (part << shift) * ppc, start + ((part + 1) << shift) * ppc

    def nbytes(self) -> int:
        """What the summary holds, roughly: its bitmaps, parts, classes and kept pages."""
        return (self._heads.nbytes() + self._tails.nbytes() + 48 * len(self.parts)
                + 32 * TABLE_CELLS
                + 200 * (len(self.classes) + len(self.first_section) + len(self.last_section)))

    def as_event(self) -> dict:
        """The summary as one "compounds" event (log/events.py) for the log: what the checks read,
        rows in COLUMNS order; not the bitmaps, which only appending needs (a range's summary
        is logged once it is complete)."""
        start, ppc = self._geometry()
        ev = {"type": "compounds", "range_start_pfn": start,
              "pfns_per_compound": ppc, "count": self.count,
              "classes": [[n] + rows.row(c) for n, _, c in self.classes.values()],
              "unclassed": self.unclassed, "part_shift": self.part_shift,
              "parts": [[k, n, d] for k, (n, d) in sorted(self.parts.items())],
              "kept": [rows.row(c) for c in self.kept()], "lowest_head": self.lowest_head,
              "highest_head": self.highest_head, "reused_head": self.reused_head,
              "shared_tail": list(self.shared_tail) if self.shared_tail else None,
              "problems": list(self.problems)}
        if self.source is not None:
            ev["source"] = self.source
        if self.table is not None:
            ev["cells"] = [list(cell) for cell in self.table]
        return ev

    @classmethod
    def from_event(cls, ev: dict) -> "CompoundPages":
        """A logged summary (log/events.py has checked its types), with what no summary made by
        append() can hold among its problems: an edited log."""
        self = cls(ev.get("source"))
        self.shared = (ev["range_start_pfn"], ev["pfns_per_compound"])
        self.count, self.unclassed, self.part_shift = ev["count"], ev["unclassed"], ev["part_shift"]
        self.lowest_head, self.highest_head = ev["lowest_head"], ev["highest_head"]
        if (self.lowest_head is None) != (self.highest_head is None) or (
                self.count and self.lowest_head is None):
            self._problem(f"the summary of {self.count} compound pages has heads "
                          f"{self.lowest_head} to {self.highest_head}")
        self.reused_head = ev["reused_head"]
        self.shared_tail = tuple(ev["shared_tail"]) if ev["shared_tail"] else None
        self.problems = list(ev["problems"])[:MAX_PROBLEMS]
        start, ppc = self.shared
        pages = []
        for row in ev["classes"]:
            c = rows.page_of_row(row[1:])
            key = tuple(c[k] for k in CLASS)
            if key in self.classes or row[0] < 1 or len(self.classes) >= MAX_CLASSES:
                self._problem(f"the summary's layout class of compound page at pfn "
                              f"{c['head_pfn']} is empty, there twice or one too many")
            self.classes[key] = [row[0], c["head_pfn"], c]
            pages.append(c)
        self.first_section = [rows.page_of_row(row) for row in ev["kept"]]
        self.parts = {k: [n, d] for k, n, d in ev["parts"]}
        heads = PfnSet()
        for c, bits in [(c, None) for c in pages] + [(c, heads) for c in self.first_section]:
            self._check(c, start, ppc, bits)
            if self.lowest_head is None or self.highest_head is None \
                    or not self.lowest_head <= c["head_pfn"] <= self.highest_head:
                self._problem(f"compound page at pfn {c['head_pfn']} lies outside the summary's "
                              f"heads {self.lowest_head} to {self.highest_head}")
        summed = sum(n for n, _, _ in self.classes.values()) + self.unclassed
        parted = sum(n for n, _ in self.parts.values())
        if summed + len(self.first_section) != self.count or parted != summed \
                or any(k >> 40 for k in self.parts) or len(self.parts) > LOGGED_PARTS:
            self._problem(f"the summary of {self.count} compound pages does not add up "
                          f"({summed} in layout classes, {len(self.first_section)} kept whole, "
                          f"{parted} in {len(self.parts)} parts)")
        while len(self.parts) > MAX_PARTS:  # schema 3 logs hold up to 1024 parts
            self.part_shift += 1
            self.parts = coarsen(self.parts, 1)
        self._read_table(ev.get("cells"), summed)
        return self

    def _read_table(self, cells: list[list[int]] | None, summed: int) -> None:
        """A logged difference table: each summarised page is in one cell of every sub-table,
        so each sub-table counts them all and xors the same heads, digests and checks. None (a
        summary logged before tables were): the cross-check compares parts only."""
        self.table = cells
        if cells is None:
            return
        sums = table_sums(cells)
        if len(sums) != 1 or next(iter(sums))[0] != summed:
            self._problem(f"the summary's difference table does not hold its {summed} "
                          "summarised compound pages")
