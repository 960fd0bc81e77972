"""`vmemtrace audit`, and the walk verify does after each range: read the vmemmap page tables
of device ranges through /proc/kcore (kernel/kcore.py) and turn them into events (walk/backing.py)."""

import os
from collections.abc import Callable, Iterator

from vmemtrace.errors import VmemtraceError
from vmemtrace.judge import geometry
from vmemtrace.kernel import btf, compat, daxdev
from vmemtrace.kernel.config import enabled
from vmemtrace.kernel.kcore import SectionTable, Walker
from vmemtrace.log import events
from vmemtrace.log.events import header_event
from vmemtrace.probes.plan import AUDITED, WALK_STRATEGY
from vmemtrace.probes.readiness import assess, read_facts
from vmemtrace.probes.targets import FUNCTIONS, TARGETS, WALK_TARGETS
from vmemtrace.walk.backing import Walked, walk_events
from vmemtrace.walk.hugetlb import walk_sizes


def walk_range(walker: Walker, start_pfn: int, nr_pages: int, pfns_per_compound: int,
               altmap: bool, struct_page_size: int, page_size: int) -> Walked:
    backing = walker.backing(start_pfn, nr_pages, struct_page_size)
    out = walk_events(start_pfn, nr_pages, pfns_per_compound, altmap, backing,
                      struct_page_size, page_size, walker.layout.levels)
    boot = boot_sections(walker, start_pfn, nr_pages)
    if boot is not None:
        out.walk["boot_sections"] = boot
    return out


