"""Compile bpf/vmemtrace.bpf.c with BCC, attach it as the plan says, and turn what it reports
into typed events (plain dicts, the record/replay schema of vmemtrace/log/events.py)."""

import ctypes
import errno
import os
import resource
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Optional

from vmemtrace.errors import VmemtraceError
from vmemtrace.kernel import btf, compat, environment, headers
from vmemtrace.kernel import release as kernel_release
from vmemtrace.log import compounds
from vmemtrace.log.compounds import CompoundPages
from vmemtrace.log.sections import Sections, summed
from vmemtrace.probes import args
from vmemtrace.probes.plan import TRAMPOLINE, TargetStatus, is_attached, probed_symbols, programs
from vmemtrace.probes.startup import STARTUP
from vmemtrace.probes.targets import BY_NAME, FUNCTIONS, TARGETS

# Package data (pyproject.toml): the same file in a source tree, a wheel or the .deb.
BPF_SOURCE = Path(__file__).resolve().parents[1] / "bpf" / "vmemtrace.bpf.c"
BPF_HEADER = BPF_SOURCE.with_name("vmemtrace.h")  # the event contract the program includes


def compile_flags(cflags: list[str]) -> list[str]:
    """The flags BCC compiles the program with: the defines, and where its header is."""
    return cflags + [f"-I{BPF_SOURCE.parent}", "-Wno-everything"]
# Compound pages in the map at once: those being populated (a complete one is sent through
# the perf buffer and its entry freed), whatever the device's size. A cap, not an allocation
# (BPF_F_NO_PREALLOC).
CP_MAP_ENTRIES = 1 << 18
# Perf buffer pages per CPU (4 KiB each). Measured at 1 TiB under TCG, when every compound
# page was sent: 128 pages lost 439 of 8192 section events while BCC's reader stayed on the
# compound pages' buffer; 1024 pages hold 21000 (2.6 TiB of one range's sections). Compound
# pages are now judged in BPF and only those of a fifth layout class are sent.
PAGES = {"section_events": 1024, "range_events": 128, "compound_events": 256,
         "summary_events": 64}
MIN_PAGES = 8  # BCC's default page_cnt: below it, no tracing
PERF_TABLES = (("section_events", "section"), ("range_events", "range"),
               ("compound_events", "compound"), ("summary_events", "summary"))
DRAIN_CHUNK = 4096  # compound map entries per batch system call


def fields(struct) -> dict[str, int | str]:
    """A ctypes struct BCC built from the program's C declaration, by field name: the C struct
    is the contract (bpf/vmemtrace.bpf.c), nothing here repeats its layout. A char array (comm)
    is text; ctypes hands it over as bytes up to the first NUL."""
    out: dict[str, int | str] = {}
    for name, _ in struct._fields_:
        value = getattr(struct, name)
        out[name] = value.decode("utf-8", "replace") if isinstance(value, bytes) else int(value)
    return out


