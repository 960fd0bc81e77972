"""Gather every fact `check` reports into one KernelFacts, from a file system root."""

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from vmemtrace.errors import VmemtraceError
from vmemtrace.kernel import btf as btf_reader
from vmemtrace.kernel import (
    compat,
    config,
    environment,
    ftrace,
    kallsyms,
    kcore,
    leftovers,
    perf,
    release,
    trampoline,
)

# Data symbols the page-table walk reads (x86_64, CONFIG_KALLSYMS_ALL), named by kernel/kcore.py.
DATA_SYMBOLS = kcore.DATA_SYMBOLS


@dataclass
class KernelFacts:
    release: str
    version: tuple
    config: dict[str, str] | None
    config_source: str | None
    syms: kallsyms.Kallsyms
    filter_functions: set[str] | None
    kprobe_blacklist: set[str] | None
    kprobe_events: bool
    privileged: bool
    btf: str | None
    headers: str | None
    bcc: str | None
    lockdown: str | None = None  # the lockdown LSM's mode, if it is there
    walk_blocker: str | None = "not asked"  # why the page-table walk cannot run, or None
    notes: list = field(default_factory=list)
    leftovers: list = field(default_factory=list)  # kprobe events of dead tracers on our targets
    machine: str = "x86_64"  # the kernel's architecture, as `uname -m` names it
    btf_functions: frozenset[str] = frozenset()  # of the functions asked for, those BTF has
    btf_params: dict[str, tuple[str, ...]] = field(default_factory=dict)  # their parameter names
    trampoline_blocker: str | None = "not asked"  # why fentry/fexit cannot attach, or None
    perf_blocker: str | None = None  # why the perf buffers cannot be opened (live kernel only)


def machine_of(options: dict[str, str] | None) -> str:
    """The kernel's architecture: its config says (a recorded root is not this host), else
    uname."""
    for symbol, machine in compat.ARCH_CONFIG:
        if config.enabled(options, symbol):
            return machine
    return os.uname().machine


def gather(root: Path, functions: Sequence[str], with_bcc: bool = True,
           symbols: Sequence[str] = ()) -> KernelFacts:
    """The facts about the kernel below `root`, looking for these functions (the probe
    targets: readiness.read_facts() names them, this layer knows nothing of probes) and for
    these other symbols in kallsyms (what marks a vmemmap layout)."""
    try:
        rel = release.read_release(root)
        version = release.parse_version(rel)
    except OSError as e:
        raise VmemtraceError(f"cannot read the kernel release from {root}/proc: {e.strerror}") from None
    except ValueError:
        raise VmemtraceError(f"/proc/sys/kernel/osrelease: not a kernel release: {rel[:60]!r}") from None
    wanted = set(functions) | set(symbols) | set(DATA_SYMBOLS) | {trampoline.SYMBOL}
    try:
        syms = kallsyms.read_kallsyms(root, wanted)
    except OSError as e:
        raise VmemtraceError(f"cannot read /proc/kallsyms: {e.strerror}",
                             reason="kallsyms_unreadable") from None
    if not syms.addresses and not syms.text:
        # Every kernel has some of these (memmap_init_zone_device since 4.x, vmemmap_base):
        # an empty read is a kallsyms hidden from this process (systemd's
        # ProtectKernelTunables= mounts an empty file over it), not a kernel without them.
        raise VmemtraceError("cannot read /proc/kallsyms: it reads empty here (hidden from "
                             "this process: systemd's ProtectKernelTunables=, or a mount over "
                             "it)", reason="kallsyms_unreadable")
    opts, source = config.read_config(root, rel)
    tracefs = ftrace.tracefs(root)
    machine = machine_of(opts)
    btf = environment.btf_path(root)
    # The prototypes of the functions asked for (read once per process: the compile wants them
    # too, probes/program.py); a BTF that cannot be read is said by whoever needs its layout.
    layout = btf_reader.try_layout(btf and str(root / btf.lstrip("/")), lambda _: None, "",
                                   tuple(functions))
    params = dict(layout.signatures.params) if layout is not None else {}
    return KernelFacts(
        release=rel,
        version=version,
        config=opts,
        config_source=source,
        syms=syms,
        filter_functions=ftrace.read_filter_functions(root, set(functions)),
        kprobe_blacklist=ftrace.read_kprobe_blacklist(root),
        kprobe_events=ftrace.has_kprobe_events(root),
        privileged=environment.privileged(root),
        btf=btf,
        headers=environment.headers_path(root, rel),
        bcc=environment.bcc_version() if with_bcc else None,
        lockdown=environment.lockdown_mode(root),
        walk_blocker=kcore.walk_blocker(root, syms.addresses, machine),
        leftovers=leftovers.find(tracefs, functions) if tracefs else [],
        machine=machine,
        btf_functions=frozenset(params),
        btf_params=params,
        trampoline_blocker=trampoline.blocker(machine, version, opts, syms, btf, layout is not None),
        # Asked of the running kernel only: a recorded root is not this one.
        perf_blocker=perf.output_blocker() if root == Path("/") and machine == "x86_64" else None,
    )
