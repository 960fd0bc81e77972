"""Compile bpf/vmemtrace.bpf.c with BCC, attach it as the plan says, and turn what it reports
into typed events (plain dicts, the record/replay schema of vmemtrace/events.py)."""

import ctypes
import errno
import os
import threading
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

from vmemtrace.errors import VmemtraceError
from vmemtrace.kernel import btf, environment, headers
from vmemtrace.kernel import release as kernel_release
from vmemtrace.probes.plan import TargetStatus, is_attached
from vmemtrace.probes.targets import BY_NAME

BPF_SOURCE = Path(__file__).resolve().parents[2] / "bpf" / "vmemtrace.bpf.c"
CP_MAP_ENTRIES = 1 << 18  # compound pages between two drains: 512 GiB at 2 MiB pages
DRAIN_CHUNK = 4096  # compound map entries per batch system call

# target -> BPF function per probe kind; which kinds attach is the target's `attach`
# (probes/targets.py).
ATTACH = {
    "__populate_section_memmap": {"kprobe": "section_enter", "kretprobe": "section_return"},
    "vmemmap_populate_address": {"kprobe": "vpa_enter", "kretprobe": "vpa_return"},
    "vmemmap_alloc_block_buf": {"kprobe": "alloc_enter"},
    "memmap_init_zone_device": {"kprobe": "mizd_enter", "kretprobe": "mizd_return"},
    "memmap_init_compound": {"kprobe": "mic_enter"},
}
SETTING_ALLOC_PROBED = 0  # bpf/vmemtrace.bpf.c, settings map
SECTION_FIELDS = ("pfn", "nr_pages", "range_start_pfn", "start_addr", "pfns_per_compound", "ptes",
                  "fresh", "reused", "existing", "alloc_calls", "alloc_bytes", "altmap", "has_pgmap")
RANGE_FIELDS = ("ts", "start_pfn", "nr_pages", "pfns_per_compound", "altmap", "altmap_base_pfn",
                "altmap_reserve", "altmap_free", "mic_calls", "mic_pages", "mic_min", "mic_max", "cpu")
CP_FIELDS = ("range_start_pfn", "pfns_per_compound", "ptes", "fresh", "reused", "existing",
             "head_fresh", "tail_fresh", "tail_pfn", "on_tail", "max_index")
ERRORS = ("compound_map_full", "no_context", "read_failed")


class RawEvent(ctypes.Structure):
    _fields_ = [("type", ctypes.c_uint64), ("struct_page_size", ctypes.c_uint64),
                ("page_size", ctypes.c_uint64), ("a", ctypes.c_uint64 * 13),
                ("duration_ns", ctypes.c_uint64)]


def defines(version: tuple, build: Path, layout: Optional[btf.Layout]) -> List[str]:
    """-D flags: the struct layout (from BTF, else the headers) and the argument conventions.
    Not the plan: every probe function is compiled, the plan only chooses what to attach."""
    if layout is not None:
        flags = layout.defines()
        shift = layout.pgmap_vmemmap_shift is not None
    else:
        flags = ["-DLAYOUT_FROM_HEADERS"]
        shift = headers.has_vmemmap_shift(
            headers.read_header(build, "include/linux/memremap.h") or "")
    if shift:
        flags.append("-DHAVE_VMEMMAP_SHIFT")
    if headers.section_memmap_has_pgmap(headers.read_header(build, "include/linux/mm.h") or ""):
        flags.append("-DHAVE_SECTION_PGMAP")
    # 6.15 changed vmemmap_populate_address(..., struct page *reuse) to (..., ptpfn, flags):
    # the function is static, so no header says which one this kernel has.
    if version[:2] >= (6, 15):
        flags.append("-DVPA_PTPFN")
    flags.append(f"-DCP_MAP_ENTRIES={CP_MAP_ENTRIES}")
    return flags


_pending: Optional["Compile"] = None  # started by start_compile(), not yet taken