def defines(version: tuple, build: Path, layout: btf.Layout | None) -> tuple[list[str], dict[str, str]]:
    """-D flags, and per fact where it came from. The struct layout, and each argument's
    position by its name, come from BTF where it has them (probes/args.py); else the layout and
    whether __populate_section_memmap has its pgmap from the headers, the positions and the
    ptpfn convention, which no header shows (the function is static), from the version
    (kernel/compat.py). Not the plan: every probe function is compiled, the plan only chooses
    what to attach (and never a target whose arguments BTF does not name)."""
    sig = layout.signatures if layout is not None else btf.Signatures()
    sources = {}
    if layout is not None:
        flags, shift, sources["layout"] = layout.defines(), layout.pgmap_vmemmap_shift is not None, "BTF"
    else:
        flags, sources["layout"] = ["-DLAYOUT_FROM_HEADERS"], "headers"
        shift = headers.has_vmemmap_shift(
            headers.read_header(build, "include/linux/memremap.h") or "")
    if shift:
        flags.append("-DHAVE_VMEMMAP_SHIFT")
    found = args.find_all(TARGETS, dict(sig.params), version)
    section, vpa = found["__populate_section_memmap"], found["vmemmap_populate_address"]
    if section.source == args.BY_BTF:
        section_pgmap, sources["section_pgmap"] = section.position("pgmap") is not None, "BTF"
    else:
        section_pgmap = headers.section_memmap_has_pgmap(
            headers.read_header(build, "include/linux/mm.h") or "")
        sources["section_pgmap"] = "headers"
        found[section.target] = args.find(BY_NAME[section.target], None, version,
                                          optional=section_pgmap)
    if section_pgmap:
        flags.append("-DHAVE_SECTION_PGMAP")
    if vpa.source == args.BY_BTF:
        ptpfn, sources["vpa_ptpfn"] = vpa.name("reuse") == "ptpfn", "BTF"
    else:
        ptpfn, sources["vpa_ptpfn"] = compat.has(version, compat.VPA_PTPFN), "version"
    if ptpfn:
        flags.append("-DVPA_PTPFN")
    sources["arguments"] = "BTF" if all(f.source == args.BY_BTF for f in found.values()) \
        else "BTF and version" if any(f.source == args.BY_BTF for f in found.values()) else "version"
    for name, f in found.items():
        flags.extend(args.compile_positions(f, BY_NAME[name]).defines())
    # The functions BTF has, by argument count: their fentry/fexit programs are compiled.
    flags.extend(sig.defines())
    flags.append(f"-DCP_MAP_ENTRIES={CP_MAP_ENTRIES}")
    flags.extend(f"-D{name}={value}" for name, value in (
        ("CP_CLASSES", compounds.BPF_CLASSES), ("CP_PARTS", compounds.MAX_PARTS),
        ("CP_PART_SHIFT", compounds.PART_SHIFT), ("CP_TABLE_HASHES", compounds.TABLE_HASHES),
        ("CP_TABLE_WIDTH", compounds.TABLE_WIDTH), ("CP_PART_WIDTH", compounds.PART_WIDTH),
        ("CP_CELL_WIDTH", compounds.CELL_WIDTH)))
    return flags, sources


def kaddrs_sources(addresses: dict[str, int]) -> dict[str, str]:
    """What the program's kernel data (struct kaddrs_t) lets it read, by these kallsyms
    addresses: how a fresh vmemmap page is told (the PTE maps the page just allocated, or an
    allocation happened during its call) and which bits of a PTE are address."""
    return {"fresh_pages": "allocation address" if addresses.get("page_offset_base")
            else "allocation count",
            "pte_mask": "physical_mask" if addresses.get("physical_mask")
            else "sme_me_mask" if addresses.get("sme_me_mask") else "architecture"}


def _rows(array, width: int) -> list[list[int]]:
    """A C array of rows, flattened (u64 x[n * width]: BCC's types would drop a second
    dimension), as lists of width; nested arrays are flattened first."""
    flat: list[int] = []

    def walk(a):
        for x in a:
            if isinstance(x, int):
                flat.append(x)
            else:
                walk(x)

    walk(array)
    return [flat[i:i + width] for i in range(0, len(flat), width)]


def summary_fields(v) -> dict:
    """A struct cp_sum (bpf/vmemtrace.h) by field name, its arrays as lists: classes as
    (pages, lowest-headed page), parts as [part, pages, digest sum] where it has pages, cells
    whole; (u64)-1, "none", as None."""
    out: dict[str, object] = {}
    for name, _ in v._fields_:
        value = getattr(v, name)
        if name == "classes":
            out[name] = [(int(k.pages), fields(k.first)) for k in value if k.pages]
        elif name == "parts":
            out[name] = [[i, n, d] for i, (n, d) in
                         enumerate(_rows(value, compounds.PART_WIDTH)) if n]
        elif name == "cells":
            out[name] = _rows(value, compounds.CELL_WIDTH)
        else:
            out[name] = None if int(value) == (1 << 64) - 1 else int(value)
    return out


_pending: Optional["Compile"] = None  # started by start_compile(), not yet taken


