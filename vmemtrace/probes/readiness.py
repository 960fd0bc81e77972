"""What this kernel offers: is the compound-devmap optimisation there, and can tracing start?

Pure logic over KernelFacts and the attach plan; `vmemtrace check` prints what this returns.
"""

from dataclasses import dataclass
from pathlib import Path

from vmemtrace.errors import VmemtraceError
from vmemtrace.judge import layouts
from vmemtrace.kernel import compat, hugetlb, trampoline
from vmemtrace.kernel.config import RELEVANT, enabled
from vmemtrace.kernel.facts import DATA_SYMBOLS, KernelFacts, gather
from vmemtrace.probes import args, targets
from vmemtrace.probes import plan as P
from vmemtrace.probes.targets import BY_NAME, REQUIRED


@dataclass
class Feature:
    present: bool | None  # None: cannot tell
    evidence: str
    layout: layouts.Detected | None = None  # where present: the kernel's vmemmap layout

    def as_json(self) -> dict:
        """The header's and `check --json`'s "feature" object."""
        out = {"present": self.present, "evidence": self.evidence}
        if self.layout is not None:
            out.update(layout=self.layout.name, layout_evidence=self.layout.evidence)
        return out


class Blocker(str):
    """One reason tracing cannot start: the sentence people read, and `code`, the short
    snake_case cause the exporter's vmemtrace_tracing{reason} label carries."""

    def __new__(cls, code: str, sentence: str):
        out = super().__new__(cls, sentence)
        out.code = code
        return out


def cannot_trace(blockers: list["Blocker"]) -> VmemtraceError:
    """The error every command raises when tracing cannot start: all the reasons, the first
    one's code."""
    return VmemtraceError("cannot trace: " + "; ".join(blockers),
                          reason=getattr(blockers[0], "code", "cannot_trace"))


@dataclass
class Readiness:
    feature: Feature
    plan: list[P.TargetStatus]
    blockers: list[str]  # why tracing cannot start; empty when it can

    @property
    def can_trace(self) -> bool:
        return not self.blockers


def feature(facts: KernelFacts, plan: list[P.TargetStatus]) -> Feature:
    """Decide from what the build contains, version only as a last resort.

    - ZONE_DEVICE and SPARSEMEM_VMEMMAP are preconditions (mm/Kconfig).
    - compat.arch_gate() is the architecture's opt-in (6.4+): a readable config without it
      means the kernel never optimises here, whatever is built in.
    - vmemmap_populate_address and vmemmap_populate_compound_pages exist only with the series;
      either one present in kallsyms (even as a clone) proves the code is built in.
    """
    cfg = facts.config
    if facts.machine in ("ppc64", "ppc64le") and compat.has(facts.version, compat.ARCH_GATE_DAX):
        return Feature(None, "powerpc book3s64 optimises only under the radix MMU "
                             "(vmemmap_can_optimize() is radix_enabled()), which this tool "
                             "does not read")
    for opt in ("ZONE_DEVICE", "SPARSEMEM_VMEMMAP"):
        if enabled(cfg, opt) is False:
            return Feature(False, f"CONFIG_{opt} is not set")
    gate = compat.arch_gate(facts.version)
    if cfg is not None and gate is not None and cfg.get(gate) != "y":
        return Feature(False, f"CONFIG_{gate} is not set: this architecture does not opt in "
                              "to the device-dax vmemmap optimisation (vmemmap_can_optimize() "
                              "is false)")
    markers = [s for s in layouts.MARKER_SYMBOLS if s in facts.syms.addresses]
    layout = layouts.detect(markers, cfg)
    if layout.layout is not layouts.TWO_PAGES:
        return Feature(True, f"the vmemmap layout's own markers: {layout.evidence}", layout)
    by_name = {s.name: s for s in plan}
    for name in ("vmemmap_populate_compound_pages", "vmemmap_populate_address"):
        if by_name[name].availability not in (P.INLINED, P.ABSENT):
            return Feature(True, f"{name} is built in ({by_name[name].availability})", layout)
    if not compat.has(facts.version, compat.FEATURE):
        return Feature(False, f"kernel {facts.release} predates 5.19 and has no "
                              "vmemmap_populate_address: compound devmaps are not optimised")
    return Feature(True, f"inferred from version {facts.release} >= 5.19: "
                         "the populate functions are all inlined", layout)


def read_facts(root: Path = Path("/"), with_bcc: bool = True) -> KernelFacts:
    """The kernel's facts, its probe targets looked for."""
    return gather(root, targets.FUNCTIONS, with_bcc, layouts.MARKER_SYMBOLS)


def _sees_anything(plan: list[P.TargetStatus]) -> bool:
    """A range can be judged when its vmemmap is seen (probes or the walk) or its
    initialisation is (probes/targets.py says what each target sees)."""
    seen = {BY_NAME[s.name].sees for s in plan
            if P.is_attached(s.strategy) or s.strategy == P.WALK_STRATEGY}
    return bool(seen & {targets.POPULATE, targets.ALLOC, targets.INIT, targets.INIT_PAGES})


