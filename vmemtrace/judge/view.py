"""The frozen per-device view the checks judge: a range's shape and eligibility, its naive and
expected numbers (geometry, the one source of them), what was observed and by which source,
and the witnesses beside it. Built once per device from a Ledger; pure, no I/O.
"""

from collections.abc import Callable
from dataclasses import dataclass

from vmemtrace.judge import geometry
from vmemtrace.judge.account import Account
from vmemtrace.judge.device_ledger import DeviceLedger
from vmemtrace.judge.layouts import TWO_PAGES, Detected
from vmemtrace.judge.ledger import Ledger
from vmemtrace.log.compounds import CompoundPages
from vmemtrace.probes.plan import Sources

AUDIT_INIT = ("the range existed before tracing: struct page initialisation is only visible "
              "while memmap_init_zone_device runs (use `verify` when the device is created)")
BY_WALK = " (page-table walk)"


@dataclass(frozen=True)
class Observed:
    """What the trace saw for one device, None where it could not see."""

    vmemmap_pages: int | None
    struct_pages_initialized: int | None
    init_source: str
    compounds: CompoundPages | None  # the compound pages' vmemmap layout, judged (log/compounds.py)
    reused: int | None  # vmemmap PTEs mapped onto an already used page
    how: str  # "" when probes saw it, BY_WALK when the page-table walk did
    vmemmap_why: str  # why vmemmap_pages is None, or why the walk answered instead of the probes
    populate_why: str  # the same for the per-compound-page layout
    account: Account


@dataclass(frozen=True)
class Expected:
    """geometry's numbers for the range: without the optimisation (naive) and with what the
    kernel must do for this shape (expected)."""

    vmemmap_naive: int
    vmemmap: int
    init_naive: int
    init: int
    per_compound: int  # vmemmap pages behind one compound page
    compound_pages: int
    init_per_compound: int  # compound_nr_pages(): struct pages memmap_init_compound initialises
    init_loop: int  # pfns of memmap_init_zone_device's loop
    vmemmap_naive_least: int = 0  # naive, with its straddled edge blocks mapped by a neighbour
    vmemmap_span: int = 0  # vmemmap pages behind the range, each its own page when unoptimised
    boot_vmemmap: int = 0  # vmemmap pages of pieces on the boot memmap: mapped, not allocated
    boot_compounds: int = 0  # compound pages on the boot memmap: not laid out by populate
    init_unfixed: int = 0  # init on a kernel without compat.BOOT_MEMMAP_INIT (= init without boot pieces)
    shared_pages: int = 0  # tail pages shared per zone and order behind the range (shared-tail layout)

    @property
    def laid_out(self) -> int:
        """Compound pages whose vmemmap the populate path lays out (probes and walk see them)."""
        return self.compound_pages - self.boot_compounds

    def vmemmap_seen(self, by_walk: bool, naive: bool = False) -> tuple[int, int]:
        """The fewest and most vmemmap pages a source should count: allocated (probes: edge
        blocks shared with a neighbouring section may have been mapped before), or distinct
        pages behind the range (walk: exact, the boot memmap's included)."""
        if by_walk:
            n = self.vmemmap_span if naive else self.vmemmap + self.boot_vmemmap + self.shared_pages
            return n, n
        if naive:
            return self.vmemmap_naive_least, self.vmemmap_naive
        # The shared tail page is allocated by the range that first needs it in its zone.
        return self.vmemmap, self.vmemmap + self.shared_pages


def bounds(low_high: tuple[int, int]) -> str:
    low, high = low_high
    return str(high) if low == high else f"{low} to {high}"


@dataclass(frozen=True)
class DeviceView:
    name: str
    shape: geometry.RangeShape
    feature: bool
    layout: Detected  # the kernel's vmemmap layout and why (judge/layouts.py)
    evidence: str  # why the kernel is said to have the feature, or not
    expect: str  # auto | optimized | unoptimized
    eligible: bool
    why: str  # why eligible or not
    numbers: Expected
    seen: Observed
    sources: Sources
    range: dict | None  # the memmap_init_zone_device event, None when not seen
    walk: dict | None
    probe_compounds: CompoundPages
    walk_compounds: CompoundPages
    probe_allocated: int  # vmemmap pages the allocator probes saw
    probe_reused: int  # PTEs the populate probes saw reused
    kernel_log: dict | None
    vmstat: dict[str, int]  # nr_memmap_pages before/after the command, where read
    n_devices: int
    cross_check: bool  # verify --cross-check asked for probes against the walk
    boot_unknown: tuple[tuple[int, int], ...] = ()  # partial pieces nothing places (ledger.boot_placement)


def _not_walked(ledger: Ledger) -> str:
    blocker = ledger.header.get("walk_blocker")
    return f", and the page-table walk could not run: {blocker}" if blocker else ", and the range was not walked"


