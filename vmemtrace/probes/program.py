"""The BPF program: bpf/vmemtrace.bpf.c, the -D flags that fit it to this kernel (struct layout
and argument positions from BTF, else headers and version), and BCC compiling it in a thread of
its own while the kernel's facts are read."""

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Optional

from vmemtrace.errors import VmemtraceError
from vmemtrace.kernel import btf, compat, environment, headers
from vmemtrace.kernel import release as kernel_release
from vmemtrace.log import compounds, difference
from vmemtrace.probes import args
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
        ("CP_PART_SHIFT", compounds.PART_SHIFT), ("CP_TABLE_HASHES", difference.TABLE_HASHES),
        ("CP_TABLE_WIDTH", difference.TABLE_WIDTH), ("CP_PART_WIDTH", compounds.PART_WIDTH),
        ("CP_CELL_WIDTH", difference.CELL_WIDTH)))
    return flags, sources


def kaddrs_sources(addresses: dict[str, int]) -> dict[str, str]:
    """What the program's kernel data (struct kaddrs_t) lets it read, by these kallsyms
    addresses: how a fresh vmemmap page is told (the PTE maps the page just allocated, or an
    allocation happened during its call) and which bits of a PTE are address."""
    return {"fresh_pages": "allocation address" if addresses.get("page_offset_base")
            else "allocation count",
            "pte_mask": "physical_mask" if addresses.get("physical_mask")
            else "sme_me_mask" if addresses.get("sme_me_mask") else "architecture"}

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
