"""A live tracing session: kernel facts, the BPF tracer, the command it watches, and the event
log it produces (header first). verify, record, trace and stats all run through here."""

import subprocess
import sys
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

from vmemtrace.errors import VmemtraceError, terminate_on_sigterm
from vmemtrace.judge.device_ledger import DeviceLedger
from vmemtrace.judge.ledger import Folding
from vmemtrace.kernel import daxdev, leftovers, vmstat
from vmemtrace.kernel.ftrace import tracefs
from vmemtrace.kernel.kmsg import KmsgCursor, parse_memmap_init
from vmemtrace.log.events import header_event
from vmemtrace.log.sections import Sections, first_pfn, summed
from vmemtrace.probes.plan import Sources
from vmemtrace.probes.readiness import assess, cannot_trace, read_facts
from vmemtrace.walk.audit import boot_sections, existing_devices, struct_page_size, walk_range
from vmemtrace.walk.hugetlb import Snapshot, Watch, snapshot, walk_changes


def walk_mode(ready, cross_check: bool) -> str | None:
    """Whether every range gets walked: with --cross-check (which needs the probes it checks),
    and where the probes cannot see the populate or the allocations at all (kernel/kcore.py).
    Otherwise only a range whose probe counts do not add up is (traced(), _needs_walk())."""
    seen = Sources.from_strategy({s.name: s.strategy for s in ready.plan})
    if cross_check:
        if not seen.cross_checkable:
            raise VmemtraceError("--cross-check compares the populate probes with the page-table "
                                 "walk, and this kernel does not let them attach (see `vmemtrace "
                                 "check`); plain verify already walks the page tables here")
        return "cross-check"
    if not (seen.populate and seen.alloc):
        return "fallback"
    return None


def open_tracer(progress: Callable[[str], None], cross_check: bool = False, exclude=(),
                attach: str = "auto"):
    """Facts, readiness, a loaded Tracer and the page-table walker where it can run (it walks
    every range in the modes of walk_mode(), and any range whose probe counts do not add up);
    exit 2 with the reason when tracing cannot start."""
    from vmemtrace.probes.program import kaddrs_sources, take_compile
    from vmemtrace.probes.startup import STARTUP
    from vmemtrace.probes.tracer import PAGES, Tracer
    from vmemtrace.walk.audit import open_walker

    compiled = take_compile(progress)
    walker = None
    try:
        with STARTUP.span("kernel facts: kallsyms, ftrace, config, BTF"):
            facts = read_facts()
        ready = assess(facts, exclude, attach)
        if ready.blockers:
            raise cannot_trace(ready.blockers)
        if facts.leftovers:  # a tracer killed before it could detach (kernel/leftovers.py)
            leftovers.remove(tracefs(Path("/")), facts.leftovers)
            progress(f"removed {len(facts.leftovers)} kprobe events left by dead tracers: "
                     + "; ".join(map(str, facts.leftovers)))
        mode = walk_mode(ready, cross_check)
        if mode or facts.walk_blocker is None:
            with STARTUP.span("page-table walker: kcore"):
                walker = open_walker(facts)
        if compiled is None:
            raise VmemtraceError("cannot trace: the BPF program could not be compiled",
                                 reason="compile_failed")
        tracer = Tracer(ready.plan, compiled, progress, facts.syms.addresses)
    except BaseException:
        if compiled is not None:
            compiled.discard()  # never exit while libbcc is still compiling in its thread
        if walker is not None:
            walker.close()
        raise
    progress(f"attached to {', '.join(tracer.attached)} in {time.monotonic() - compiled.started:.1f}s"
             + (f"; page-table walk after each range ({mode})" if mode else ""))
    if tracer.buffer_pages != PAGES:
        progress("perf buffers cut to " + ", ".join(f"{t} {n}" for t, n in tracer.buffer_pages.items())
                 + " pages per CPU by the locked-memory limit: large devices may lose events")
    # As attached: a trampoline the kernel refused was replaced by kprobes (probes/tracer.py).
    strategy = {s.name: tracer.attached.get(s.name, s.strategy) for s in ready.plan}
    header = header_event(facts, ready, tracer.cflags, mode, strategy)
    header["facts_from"] = {**tracer.fact_sources, **kaddrs_sources(tracer.kaddrs)}
    header["walk_blocker"] = None if walker is not None else facts.walk_blocker
    return tracer, walker, facts, header, mode