def start_compile(progress: Callable[[str], None]) -> None:
    """Start BCC on the program now, before the heavier imports and the slower kernel facts
    (kallsyms, ftrace), when the cheap facts say it can be used at all. Otherwise nothing is
    started, and readiness (vmemtrace/readiness.py) will say why tracing cannot start."""
    global _pending
    if _pending is not None:
        return
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
    layout = btf.try_layout(environment.btf_path(root), progress, "using the kernel headers instead")
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

    def __init__(self, release: str, version: tuple, layout: Optional[btf.Layout]):
        self.started = time.monotonic()
        self.cflags = defines(version, Path(f"/lib/modules/{release}/build"), layout)
        self._bpf = None
        self._error: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._run, name="bcc-compile", daemon=True)
        self._thread.start()

    def _run(self):
        try:
            from bcc import BPF
        except Exception as e:
            self._error = VmemtraceError(f"BCC is not usable: {e} (apt install python3-bpfcc)")
            return
        try:
            self._bpf = BPF(src_file=str(BPF_SOURCE), cflags=self.cflags + ["-Wno-everything"])
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
    """The loaded program. Use as a context manager: leaving it detaches everything."""

    def __init__(self, plan: List[TargetStatus], compiled: Compile):
        self.cflags = compiled.cflags
        self.attached: Dict[str, str] = {}
        self.lost = 0
        self._queue: List[dict] = []
        self.bpf = compiled.result()
        try:
            self._attach(plan)
            self.bpf["events"].open_perf_buffer(self._on_event, page_cnt=256, lost_cb=self._on_lost)
        except Exception:
            self.close()
            raise

    def _attach(self, plan: List[TargetStatus]):
        by_name = {s.name: s for s in plan}
        if is_attached(by_name["vmemmap_alloc_block_buf"].strategy):
            self.bpf["settings"][ctypes.c_int(SETTING_ALLOC_PROBED)] = ctypes.c_uint64(1)
        for target, programs in ATTACH.items():
            status = by_name[target]
            if not is_attached(status.strategy):
                continue
            for kind in BY_NAME[target].attach.split("+"):
                fn = programs[kind]
                try:
                    if kind == "kprobe":
                        self.bpf.attach_kprobe(event=target, fn_name=fn)
                    else:
                        self.bpf.attach_kretprobe(event=target, fn_name=fn, maxactive=64)
                except Exception as e:
                    raise VmemtraceError(f"cannot attach {kind} to {target}: {e}")
            self.attached[target] = status.strategy

    def _on_lost(self, count):
        self.lost += count

    def _on_event(self, cpu, data, size):
        raw = ctypes.cast(data, ctypes.POINTER(RawEvent)).contents
        values = list(raw.a)
        if raw.type == 1:
            ev = dict(zip(SECTION_FIELDS, values))
            ev.update(type="section", ok=bool(raw.duration_ns))
            del ev["start_addr"]  # an address: no use to anyone reading the log
        else:
            ev = dict(zip(RANGE_FIELDS, values))
            ev.update(type="range", duration_ns=raw.duration_ns)
            if ev["mic_calls"] == 0:
                ev["mic_min"] = 0
            del ev["ts"], ev["cpu"]
        ev["struct_page_size"], ev["page_size"] = raw.struct_page_size, raw.page_size
        for key in ("altmap", "has_pgmap"):
            if key in ev:
                ev[key] = bool(ev[key])
        self._queue.append(ev)

    def poll(self, timeout_ms: int = 100) -> List[dict]:
        """Events since the last poll; a range event is followed by its compound pages."""
        self.bpf.perf_buffer_poll(timeout=timeout_ms)
        out = []
        for ev in self._queue:
            out.append(ev)
            if ev["type"] == "range":
                out.extend(self.drain_compound(ev["start_pfn"], ev["nr_pages"]))
        self._queue = []
        return out

    def drain_compound(self, start_pfn: Optional[int] = None, nr_pages: int = 0) -> List[dict]:
        """Per-compound-page aggregates of one range (all with start_pfn None), removed from
        the map so that a later namespace at the same pfns starts from zero. Entries of other
        ranges stay in the map: a range still being populated by another thread carries its
        compound pages across sections there (bpf/vmemtrace.bpf.c, cp_load)."""
        from bcc.libbcc import lib

        table = self.bpf["compound"]
        mine = [(key, ev) for key, ev in self._read_compound(table)
                if start_pfn is None or start_pfn <= key < start_pfn + nr_pages]
        for at in range(0, len(mine), DRAIN_CHUNK):
            chunk = mine[at:at + DRAIN_CHUNK]
            keys = (table.Key * len(chunk))(*(key for key, _ in chunk))
            count = ctypes.c_uint32(len(chunk))
            if lib.bpf_delete_batch(table.map_fd, keys, ctypes.byref(count)) != 0:
                raise VmemtraceError("cannot clear the compound-page map: "
                                     f"{os.strerror(ctypes.get_errno())}")
        return [ev for _, ev in sorted(mine, key=lambda kv: kv[0])]

    @staticmethod
    def _read_compound(table) -> List[tuple]:
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
                ev.update({f: int(getattr(values[i], f)) for f in CP_FIELDS})
                out.append((head, ev))
            if res == 0 and count.value:
                token_in.value, first = token_out.value, False
                continue
            if res == 0 or err == errno.ENOENT:  # the whole map has been read
                return out
            raise VmemtraceError(f"cannot read the compound-page map: {os.strerror(err)}")

    def errors(self) -> Dict[str, int]:
        table = self.bpf["errors"]
        return {name: int(table[ctypes.c_int(i)].value) for i, name in enumerate(ERRORS)}

    def close(self):
        bpf = getattr(self, "bpf", None)
        if bpf is not None:
            bpf.cleanup()
            self.bpf = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
