"""One range's compound pages as one source saw them (the probes, or the page-table walk), held
as columns of machine integers rather than one dict per page.

A 1 TiB range of 2 MiB compound pages has 524288 of them per source; as parsed JSON objects
they took 1.9 GB to replay (issue 13). Here a page costs one 8-byte slot per key, about 80
bytes, and the dicts the checks read are rebuilt one at a time as they iterate. Pure: no I/O.
"""

import heapq
from array import array
from typing import Dict, Iterable, Iterator, List, Optional, Tuple, Union

# A "compound" event's own counts (events.REQUIRED), one column each.
COLUMNS = ("head_pfn", "ptes", "fresh", "reused", "existing", "head_fresh", "tail_fresh",
           "tail_pfn", "on_tail", "max_index")
# Keys every compound page of one range shares (the range's start and its compound size, which
# bpf/vmemtrace.bpf.c and backing.py copy into each): kept once, and per page only where a page
# says otherwise (an edited log, which ledger.inconsistencies() then reports).
SHARED = ("range_start_pfn", "pfns_per_compound")


class CompoundPages:
    """A sequence of "compound" events (dicts, as events.py reads them), appended one by one."""

    def __init__(self, source: Optional[str] = None):
        self.source = source  # None: the probes; "walk": the page-table walk
        self._cols = {k: array("Q") for k in COLUMNS}
        self._shared: Optional[Tuple[int, int]] = None
        self._odd: Dict[int, Tuple[int, int]] = {}  # row -> its own SHARED values

    def append(self, ev: dict) -> None:
        shared = tuple(ev[k] for k in SHARED)
        if self._shared is None:
            self._shared = shared
        elif shared != self._shared:
            self._odd[len(self)] = shared
        for k, col in self._cols.items():
            col.append(ev[k])

    def take(self, keep) -> "CompoundPages":
        """Split in two: returns the pages for which keep(head_pfn) is true, self keeps the rest."""
        taken, left = CompoundPages(self.source), CompoundPages(self.source)
        for i in range(len(self)):
            (taken if keep(self._cols["head_pfn"][i]) else left).append(self[i])
        self._cols, self._shared, self._odd = left._cols, left._shared, left._odd
        return taken

    def __len__(self) -> int:
        return len(self._cols["head_pfn"])

    def _row(self, i: int) -> dict:
        ev = {"type": "compound", "head_pfn": 0}
        if self.source is not None:
            ev["source"] = self.source
        for k, v in zip(SHARED, self._odd.get(i, self._shared)):
            ev[k] = v
        for k, col in self._cols.items():
            ev[k] = col[i]
        return ev

    def __getitem__(self, i: Union[int, slice]) -> Union[dict, List[dict]]:
        if isinstance(i, slice):
            return [self._row(j) for j in range(*i.indices(len(self)))]
        n = len(self)
        if not -n <= i < n:
            raise IndexError("compound page index out of range")
        return self._row(i % n)

    def __iter__(self) -> Iterator[dict]:
        for i in range(len(self)):
            yield self._row(i)

    def in_order(self, extra: Iterable[dict] = ()) -> Iterator[dict]:
        """Its pages and `extra` (compound events) in head order, one at a time."""
        heads = self._cols["head_pfn"]
        mine = (self._row(i) for i in sorted(range(len(self)), key=heads.__getitem__))
        theirs = sorted(extra, key=lambda ev: ev["head_pfn"])
        return heapq.merge(mine, theirs, key=lambda ev: ev["head_pfn"])

    def nbytes(self) -> int:
        return sum(c.itemsize * len(c) for c in self._cols.values())