def _needs_walk(header: dict, rng: dict, sections: Sections) -> bool:
    """The probes' counts for this range do not add up (judge/account.py): its page tables answer."""
    d = DeviceLedger(rng["start_pfn"], rng["nr_pages"], range=rng, sections=sections)
    return d.account(Sources.from_strategy(header["strategy"]),
                     d.shape(bool(header["feature"]["present"]))).needs_walk


def closing_events(tracer, kmsg: KmsgCursor | None = None) -> list[dict]:
    """What is left once the command is done: compound pages of ranges that never completed,
    losses and BPF-side errors, the kernel's own log and counter, the dax devices in sysfs."""
    out = list(tracer.drain_sections()) + list(tracer.drain_compound())
    if kmsg is not None:
        out.extend(ev for ev in map(parse_memmap_init, kmsg.messages()) if ev)
    out.append({"type": "lost", "count": tracer.lost, "errors": tracer.errors()})
    out.append({"type": "hits", "hits": tracer.hits()})
    counters = vmstat.vmstat_event("after")
    if counters is not None:
        out.append(counters)
    out.extend(daxdev.inventory())
    return out


class Folded(Folding):
    """A trace folded as it goes (ledger.Fold), its events not kept: verify and record hold the
    memory their ranges need, not one object per event (a 1 TiB range logs a million)."""


# Seconds a command gets to exit after SIGTERM when vmemtrace is interrupted, before SIGKILL.
CHILD_GRACE = 5.0


def stop_child(child: subprocess.Popen, waiter: threading.Thread) -> None:
    """SIGTERM, then SIGKILL after CHILD_GRACE seconds: a command that ignores SIGTERM must not
    keep an interrupted vmemtrace (and its probes) waiting for ever."""
    child.terminate()
    waiter.join(CHILD_GRACE)
    if waiter.is_alive():
        child.kill()
        waiter.join()


def run_command(argv: list[str], tracer, on_events: Callable[[list[dict]], None],
                quiet_stdout: bool = False) -> dict:
    """Run argv (no shell) while polling the tracer; returns the command event. With
    quiet_stdout the command's stdout goes to our stderr, keeping ours clean for JSON."""
    start = time.monotonic()
    try:
        child = subprocess.Popen(argv, stdout=sys.stderr if quiet_stdout else None)
    except OSError as e:
        raise VmemtraceError(f"cannot run {argv[0]}: {e.strerror}") from None
    # The command's own wall time, stamped when it exits: the poll loop below may sit in
    # perf_buffer_poll() for up to 100 ms after that (bench/ measured the difference).
    ended = []
    waiter = threading.Thread(target=lambda: ended.append((child.wait(), time.monotonic())),
                              daemon=True)
    waiter.start()
    try:
        while waiter.is_alive():
            on_events(tracer.poll(100))
    except KeyboardInterrupt:
        stop_child(child, waiter)
        raise
    # The last events may still sit in the perf buffer.
    for _ in range(3):
        on_events(tracer.poll(50))
    return {"type": "command", "argv": argv, "exit": child.returncode,
            "seconds": round(ended[0][1] - start, 3)}


@contextmanager
def traced(progress: Callable[[str], None], on_event: Callable[[dict], None] | None = None,
           cross_check: bool = False, audit_existing: bool = False, exclude=(), keep: bool = True,
           sink=None, attach: str = "auto", hugetlb: str = ""):
    """Attach, log the header and the "before" counter (and with audit_existing the walk of the
    devices that exist already); yields (tracer, take, log, watch): log is every event (a list),
    without keep a Folded, or the sink given (anything with append: the exporter's LiveLedger).
    On the way out, closing events are logged and everything is detached, whatever happened.
    hugetlb "command": the hugetlb folios the command allocated or freed are walked at the end;
    "watch": watch is a walk/hugetlb.py Watch of the pools for the caller to poll (else None)."""
    log = sink if sink is not None else [] if keep else Folded()
    walker, mode, sections = None, None, []

    def take(events):
        for ev in events:
            if ev["type"] == "range" and walker is not None:
                # Which of its sections were there at boot: set at boot, read any time after.
                boot = boot_sections(walker, ev["start_pfn"], ev["nr_pages"])
                if boot is not None:
                    ev["boot_sections"] = boot
            log.append(ev)
            if on_event:
                on_event(ev)
            if ev["type"] in ("section", "sections"):
                sections.append(ev)
            elif ev["type"] == "range":
                end = ev["start_pfn"] + ev["nr_pages"]
                inside = [ev["start_pfn"] <= first_pfn(s) < end for s in sections]
                mine = [s for s, i in zip(sections, inside) if i]
                sections[:] = [s for s, i in zip(sections, inside) if not i]
                if walker is not None and (mode or _needs_walk(header, ev, summed(mine))):
                    # memmap_init_zone_device has returned: the range's vmemmap is complete.
                    take(walk_range(walker, ev["start_pfn"], ev["nr_pages"], ev["pfns_per_compound"],
                                    bool(ev["altmap"]), ev["struct_page_size"], ev["page_size"]))

    with terminate_on_sigterm():
        tracer, walker, facts, header, mode = open_tracer(progress, cross_check, exclude, attach)
        kmsg = KmsgCursor()
        try:
            with tracer:
                take([header])
                before = vmstat.vmstat_event("before")
                if before is not None:
                    take([before])
                if audit_existing:  # after attaching: whatever is created from now on is traced
                    take(existing_devices(facts, walker, progress))
                folios = hugetlb_before(walker, progress) if hugetlb == "command" else None
                watch = hugetlb_watch(walker, facts, progress) if hugetlb == "watch" else None
                yield tracer, take, log, watch
                take(closing_events(tracer, kmsg))
                if folios is not None and walker is not None:
                    take(hugetlb_changes(walker, facts, folios, progress))
        finally:
            kmsg.close()
            if walker is not None:
                walker.close()