def _init_observed(d: DeviceLedger, ledger: Ledger, acct: Account,
                   shape: geometry.RangeShape) -> tuple[int | None, str]:
    """The struct pages initialised, and how they were counted (or why they were not)."""
    src = ledger.sources
    if d.range is not None and acct.init is None:
        if src.init_pages:
            return d.range["izdp_calls"], "__init_zone_device_page calls, counted"
        if d.range["pfns_per_compound"] <= 1:
            # No compound pages: memmap_init_zone_device() initialises every pfn of its loop
            # one by one (mm/mm_init.c); the loop bounds are the kernel's own arguments.
            return (geometry.init_loop_pages(shape), "every pfn of memmap_init_zone_device's loop")
        return d.range["mic_pages"], "memmap_init_compound nr_pages, summed"
    if d.range is None and d.walk is not None:
        return None, AUDIT_INIT
    return None, acct.init or ""


def observe(d: DeviceLedger, ledger: Ledger, shape: geometry.RangeShape) -> Observed:
    """Probes first where their counts add up for this range of this shape (judge/account.py); the
    page-table walk where it ran; else nothing, with the reason."""
    src = ledger.sources
    acct = d.account(src, shape)
    vmemmap, compounds, reused, walked = None, None, None, ""
    vmemmap_why = populate_why = ""
    if acct.alloc is None:
        vmemmap = d.allocated_pages(shape.page_size)
    elif d.walk is not None:
        vmemmap, walked = d.walk["distinct"], BY_WALK
        vmemmap_why = f"; probes: {acct.alloc}" if src.alloc and d.sections else ""
    else:
        vmemmap_why = acct.alloc + _not_walked(ledger)
    if acct.populate is None:
        compounds, reused = d.compounds, d.totals()["reused"]
    elif d.walk is not None:
        compounds, reused, walked = d.walk_compounds, d.walk["reused"], BY_WALK
        populate_why = f"; probes: {acct.populate}" if src.populate and d.sections else ""
    else:
        populate_why = acct.populate + _not_walked(ledger)
    init, how = _init_observed(d, ledger, acct, shape)
    return Observed(vmemmap, init, how, compounds, reused, walked, vmemmap_why, populate_why, acct)


def _model(ledger: Ledger):
    """The layout the numbers are computed by: the kernel's, or where vmemtrace does not know
    it, the last one it does (whatever then differs cannot fail: checks.layout_doubt())."""
    return ledger.layout.layout or TWO_PAGES


def expected(shape: geometry.RangeShape) -> Expected:
    eligible = geometry.eligibility(shape)[0]
    laid_out = geometry.compound_pages(shape) - geometry.boot_compound_pages(shape)
    return Expected(
        vmemmap_naive=geometry.vmemmap_pages_naive(shape),
        vmemmap=geometry.vmemmap_pages_expected(shape),
        init_naive=geometry.struct_pages_init_naive(shape),
        init=geometry.struct_pages_init_expected(shape),
        per_compound=geometry.vmemmap_pages_per_compound(shape),
        compound_pages=geometry.compound_pages(shape),
        init_per_compound=geometry.compound_nr_pages(shape),
        init_loop=geometry.init_loop_pages(shape),
        vmemmap_naive_least=geometry.vmemmap_pages_naive_least(shape),
        vmemmap_span=geometry.vmemmap_span(shape.start_pfn, shape.nr_pages,
                                           shape.struct_page_size, shape.page_size),
        boot_vmemmap=geometry.boot_vmemmap_pages(shape),
        boot_compounds=geometry.boot_compound_pages(shape),
        init_unfixed=geometry.struct_pages_init_expected(shape, boot_fix=False),
        shared_pages=int(shape.layout.shared_tails and eligible and laid_out > 0))


def device_view(d: DeviceLedger, ledger: Ledger, expect: str) -> DeviceView:
    """The one snapshot of a device the checks, the document and the metrics read: its shape
    computed once, and everything observed of it against that shape."""
    shape = d.shape(ledger.feature, _model(ledger))
    eligible, why = geometry.eligibility(shape)
    return DeviceView(
        name=d.name, shape=shape, feature=ledger.feature, layout=ledger.layout,
        evidence=ledger.header["feature"]["evidence"], expect=expect, eligible=eligible, why=why,
        numbers=expected(shape), seen=observe(d, ledger, shape), sources=ledger.sources,
        range=d.range, walk=d.walk, probe_compounds=d.compounds,
        walk_compounds=d.walk_compounds,
        probe_allocated=d.allocated_pages(shape.page_size),
        probe_reused=d.totals()["reused"], kernel_log=d.kernel_log, vmstat=dict(ledger.vmstat),
        n_devices=len(ledger.devices), cross_check=ledger.header.get("walk") == "cross-check",
        boot_unknown=d.boot_placement()[1])


def on_boot(v: DeviceView) -> Callable[[int], bool]:
    """Whether a compound page, by its head, is on the boot memmap (boot-memmap): not laid out
    by the populate path, its vmemmap the boot's; the checks of the layout set it apart."""
    return lambda head: geometry.on_boot_memmap(head, v.shape)
