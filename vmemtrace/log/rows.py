"""A compound page as a logged row (a "compounds" event's classes and kept pages) and back,
including rows logged before out_of_order was recorded. Pure."""

# A "compound" event's own counts (events.REQUIRED, and out_of_order), in the order a logged row
# has them; rows logged before out_of_order was recorded (schema 3) lack the last column, and
# read it as None: their pages cannot show an index populated twice beside one skipped.
COLUMNS = ("head_pfn", "ptes", "fresh", "reused", "existing", "head_fresh", "tail_fresh",
           "tail_pfn", "on_tail", "max_index", "out_of_order")
LEGACY_COLUMNS = COLUMNS[:-1]

# A "hugetlb" event's row (walk/hugetlb.py): the folios mapped alike, the lowest head pfn among
# them, then how their vmemmap is mapped: PTEs, those present, distinct pages behind them, those
# mapped at PTE level, whether the head's is writable, tails on the head's page, tails on the
# page behind the first tail, writable tails.
HUGETLB_ROW = ("folios", "first_head", "ptes", "mapped", "distinct", "pte_mapped",
               "head_writable", "on_head", "on_first_tail", "tails_writable")


def page(ev: dict) -> dict:
    """A compound event's or BPF page's counts, by COLUMNS; out_of_order None where not
    recorded."""
    return {k: ev.get(k) for k in COLUMNS}


def page_of_row(row: list[int]) -> dict:
    """A logged row (of COLUMNS, or LEGACY_COLUMNS) as a page."""
    return page(dict(zip(COLUMNS, row)))


def row(c: dict) -> list[int]:
    """A page as the row a log holds, of COLUMNS (LEGACY_COLUMNS where out_of_order is None)."""
    return [c[k] for k in (COLUMNS if c["out_of_order"] is not None else LEGACY_COLUMNS)]


def layouts(ev: dict) -> list[tuple[tuple, int]]:
    """A logged summary's pages by (ptes, fresh, reused, on tail), most common first: what a
    line of `trace` shows of it."""
    out: dict[tuple, int] = {}
    rows = [(row[0], page_of_row(row[1:])) for row in ev["classes"]]
    rows += [(1, page_of_row(row)) for row in ev["kept"]]
    for n, c in rows:
        key = (c["ptes"], c["fresh"], c["reused"], c["on_tail"])
        out[key] = out.get(key, 0) + n
    return sorted(out.items(), key=lambda kv: -kv[1])