def hugetlb_before(walker, progress: Callable[[str], None]) -> Snapshot | None:
    """The hugetlb folios before the command, where their vmemmap can be walked afterwards."""
    if walker is None:
        return None
    try:
        return snapshot()
    except VmemtraceError as e:
        progress(f"hugetlb folios will not be judged: {e}")
        return None


def hugetlb_watch(walker, facts, progress: Callable[[str], None]) -> Watch | None:
    if walker is None:
        progress("hugetlb pools will not be reported: the page-table walk cannot run")
        return None
    try:
        return Watch(walker, facts, struct_page_size(facts, progress), progress)
    except VmemtraceError as e:
        progress(f"hugetlb pools will not be reported: {e}")
        return None


def pools_walked(watch: Watch | None, progress: Callable[[str], None]):
    """(watch, events): the hugetlb events of a new walk of the pools where they changed since
    the last one (walk/hugetlb.py Watch), else None; the watch is None once it cannot walk them
    any more (said once)."""
    if watch is None:
        return None, None
    try:
        return watch, watch.poll()
    except VmemtraceError as e:
        progress(f"hugetlb pools no longer reported: {e}")
        return None, None


def hugetlb_changes(walker, facts, before: Snapshot, progress: Callable[[str], None]) -> list[dict]:
    try:
        page = struct_page_size(facts, progress)
        return list(walk_changes(walker, facts, page, before, progress))
    except VmemtraceError as e:
        progress(f"hugetlb folios not judged: {e}")
        return []


def trace_command(argv: list[str], progress: Callable[[str], None],
                  on_event: Callable[[dict], None] | None = None,
                  quiet_stdout: bool = False, cross_check: bool = False,
                  exclude=(), attach: str = "auto") -> Folded:
    """argv run under tracing, folded as its events come (on_event sees each one), with the
    hugetlb folios it allocated or freed walked at the end."""
    with traced(progress, on_event, cross_check, exclude=exclude, keep=False,
                attach=attach, hugetlb="command") as (tracer, take, log, _):
        command = run_command(argv, tracer, take, quiet_stdout)
    take([command])
    return log


# How often, at most, trace, stats and the exporter look whether the hugetlb pools changed.
POOLS_SECONDS = 1.0


def watch(seconds: float | None, progress: Callable[[str], None],
          on_event: Callable[[dict], None], tick: Callable[[], bool] | None = None) -> list[dict]:
    """Trace with no command until `seconds` pass, Ctrl-C/SIGTERM, or tick() returns False; the
    hugetlb pools walked whenever they change."""
    with traced(progress, on_event, hugetlb="watch") as (tracer, take, log, pools):
        deadline = None if seconds is None else time.monotonic() + seconds
        next_look = time.monotonic()
        try:
            while deadline is None or time.monotonic() < deadline:
                take(tracer.poll(100))
                if time.monotonic() >= next_look:
                    pools, walked = pools_walked(pools, progress)
                    take(walked or [])
                    next_look = time.monotonic() + POOLS_SECONDS
                if tick is not None and not tick():
                    break
        except KeyboardInterrupt:
            pass  # the user's way to end an open-ended trace
    return log