def blockers(facts: KernelFacts, plan: list[P.TargetStatus]) -> list[Blocker]:
    """Each reason tracing cannot start on this kernel, most fundamental first."""
    out = []
    required_strategy = next(s.strategy for s in plan if s.name == REQUIRED)
    if facts.machine != compat.OBSERVED_ARCH:
        # Probes, BPF decoding and the walk are proven on x86_64 kernels only (the lab boots
        # those): elsewhere say what the kernel does, never guess what it did.
        does = compat.ARCH_BEHAVIOUR.get(facts.machine, "is not one this tool knows")
        out.append(Blocker("not_x86_64", f"vmemtrace observes x86_64 kernels only; on "
                                         f"{facts.machine} the kernel {does}"))
    if facts.lockdown == "confidentiality":
        # security/lockdown: LOCKDOWN_TRACEFS, LOCKDOWN_BPF_READ_KERNEL are confidentiality-level
        out.append(Blocker("lockdown", "kernel lockdown is in confidentiality mode: it forbids "
                           "tracefs and BPF reading kernel memory (boot without "
                           "lockdown=confidentiality)"))
    elif required_strategy in P.TRAMPOLINE:
        pass  # attached by BPF trampoline: kprobes are not needed to start
    elif enabled(facts.config, "KPROBES") is False:
        out.append(Blocker("no_kprobes", "kernel built without CONFIG_KPROBES: nothing can be "
                                         "traced"))
    elif not facts.kprobe_events:
        out.append(Blocker("no_kprobe_events", "no kprobe_events in tracefs "
                           "(CONFIG_KPROBE_EVENTS off or tracefs not mounted)"))
    if enabled(facts.config, "BPF_SYSCALL") is False:
        out.append(Blocker("no_bpf", "kernel built without CONFIG_BPF_SYSCALL"))
    if enabled(facts.config, "ZONE_DEVICE") is False:
        out.append(Blocker("no_zone_device", "kernel built without CONFIG_ZONE_DEVICE: it has "
                                             "no device-dax memory to trace"))
    if enabled(facts.config, "DEV_DAX") is False:
        out.append(Blocker("no_dev_dax", "kernel built without CONFIG_DEV_DAX: it has no "
                                         "device-dax (no dax_pmem, no device_dax) to trace"))
    required = next(s for s in plan if s.name == REQUIRED)
    if required.strategy == "unavailable" and not out:
        out.append(Blocker("target_unavailable", f"{REQUIRED} cannot be probed: "
                                                 f"{required.reason}"))
    if not _sees_anything(plan) and required.strategy != "unavailable":
        out.append(Blocker("nothing_visible", "neither the vmemmap populate (no probe, no "
                           "page-table walk) nor the struct page initialisation can be seen on "
                           "this kernel: nothing could be verified"))
    if facts.perf_blocker and facts.privileged:
        out.append(Blocker("perf_paranoid", facts.perf_blocker))
    if not facts.privileged:
        out.append(Blocker("no_privilege", "not root (needs CAP_SYS_ADMIN, or CAP_BPF with "
                                           "CAP_PERFMON)"))
    if facts.bcc is None:
        out.append(Blocker("no_bcc", "BCC's Python module is not importable "
                                     "(apt install python3-bpfcc)"))
    if facts.headers is None:
        out.append(Blocker("no_headers", f"no kernel headers for BCC at "
                                         f"/lib/modules/{facts.release}/build "
                                         f"(apt install linux-headers-{facts.release})"))
    return out


def assess(facts: KernelFacts, exclude=(), attach: str = "auto") -> Readiness:
    """The plan and what blocks tracing. attach (verify --attach): "auto" attaches by BPF
    trampoline where the kernel has them, "kprobe" by kprobes everywhere (for a kernel whose
    trampolines misbehave, and to exercise the kprobe programs)."""
    trampoline_blocker = facts.trampoline_blocker if attach == "auto" else "--attach kprobe"
    plan = P.build_plan(facts.version, facts.syms, facts.filter_functions,
                        facts.kprobe_blacklist,
                        kprobes=enabled(facts.config, "KPROBES") is not False and facts.kprobe_events,
                        walk_blocker=facts.walk_blocker, exclude=exclude,
                        trampolines=P.Trampolines(facts.btf_functions, trampoline_blocker),
                        arguments=args.find_all(targets.TARGETS, facts.btf_params, facts.version))
    return Readiness(feature(facts, plan), plan, blockers(facts, plan))


def check_report(facts: KernelFacts, ready: Readiness) -> dict:
    """The `check --json` document."""
    return {
        "kernel": facts.release,
        "machine": facts.machine,
        "can_trace": ready.can_trace,
        "blockers": ready.blockers,
        "blocker_codes": [getattr(b, "code", "cannot_trace") for b in ready.blockers],
        "feature": ready.feature.as_json(),
        "config": {"source": facts.config_source,
                   "options": {o: (facts.config.get(o, "n") if facts.config is not None else None)
                               for o in RELEVANT}},
        "hvo": {**hugetlb.switches().as_json(), "pools": hugetlb.pools()},
        "privileged": facts.privileged,
        "btf": facts.btf,
        "headers": facts.headers,
        "bcc": facts.bcc,
        "kallsyms_data": {s: facts.syms.has_data(s) for s in DATA_SYMBOLS},
        "trampolines": {"possible": facts.trampoline_blocker is None,
                        "reason": facts.trampoline_blocker or "x86_64, BTF, BPF JIT, "
                                                              + trampoline.SYMBOL},
        "page_table_walk": {"possible": facts.walk_blocker is None,
                            "reason": facts.walk_blocker or "root, /proc/kcore, data symbols"},
        "targets": {s.name: s.as_json() for s in ready.plan},
        "leftover_kprobes": [str(item) for item in facts.leftovers],
        "strategy": {s.name: s.strategy for s in ready.plan},
    }