def boot_sections(walker: Walker, start_pfn: int, nr_pages: int) -> list[int] | None:
    """The range's partly filled sections that were present at boot, whose pieces reuse the
    boot memmap (geometry.boot_shared()); None where mem_section cannot be read."""
    pps = geometry.PAGES_PER_SECTION
    return walker.boot_sections({pfn // pps for pfn, _ in geometry.partial_pieces(start_pfn, nr_pages)})


def open_walker(facts) -> Walker:
    if os.geteuid() != 0:
        raise VmemtraceError("the page-table walk needs root (it reads /proc/kcore)")
    if facts.walk_blocker:
        raise VmemtraceError(f"cannot walk the page tables: {facts.walk_blocker}")
    return Walker(facts.syms.addresses, sections=section_table(facts))


def section_table(facts) -> SectionTable | None:
    """mem_section's layout (kernel/kcore.py): the entry size from BTF, else from the config
    (include/linux/mmzone.h: two words, four with CONFIG_PAGE_EXTENSION); None when neither
    says."""
    extreme = enabled(facts.config, "SPARSEMEM_EXTREME") is not False
    layout = btf.try_layout(facts.btf, lambda _: None, "", FUNCTIONS)  # read once per process
    size = layout.mem_section if layout is not None else None
    if size is None and facts.config is not None:
        size = 32 if enabled(facts.config, "PAGE_EXTENSION") else 16
    return None if size is None else SectionTable(size, extreme)


def struct_page_size(facts, progress: Callable[[str], None]) -> int:
    """sizeof(struct page) from the kernel's BTF (kernel/btf.py); without BTF, x86_64's 64
    (judge/geometry.py), as every Debian kernel measured has it, and said so."""
    assumed = f"assuming a {geometry.STRUCT_PAGE_SIZE}-byte struct page"
    layout = btf.try_layout(facts.btf, progress, assumed, FUNCTIONS)
    if layout is not None:
        return layout.struct_page
    if not facts.btf:
        progress(f"no BTF: {assumed}")
    return geometry.STRUCT_PAGE_SIZE


def auditable(devices: list[dict], progress: Callable[[str], None]) -> list[dict]:
    """The device ranges that have a ZONE_DEVICE memmap to walk, each other one said why not."""
    out = []
    for dev in devices:
        if dev.get("driver") == "kmem":
            progress(f"{dev['name']}: skipped, onlined as System RAM (kmem): not ZONE_DEVICE")
        elif "driver" not in dev:  # dev_dax_probe() never ran: no pgmap, no memmap to walk
            progress(f"{dev['name']}: skipped, no driver bound, so no vmemmap "
                     f"(daxctl enable-device {dev['name']} binds device_dax)")
        else:
            out.append(dev)
    return out


def audit_events(walker: Walker, facts, progress: Callable[[str], None], only=(),
                 hugetlb: bool = False) -> Iterator[dict]:
    """Per dax device in sysfs now (only those -d names, if any): the walk of its pgmap range,
    then its device event; with hugetlb, then per hugepage size its folios walked (the
    exporter walks those itself, walk/hugetlb.py Watch). Streamed: a 1 TiB range's compound
    pages are rows of columns (walk/backing.py) until the fold takes them, never a list of
    dicts (600 MB at 1 TiB)."""
    version, page = facts.version, struct_page_size(facts, progress)
    devices = auditable([d for d in daxdev.inventory() if events.named(d, only)], progress)
    progress(f"walking the vmemmap page tables ({walker.layout.levels}-level paging) "
             f"of {len(devices)} dax device ranges")
    for dev in devices:
        align = dev["align"] or geometry.PAGE_SIZE
        # Before compound devmaps every struct page is a base page (kernel/compat.py).
        per = align // geometry.PAGE_SIZE if compat.has(version, compat.COMPOUND_DEVMAP) else 1
        walked = walk_range(walker, dev.get("pgmap_start_pfn", dev["start_pfn"]),
                            dev.get("pgmap_nr_pages", dev["nr_pages"]), per,
                            dev.get("mode") == "pmem", page, geometry.PAGE_SIZE)
        walked.walk["existing"] = True  # the walk event: a device that was there before tracing
        yield from walked
        yield dev
    if hugetlb and (not only or any(n.startswith("hugetlb-") for n in only)):
        yield from walk_sizes(walker, facts, page, progress)


def existing_devices(facts, walker: Walker | None,
                     progress: Callable[[str], None]) -> Iterator[dict]:
    """audit_events with the walker already open, or one opened for the purpose; none (or
    those walked so far), with the reason said, where the walk cannot run (the exporter then
    reports only what it traces)."""
    try:
        if walker is not None:
            yield from audit_events(walker, facts, progress)
        else:
            with open_walker(facts) as own:
                yield from audit_events(own, facts, progress)
    except VmemtraceError as e:
        progress(f"devices that existed before start are not reported: {e}")


def _audit_header(facts, walked: bool = True) -> dict:
    walk = WALK_STRATEGY if walked else "unavailable"
    strategy = {t.name: walk if t.name in WALK_TARGETS else AUDITED for t in TARGETS}
    return header_event(facts, assess(facts), [], walk="audit", strategy=strategy)


def audit_log(progress: Callable[[str], None], only=()) -> Iterator[dict]:
    """The event log of an audit, streamed: a header, then per dax device its walk and its
    device event. Nothing is read before the first event is asked for; a walk that cannot run
    fails then, before any event."""
    facts = read_facts(with_bcc=False)
    with open_walker(facts) as walker:
        yield _audit_header(facts)
        yield from audit_events(walker, facts, progress, only, hugetlb=True)


def audit_or_header(progress: Callable[[str], None],
                    hugetlb: bool = False) -> tuple[list[dict], str | None]:
    """The audit's log (with hugetlb, the hugetlb folios' too), or where the walk cannot run the
    header alone (the kernel still named) and why; nothing at all where even the kernel's facts
    cannot be read."""
    try:
        facts = read_facts(with_bcc=False)
    except VmemtraceError as e:
        return [], str(e)
    try:
        with open_walker(facts) as walker:
            return [_audit_header(facts), *audit_events(walker, facts, progress,
                                                        hugetlb=hugetlb)], None
    except VmemtraceError as e:
        return [_audit_header(facts, walked=False)], str(e)
