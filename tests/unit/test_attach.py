"""The loader's attach bookkeeping (vmemtrace/probes/tracer.py, Tracer._attach): what the plan
says is attached, and a trampoline the kernel refuses is replaced by the target's kprobes. The
BCC object here only records calls and refuses what it is told to: what a real kernel accepts
is the lab's to show (tests/lab/test_lab_e2e.py, trampolines on four kernels)."""

import pytest

from vmemtrace.errors import VmemtraceError
from vmemtrace.kernel.kallsyms import Kallsyms
from vmemtrace.probes import plan as P
from vmemtrace.probes.targets import TARGETS
from vmemtrace.probes.tracer import Tracer


class Recorder:
    def __init__(self, refuse=()):
        self.refuse, self.calls = set(refuse), []
        self.kfunc_entry_fds, self.kfunc_exit_fds = {}, {}

    def _call(self, what, name):
        if (what, name) in self.refuse:
            raise Exception(f"{what} {name}: Invalid argument")
        self.calls.append((what, name))

    def attach_kprobe(self, event, fn_name):
        self._call("kprobe", f"{event}:{fn_name}")

    def attach_kretprobe(self, event, fn_name):
        self._call("kretprobe", f"{event}:{fn_name}")

    def attach_kfunc(self, fn_name):
        self._call("fentry", fn_name)

    def attach_kretfunc(self, fn_name):
        self._call("fexit", fn_name)

    def detach_kfunc(self, fn_name):
        self.calls.append(("detach fentry", fn_name))

    def detach_kretfunc(self, fn_name):
        self.calls.append(("detach fexit", fn_name))


def tracer(bpf, said):
    t = Tracer.__new__(Tracer)
    t.bpf, t.programs, t.attached, t._progress = bpf, {}, {}, said.append
    t._bcc_name = lambda fn: fn.encode()  # BCC's own listing is the lab's to read
    return t


def plan():
    names = {t.name for t in TARGETS}
    return P.build_plan((6, 12, 0), Kallsyms(names, {}, {}), names, set(), kprobes=True,
                        walk_blocker=None,
                        trampolines=P.Trampolines(frozenset({"vmemmap_populate_address",
                                                             "memmap_init_zone_device"}), None))


def test_the_plan_is_attached_as_it_says():
    bpf, said = Recorder(), []
    t = tracer(bpf, said)
    t._attach(plan())
    assert ("fentry", b"kfunc__vmemmap_populate_address") in bpf.calls
    assert ("fexit", b"kretfunc__memmap_init_zone_device") in bpf.calls
    assert ("kprobe", "vmemmap_alloc_block:alloc_block_enter") in bpf.calls
    assert t.attached["vmemmap_populate_address"] == "fentry+fexit"
    assert t.attached["vmemmap_alloc_block"] == "kprobe+kretprobe"
    assert t.programs["kretfunc__vmemmap_populate_address"] == "fexit"
    assert t.programs["alloc_block_enter"] == "kprobe"
    assert said == []


def test_a_refused_trampoline_falls_back_to_kprobes_and_says_so():
    bpf, said = Recorder(refuse={("fexit", b"kretfunc__vmemmap_populate_address")}), []
    t = tracer(bpf, said)
    t._attach(plan())
    # the fentry that had attached is detached first: never one probe of each kind at once
    assert bpf.calls.index(("detach fentry", b"kfunc__vmemmap_populate_address")) < \
        bpf.calls.index(("kprobe", "vmemmap_populate_address:vpa_enter"))
    assert ("kretprobe", "vmemmap_populate_address:vpa_return") in bpf.calls
    assert t.attached["vmemmap_populate_address"] == "kprobe+kretprobe"
    assert "kfunc__vmemmap_populate_address" not in t.programs
    assert t.attached["memmap_init_zone_device"] == "fentry+fexit"
    (line,) = said
    assert line.startswith("vmemmap_populate_address: BPF trampoline refused (fexit ")
    assert line.endswith("kprobes instead")


def test_trampolines_bcc_attached_on_its_own_are_refused():
    bpf = Recorder()
    bpf.kfunc_entry_fds = {b"kfunc__memmap_init_zone_device": 9}
    with pytest.raises(VmemtraceError, match="attached fentry/fexit programs on its own"):
        tracer(bpf, [])._attach(plan())