def start_compile(progress: Callable[[str], None]) -> None:
    """Start BCC on the program now, before the heavier imports and the slower kernel facts
    (kallsyms, ftrace), when the cheap facts say it can be used at all. Otherwise nothing is
    started, and readiness (vmemtrace/probes/readiness.py) will say why tracing cannot start."""
    global _pending
    if _pending is not None:
        return
    STARTUP.since_start("interpreter and imports")
    root = Path("/")
    try:
        rel = kernel_release.read_release(root)
    except OSError:
        return
    if not environment.privileged(root) or environment.headers_path(root, rel) is None:
        return
    progress("compiling and attaching the BPF program (BCC) ...")
    # Without BTF (or with one we cannot read) the layout comes from the headers: slower to
    # compile, same numbers (bpf/vmemtrace.bpf.c, LAYOUT_CHECK).
    with STARTUP.span("BTF: struct layout and prototypes"):
        layout = btf.try_layout(environment.btf_path(root), progress,
                                "using the kernel headers instead", FUNCTIONS)
    _pending = Compile(rel, kernel_release.parse_version(rel), layout)


def take_compile(progress: Callable[[str], None]) -> Optional["Compile"]:
    """The compile start_compile() started (starting it now if nobody did); the caller owns it."""
    global _pending
    start_compile(progress)
    compiled, _pending = _pending, None
    return compiled


def discard_pending() -> None:
    """For an exit before the compile was taken: libbcc must not be inside LLVM while the
    interpreter exits."""
    global _pending
    if _pending is not None:
        _pending.discard()
        _pending = None


