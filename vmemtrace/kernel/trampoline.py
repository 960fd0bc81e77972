"""Whether this kernel can run BPF programs from a function's trampoline (fentry/fexit).

The attach plan prefers them to kprobes (vmemtrace/probes/plan.py); this says, from the
kernel's facts, why they cannot be used, and the attach itself is the last word: a trampoline
the kernel refuses falls back to kprobes (vmemtrace/probes/tracer.py).
"""


from vmemtrace.kernel import compat
from vmemtrace.kernel.config import enabled
from vmemtrace.kernel.kallsyms import Kallsyms

# kernel/bpf/trampoline.c, since "bpf: Introduce BPF trampoline" (compat.BPF_TRAMPOLINE): its
# presence in kallsyms is how BCC tells (BPF.support_kfunc()), and how this does.
SYMBOL = "bpf_trampoline_link_prog"


def blocker(machine: str, version: tuple, config: dict[str, str] | None, syms: Kallsyms,
            btf: str | None, btf_read: bool) -> str | None:
    """None when fentry/fexit can be attached here, else why not. btf: the BTF file, if any;
    btf_read: its function prototypes could be read (kernel/btf.py)."""
    if machine != compat.OBSERVED_ARCH:
        return f"trampolines are attached on {compat.OBSERVED_ARCH} only"
    if not compat.has(version, compat.BPF_TRAMPOLINE):
        return "kernel older than 5.5 has no BPF trampolines"
    if btf is None:
        return "no kernel BTF (/sys/kernel/btf/vmlinux, CONFIG_DEBUG_INFO_BTF)"
    if not btf_read:
        return "the kernel's BTF could not be read"
    if enabled(config, "BPF_JIT") is False:
        return "kernel built without CONFIG_BPF_JIT"
    if not syms.has_function(SYMBOL):
        return f"no BPF trampolines in this kernel ({SYMBOL} not in kallsyms)"
    return None
