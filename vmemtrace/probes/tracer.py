"""The loaded program attached as the plan says: its perf buffers, the events they bring as
typed dicts (the record/replay schema of vmemtrace/log/events.py) grouped by range, and its
counters."""

import ctypes
import resource
from collections.abc import Callable, Iterator

from vmemtrace.errors import VmemtraceError
from vmemtrace.log.compounds import CompoundPages
from vmemtrace.log.sections import Sections, summed
from vmemtrace.probes import maps
from vmemtrace.probes.plan import TRAMPOLINE, TargetStatus, is_attached, probed_symbols, programs
from vmemtrace.probes.program import Compile
from vmemtrace.probes.startup import STARTUP
from vmemtrace.probes.targets import BY_NAME

# Perf buffer pages per CPU (4 KiB each): 1024 hold 21000 section events, 2.6 TiB of one range's
# sections (docs/performance.md). Compound pages are judged in BPF: only those of a fifth layout
# class are sent.
PAGES = {"section_events": 1024, "range_events": 128, "compound_events": 256,
         "summary_events": 64}
MIN_PAGES = 8  # BCC's default page_cnt: below it, no tracing
PERF_TABLES = (("section_events", "section"), ("range_events", "range"),
               ("compound_events", "compound"), ("summary_events", "summary"))