class Compile:
    """BCC compiling the program in a thread of its own: most of it runs in libbcc (ctypes
    releases the GIL), so the kernel's facts are read meanwhile (bench/: start-up)."""

    def __init__(self, release: str, version: tuple, layout: btf.Layout | None):
        self.started = time.monotonic()
        with STARTUP.span("compile flags"):
            self.cflags, self.fact_sources = defines(
                version, Path(f"/lib/modules/{release}/build"), layout)
        # Where the kernel counts skipped runs: how to read them, and of which kinds of
        # program (compat.KPROBE_MISSES, compat.TRAMPOLINE_MISSES).
        self.misses_at = layout.prog_info_misses if layout is not None else None
        self.misses_counted = {kind for kinds, change in (
            (("kprobe", "kretprobe"), compat.KPROBE_MISSES),
            (("fentry", "fexit"), compat.TRAMPOLINE_MISSES)) if compat.has(version, change)
            for kind in kinds}
        self._bpf = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="bcc-compile", daemon=True)
        self._thread.start()

    def _run(self):
        try:
            with STARTUP.span("import bcc"):
                from bcc import BPF
        except Exception as e:
            self._error = VmemtraceError(f"BCC is not usable: {e} (apt install python3-bpfcc)")
            return
        class Program(BPF):
            def _trace_autoload(self):
                """BCC attaches every kfunc__/kretfunc__ program when it loads the module; here
                the plan chooses (Tracer._attach), and an unwanted trampoline is never attached."""

        try:
            with STARTUP.span("BCC: compile and load"):
                self._bpf = Program(src_file=str(BPF_SOURCE), cflags=compile_flags(self.cflags))
        except Exception as e:
            last = str(e).splitlines()[-1] if str(e) else repr(e)
            self._error = VmemtraceError(f"BCC could not compile {BPF_SOURCE.name}: {last}")

    def result(self):
        """The compiled BPF object; raises what the compile raised."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        bpf, self._bpf = self._bpf, None  # the caller owns it now
        return bpf

    def discard(self):
        """Wait for the compile and free it: libbcc must not be inside LLVM while the
        interpreter exits."""
        self._thread.join()
        if self._bpf is not None:
            self._bpf.cleanup()
            self._bpf = None


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
                summary = summary_fields(ctypes.cast(data, summary_type).contents)
                self._held.setdefault(summary["range_start_pfn"], CompoundPages()).fold_in(summary)
                return
            ev = fields(perf.event(data))
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

    @staticmethod
    def _delete(table, keys: list[int]) -> None:
        from bcc.libbcc import lib

        for at in range(0, len(keys), DRAIN_CHUNK):
            chunk = keys[at:at + DRAIN_CHUNK]
            batch = (table.Key * len(chunk))(*chunk)
            count = ctypes.c_uint32(len(chunk))
            if lib.bpf_delete_batch(table.map_fd, batch, ctypes.byref(count)) != 0:
                raise VmemtraceError("cannot clear the compound-page map: "
                                     f"{os.strerror(ctypes.get_errno())}")

    def drain_compound(self) -> Iterator[dict]:
        """At the end, once nothing populates: the summaries ("compounds" events) of every
        range's compound pages, with what is still in the maps (ranges that never reached
        memmap_init_zone_device, pages that never completed) added and removed."""
        for value in list(self.bpf["cp_sums"].values()):
            summary = summary_fields(value)
            self._held.setdefault(summary["range_start_pfn"], CompoundPages()).fold_in(summary)
        self.bpf["cp_sums"].clear()
        table = self.bpf["compound"]
        left = self._read_compound(table)
        self._delete(table, [key for key, _ in left])
        for _, ev in left:
            self._held.setdefault(ev["range_start_pfn"], CompoundPages()).append(ev)
        yield from self._held_of(None, 0)

    @staticmethod
    def _read_compound(table) -> list[tuple]:
        """(head pfn, compound event) of every map entry: BPF_MAP_LOOKUP_BATCH (Linux 5.6+,
        kernel/bpf/hashtab.c) reads DRAIN_CHUNK entries per system call, where iterating the
        table costs two per entry and deleting one more (1536 entries for one 3 GiB namespace
        at 2 MiB)."""
        from bcc.libbcc import lib

        keys, values = (table.Key * DRAIN_CHUNK)(), (table.Leaf * DRAIN_CHUNK)()
        token_in, token_out = ctypes.c_uint32(0), ctypes.c_uint32(0)
        first, out = True, []
        while True:
            count = ctypes.c_uint32(DRAIN_CHUNK)
            res = lib.bpf_lookup_batch(table.map_fd, None if first else ctypes.byref(token_in),
                                       ctypes.byref(token_out), keys, values, ctypes.byref(count))
            err = -res if res < 0 else ctypes.get_errno()
            for i in range(count.value):
                head = int(keys[i])  # a u64 key: ctypes gives an int
                ev = {"type": "compound", "head_pfn": head}
                ev.update(fields(values[i]))
                out.append((head, ev))
            if res == 0 and count.value:
                token_in.value, first = token_out.value, False
                continue
            if res == 0 or err == errno.ENOENT:  # the whole map has been read
                return out
            raise VmemtraceError(f"cannot read the compound-page map: {os.strerror(err)}")

    def errors(self) -> dict[str, int]:
        """The program's error counters, and "skipped_runs" where the kernel counts them."""
        out = fields(self.bpf["errors"][ctypes.c_int(0)])
        skipped = self.skipped_runs()
        if skipped is not None:
            out["skipped_runs"] = skipped
        return out

    def skipped_runs(self) -> int | None:
        """Probe hits whose program did not run (a kprobe's when another BPF program or a map
        system call held the CPU's bpf_prog_active: trace_call_bpf(); a trampoline's when the
        same program was already running on the CPU), summed over the attached programs, from
        bpf_prog_info.recursion_misses; None where the kernel does not count them for every
        kind attached. A skipped run is an event never seen: it makes the verdict an error,
        never a smaller count."""
        if self.misses_at is None or not set(self.programs.values()) <= self.misses_counted:
            return None
        from bcc.libbcc import lib

        size, offset = self.misses_at
        total = 0
        for fn in self.programs:
            info = ctypes.create_string_buffer(size)
            length = ctypes.c_uint32(size)
            # The loaded program, as its attach loaded it (BCC keys self.funcs by bytes).
            fd = self.bpf.funcs[fn.encode()].fd
            # libbcc's bpf_obj_get_info() (BPF_OBJ_GET_INFO_BY_FD through libbpf): the kernel
            # fills bpf_prog_info up to `size` and says how much it filled.
            if lib.bpf_obj_get_info(fd, info, ctypes.byref(length)) != 0 \
                    or length.value < offset + 8:
                return None
            total += struct.unpack_from("<Q", info.raw, offset)[0]
        return total

    def hits(self) -> dict[str, int]:
        """Entry-probe hits per function, summed over CPUs."""
        out: dict[str, int] = {}
        for per_cpu in self.bpf["hits"][ctypes.c_int(0)]:
            for name, n in fields(per_cpu).items():
                out[name] = out.get(name, 0) + n
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
