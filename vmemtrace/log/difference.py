"""The difference table and page digests that --cross-check compares between two sources of one
range's compound pages, computed bit for bit as bpf/vmemtrace.bpf.c computes them (cp_digest(),
vt_mix()): the program judges the probes' pages, log/compounds.py the walk's. Pure."""

from collections.abc import Iterable

# What the probes and the walk must agree on per compound page (the walk cannot tell a
# pre-existing PTE from a new one, so "existing" is not among them).
LAYOUT = ("ptes", "fresh", "reused", "on_tail", "tail_pfn", "head_fresh", "tail_fresh")
MASK = (1 << 64) - 1


def coarsen(parts: dict[int, list[int]], by: int) -> dict[int, list[int]]:
    """Parts merged 2^by at a time: the digest of a union is the sum of the digests."""
    out: dict[int, list[int]] = {}
    for k, (n, d) in parts.items():
        part = out.setdefault(k >> by, [0, 0])
        part[0] += n
        part[1] = (part[1] + d) & MASK
    return out


# The difference table: an invertible Bloom lookup table (Eppstein, Goodrich, Uyeda, Varghese,
# "What's the difference? Efficient set reconciliation without prior context", SIGCOMM 2011).
# Each page adds (1, head pfn, digest, check) into one cell of each of TABLE_HASHES sub-tables,
# counts summed and the rest xor-ed, so the table does not depend on the order pages came in.
# One source's table less another's holds only the pages they disagree on (a page both saw
# alike cancels out); it lists them one by one while they are few: peeling a 3-hash table
# succeeds with high probability up to about cells / 1.23 entries (a page seen differently by
# both sources is two), whatever the range's size.
TABLE_HASHES = 3
TABLE_WIDTH = 16  # cells per sub-table: a power of two (bpf/ picks a cell with & (width - 1))
TABLE_CELLS = TABLE_HASHES * TABLE_WIDTH
CELL_WIDTH = 4  # a cell: [pages, head xor, digest xor, check xor]


GOLDEN = 0x9E3779B97F4A7C15


def mix(z: int) -> int:
    """splitmix64's finaliser (bpf/vmemtrace.bpf.c vt_mix(), bit for bit: the program judges
    the probes' pages, this module the walk's, and --cross-check compares the two)."""
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return z ^ (z >> 31)


def digest(c: dict) -> int:
    """A compound page's (head, layout) as 64 bits (bpf/vmemtrace.bpf.c cp_digest()); summed
    modulo 2^64 per part, the sum does not depend on the order the pages came in."""
    h = 0
    for v in (c["head_pfn"],) + tuple(c[k] for k in LAYOUT):
        h = mix(((h ^ v) + GOLDEN) & MASK)
    return h


def check_of(d: int) -> int:
    """A second hash of a digest: a table cell holds exactly one page when its check is the
    check of its digest; it also picks the page's cells."""
    return mix((d + GOLDEN) & MASK)


def new_table() -> list[list[int]]:
    return [[0] * CELL_WIDTH for _ in range(TABLE_CELLS)]


def table_add(table: list[list[int]], head: int, d: int, sign: int = 1) -> None:
    """One page into (sign 1) or out of (-1) a difference table: [pages, head xor, digest xor,
    check xor] in one cell of each sub-table."""
    chk = check_of(d)
    for j in range(TABLE_HASHES):
        cell = table[j * TABLE_WIDTH + (chk >> (16 * j)) % TABLE_WIDTH]
        cell[0] += sign
        cell[1] ^= head
        cell[2] ^= d
        cell[3] ^= chk


def table_difference(a: list[list[int]], b: list[list[int]]) -> list[tuple[int, int]] | None:
    """The pages in which two sources' tables differ, as (head pfn, 1 where only a has that
    (head, layout), -1 where only b has it), in head order; None where more differ than the
    table can list."""
    diff = [[x[0] - y[0], x[1] ^ y[1], x[2] ^ y[2], x[3] ^ y[3]] for x, y in zip(a, b)]
    found: list[tuple[int, int]] = []
    progress = True
    while progress and len(found) <= TABLE_CELLS:  # an edited log's table may never empty
        progress = False
        for cell in diff:
            if cell[0] in (1, -1) and check_of(cell[2]) == cell[3]:
                head, d, sign = cell[1], cell[2], cell[0]
                found.append((head, sign))
                table_add(diff, head, d, -sign)
                progress = True
    if any(any(cell) for cell in diff):
        return None
    return sorted(found)


def xor_all(values: Iterable[int]) -> int:
    out = 0
    for v in values:
        out ^= v
    return out


def table_sums(cells: list[list[int]]) -> set[tuple[int, ...]]:
    """Per sub-table of a difference table: (pages, head xor, digest xor, check xor). Each page is
    in one cell of every sub-table, so a whole table has one tuple here."""
    subs = [cells[j * TABLE_WIDTH:(j + 1) * TABLE_WIDTH] for j in range(TABLE_HASHES)]
    return {(sum(c[0] for c in sub), *(xor_all(c[i] for c in sub) for i in (1, 2, 3)))
            for sub in subs}