class Tracer:
    """The loaded program. Use as a context manager: leaving it detaches everything.

    Probes attach as perf-event kprobes (BCC without maxactive), which the kernel removes with
    the process whatever kills it (kernel/leftovers.py has the legacy case), or as BPF
    trampolines held by a link file descriptor, which die with it too; a kretprobe whose
    instances ran out shows as the program's missed_return error."""

    def __init__(self, plan: list[TargetStatus], compiled: Compile,
                 progress: Callable[[str], None] = lambda _: None,
                 addresses: dict[str, int] | None = None):
        self.cflags = compiled.cflags
        self.fact_sources = compiled.fact_sources
        self.misses_at = compiled.misses_at
        self.misses_counted = compiled.misses_counted
        self.programs: dict[str, str] = {}  # the BPF functions attached, by BCC's name: their kind
        self.attached: dict[str, str] = {}  # target: its strategy, as attached
        self._progress = progress
        self.lost = 0
        self._queue: list[dict] = []
        self._perf: list = []  # the perf event arrays whose buffers are open
        # Complete compound pages (their perf events), judged as they come (log/compounds.py), by
        # the start of the range they belong to, until that range's event comes.
        self._held: dict[int, CompoundPages] = {}
        # Section calls until their range's event comes, summed by the range's start where the
        # kernel names it (has_pgmap, 5.19+), else as events (log/sections.py).
        self._sections: dict[int, Sections] = {}
        self._loose: list[dict] = []
        with STARTUP.span("waiting for the compile"):
            self.bpf = compiled.result()
        try:
            # Buffers first: a probe never fires into a buffer not yet open, and where perf
            # buffers are refused (perf_event_paranoid 3 without CAP_SYS_ADMIN) nothing has been
            # attached yet.
            with STARTUP.span("perf buffers"):
                self.buffer_pages = self._open_buffers()
            self.kaddrs = self._write_kaddrs(addresses or {})
            with STARTUP.span("attach"):
                self._attach(plan)
        except Exception:
            self.close()
            raise

    def _write_kaddrs(self, addresses: dict[str, int]) -> dict[str, int]:
        """The kernel data the program reads for itself (struct kaddrs_t in bpf/vmemtrace.h),
        at their kallsyms addresses; 0 where kallsyms lacks one: the program then keeps the
        architecture's PTE mask, and counts a fresh page by allocations alone."""
        table = self.bpf["kaddrs"]
        value = table.Leaf()
        out = {}
        for name, _ in value._fields_:
            out[name] = addresses.get(name, 0)
            setattr(value, name, out[name])
        table[ctypes.c_int(0)] = value
        return out

    def _attach(self, plan: list[TargetStatus]):
        if self.bpf.kfunc_entry_fds or self.bpf.kfunc_exit_fds:
            # This BCC attached trampolines by itself (Compile's Program no longer stops it):
            # they would count every hit twice beside the plan's probes.
            raise VmemtraceError("BCC attached fentry/fexit programs on its own; this BCC "
                                 "version is not one vmemtrace knows")
        for status in plan:
            strategy = status.strategy
            if strategy in TRAMPOLINE:
                try:
                    self._attach_trampolines(status)
                except Exception as e:
                    # The plan read the facts; the kernel has the last word (a verifier that
                    # refuses an argument's type, a function ftrace cannot patch): kprobes then.
                    strategy = BY_NAME[status.name].attach
                    self._progress(f"{status.name}: BPF trampoline refused ({e}); kprobes instead")
                    self._attach_kprobes(status, BY_NAME[status.name].programs)
            else:
                self._attach_kprobes(status, programs(status))
            if is_attached(strategy):
                self.attached[status.name] = strategy

    def _attach_kprobes(self, status: TargetStatus, pairs) -> None:
        for kind, fn in pairs:
            for symbol in probed_symbols(status):
                try:
                    if kind == "kprobe":
                        self.bpf.attach_kprobe(event=symbol, fn_name=fn)
                    else:
                        self.bpf.attach_kretprobe(event=symbol, fn_name=fn)
                except Exception as e:
                    raise VmemtraceError(f"cannot attach {kind} to {symbol}: {e}") from None
                self.programs[fn] = kind

    def _attach_trampolines(self, status: TargetStatus) -> None:
        """fentry (and fexit) on one target; on a refusal, what was attached is detached first."""
        done = []
        try:
            for kind, fn in programs(status):
                name = self._bcc_name(fn)
                if kind == "fentry":
                    self.bpf.attach_kfunc(fn_name=name)
                else:
                    self.bpf.attach_kretfunc(fn_name=name)
                done.append((kind, name))
        except Exception:
            for kind, name in done:
                if kind == "fentry":
                    self.bpf.detach_kfunc(fn_name=name)
                else:
                    self.bpf.detach_kretfunc(fn_name=name)
            raise
        for kind, name in done:
            self.programs[name.decode()] = kind

    def _bcc_name(self, fn: str) -> bytes:
        """BCC's name for a kfunc__/kretfunc__ program: KFUNC_PROBE(f) makes kfunc__f, later BCC
        kfunc__vmlinux__f. Absent when the compile had no VT_ARGS for the function."""
        from bcc.libbcc import lib

        prefix, _, function = fn.partition("__")
        wanted = {f"{prefix}__{function}".encode(), f"{prefix}__vmlinux__{function}".encode()}
        module = self.bpf.module
        for i in range(lib.bpf_num_functions(module)):
            name = lib.bpf_function_name(module, i)
            if name in wanted:
                return name
        raise VmemtraceError(f"{fn}: not in the compiled program (the BTF had no {function})")

    def _open_buffers(self) -> dict[str, int]:
        """Every perf buffer at PAGES or, where perf_mmap() refuses that much locked memory,
        all of them at half, and so on down to MIN_PAGES. Without CAP_IPC_LOCK a user may lock
        perf_event_mlock_kb per online CPU, then this process's RLIMIT_MEMLOCK
        (kernel/events/core.c, perf_mmap()); the DaemonSet's capabilities leave 8 MiB plus 516
        KiB per CPU, which 1024-page buffers exceed (lab: tests/lab/test_lab_e2e_caps.py). The
        allowance per user is shared with its other processes, so it is tried, not computed.
        Smaller buffers can lose events; those are counted (lost) and fail the verdict."""
        halvings = 0
        while True:
            pages = {t: max(MIN_PAGES, n >> halvings) for t, n in PAGES.items()}
            try:
                for table, kind in PERF_TABLES:
                    self.bpf[table].open_perf_buffer(self._decoder(table, kind),
                                                     page_cnt=pages[table], lost_cb=self._on_lost)
                return pages
            except Exception as e:
                self._close_buffers()
                if all(n == MIN_PAGES for n in pages.values()):
                    limit = resource.getrlimit(resource.RLIMIT_MEMLOCK)[0]
                    raise VmemtraceError(
                        f"cannot open perf buffers of {MIN_PAGES} pages per CPU ({e}); the "
                        f"locked-memory limit (RLIMIT_MEMLOCK) is {limit} bytes") from None
                halvings += 1

    def _close_buffers(self):
        """Closes every CPU's buffer of each perf event array opened, including those opened
        before a refusal."""
        for perf in self._perf:
            for cpu in list(getattr(perf, "_open_key_fds", {})):
                del perf[cpu]
        self._perf = []

    def _on_lost(self, count):
        self.lost += count

    def _decoder(self, table: str, kind: str):
        perf = self.bpf[table]
        self._perf.append(perf)
        # BCC decodes a perf event from the fields of the struct sent, and knows no struct
        # inside one: a struct cp_sum is read as its map's value type instead.
        summary_type = ctypes.POINTER(self.bpf["cp_sums"].Leaf) if kind == "summary" else None

        def on_event(cpu, data, size):
            if summary_type is not None:  # struct cp_sum, sent before its range's event
                summary = maps.summary_fields(ctypes.cast(data, summary_type).contents)
                self._held.setdefault(summary["range_start_pfn"], CompoundPages()).fold_in(summary)
                return
            ev = maps.fields(perf.event(data))
            ev["type"] = kind
            if kind == "compound":
                self._held.setdefault(ev["range_start_pfn"], CompoundPages()).append(ev)
                return
            for key in ("altmap", "has_pgmap", "ok"):
                if key in ev:
                    ev[key] = bool(ev[key])
            if kind == "section" and ev["has_pgmap"]:
                self._sections.setdefault(ev["range_start_pfn"], Sections()).add(ev)
            elif kind == "section":
                self._loose.append(ev)
            else:
                self._queue.append(ev)

        return on_event

    def poll(self, timeout_ms: int = 100) -> Iterator[dict]:
        """Events since the last poll; a range event comes after the summary of its section
        calls ("sections": a 1 TiB range makes 8192) and before that of its compound pages
        ("compounds": 524288 of 2 MiB). The program sends a range's compound pages before its
        range event (bpf/vmemtrace.bpf.c, cp_send_range()), and one poll reads every buffer
        with data: no map is read here, while another range may be populating."""
        self.bpf.perf_buffer_poll(timeout=timeout_ms)
        queue, self._queue = self._queue, []
        for ev in queue:
            if ev["type"] == "range":
                yield from self.drain_sections(ev["start_pfn"], ev["nr_pages"])
            yield ev
            if ev["type"] == "range":
                yield from self._held_of(ev["start_pfn"], ev["nr_pages"])

    @staticmethod
    def _within(start_pfn: int | None, nr_pages: int) -> Callable[[int], bool]:
        """Whether a pfn lies in the range (every pfn with start_pfn None)."""
        return lambda pfn: start_pfn is None or start_pfn <= pfn < start_pfn + nr_pages

    def _held_of(self, start_pfn: int | None, nr_pages: int) -> Iterator[dict]:
        """The "compounds" summaries of the compound pages held for one range (all with
        start_pfn None)."""
        mine = self._within(start_pfn, nr_pages)
        for start in [s for s in self._held if mine(s)]:
            yield self._held.pop(start).as_event()

    def drain_sections(self, start_pfn: int | None = None, nr_pages: int = 0) -> Iterator[dict]:
        """The summaries ("sections" events) of one range's section calls (of all with
        start_pfn None: at the end, those of ranges that never reached memmap_init_zone_device)."""
        mine = self._within(start_pfn, nr_pages)
        loose = [s for s in self._loose if mine(s["pfn"])]
        self._loose = [s for s in self._loose if not mine(s["pfn"])]
        if loose:
            yield summed(loose).as_event()
        for start in [s for s in self._sections if mine(s)]:
            yield self._sections.pop(start).as_event()

    def drain_compound(self) -> Iterator[dict]:
        """At the end, once nothing populates: the summaries ("compounds" events) of every
        range's compound pages, with what is still in the maps (ranges that never reached
        memmap_init_zone_device, pages that never completed) added and removed."""
        for value in list(self.bpf["cp_sums"].values()):
            summary = maps.summary_fields(value)
            self._held.setdefault(summary["range_start_pfn"], CompoundPages()).fold_in(summary)
        self.bpf["cp_sums"].clear()
        table = self.bpf["compound"]
        left = maps.read_compound(table)
        maps.delete(table, [key for key, _ in left])
        for _, ev in left:
            self._held.setdefault(ev["range_start_pfn"], CompoundPages()).append(ev)
        yield from self._held_of(None, 0)

    def skipped_runs(self) -> int | None:
        """Probe hits whose program did not run (maps.skipped_runs)."""
        return maps.skipped_runs(self.bpf, self.programs, self.misses_at, self.misses_counted)

    def hits(self) -> dict[str, int]:
        return maps.hits(self.bpf)

    def errors(self) -> dict[str, int]:
        """The program's error counters, and "skipped_runs" where the kernel counts them."""
        out = maps.fields(self.bpf["errors"][ctypes.c_int(0)])
        skipped = self.skipped_runs()
        if skipped is not None:
            out["skipped_runs"] = skipped
        return out

    def close(self):
        bpf = getattr(self, "bpf", None)
        if bpf is not None:
            # The perf buffers' CPU slots are closed while their map is still open: BCC's
            # PerfEventArray.__del__ would otherwise do it after cleanup() and print a traceback.
            self._close_buffers()
            bpf.cleanup()
            self.bpf = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
