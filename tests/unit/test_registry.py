"""The probe registry (vmemtrace/probes/targets.py) against the BPF program's source: every
program it names exists, every probed function has its hit counter, and every strategy the plan
can choose has programs to attach. No BCC, no root."""

import re
from pathlib import Path

import pytest

from vmemtrace.kernel.kallsyms import Kallsyms
from vmemtrace.probes import plan as P
from vmemtrace.probes.program import BPF_SOURCE
from vmemtrace.probes.targets import PROGRAMS, TARGETS

SOURCE = BPF_SOURCE.read_text()


@pytest.mark.parametrize("fn", PROGRAMS)
def test_every_program_exists(fn):
    assert re.search(rf"^int {fn}\(struct pt_regs \*ctx", SOURCE, re.M), fn


@pytest.mark.parametrize("availability", [P.TRACEABLE, P.CLONE])
def test_every_attached_strategy_has_programs(availability):
    """Whatever the plan picks for a target, on a kernel where every target is `availability`,
    the loader has a program for each probe kind and a symbol to attach it to."""
    names = {t.name for t in TARGETS}
    clones = {n: [n + ".constprop.0"] for n in names}
    syms = Kallsyms(names if availability == P.TRACEABLE else set(),
                    {} if availability == P.TRACEABLE else clones, {})
    plan = P.build_plan((7, 3, 0), syms, names, set(), kprobes=True, walk_blocker=None)
    for status in plan:
        if P.is_attached(status.strategy):
            assert P.programs(status), status
            assert all(fn in PROGRAMS for _, fn in P.programs(status))
            assert P.probed_symbols(status)
        else:
            assert P.programs(status) == [], status
    by_name = {s.name: s for s in plan}
    # One hit per struct page only where memmap_init_compound cannot be decoded.
    expected = P.UNUSED if availability == P.TRACEABLE else P.COUNT
    assert by_name["__init_zone_device_page"].strategy == expected
    if availability == P.CLONE:  # never decoded by position: counted on the clones themselves
        assert by_name["vmemmap_populate_address"].strategy == "walk"
        assert P.probed_symbols(by_name["memmap_init_compound"]) == ["memmap_init_compound.constprop.0"]


def test_no_probe_leaves_a_target_out():
    names = {t.name for t in TARGETS}
    plan = P.build_plan((7, 3, 0), Kallsyms(names, {}, {}), names, set(), kprobes=True,
                        walk_blocker=None, exclude=("vmemmap_alloc_block",))
    status = next(s for s in plan if s.name == "vmemmap_alloc_block")
    assert status.strategy == P.EXCLUDED and P.programs(status) == []


def test_the_summary_struct_is_sized_by_what_compounds_py_passes():
    """struct cp_sum's arrays (bpf/vmemtrace.h) are sized by the defines the loader passes from
    compounds.py, and a BCC array of rows is read whether BCC hands it over flat or nested."""
    import ctypes

    from vmemtrace.log import compounds, difference
    from vmemtrace.probes.maps import _rows
    from vmemtrace.probes.program import defines

    flags, _ = defines((6, 12, 0), Path("/nonexistent"), None)
    assert {f"-DCP_PARTS={compounds.MAX_PARTS}", f"-DCP_TABLE_WIDTH={difference.TABLE_WIDTH}",
            f"-DCP_TABLE_HASHES={difference.TABLE_HASHES}", f"-DCP_PART_SHIFT={compounds.PART_SHIFT}",
            f"-DCP_CLASSES={compounds.BPF_CLASSES}", f"-DCP_PART_WIDTH={compounds.PART_WIDTH}",
            f"-DCP_CELL_WIDTH={difference.CELL_WIDTH}"} <= set(flags)
    for n in (compounds.MAX_PARTS, difference.TABLE_WIDTH):  # the C masks with n - 1
        assert n & (n - 1) == 0, n
    nested = ((ctypes.c_ulonglong * 2) * 3)(*[(ctypes.c_ulonglong * 2)(i, 10 * i) for i in range(3)])
    flat = (ctypes.c_ulonglong * 6)(0, 0, 1, 10, 2, 20)
    assert _rows(nested, 2) == _rows(flat, 2) == [[0, 0], [1, 10], [2, 20]]


def trampoline_block(name):
    """The source between #ifdef VT_ARGS_<name> and its #endif (none nest inside)."""
    m = re.search(rf"^#ifdef VT_ARGS_{name}\n(.*?)^#endif\n(?=\n|\Z)", SOURCE, re.M | re.S)
    return m.group(1) if m else None


@pytest.mark.parametrize("target", [t for t in TARGETS if t.programs], ids=lambda t: t.name)
def test_every_target_with_programs_has_its_trampolines_compiled_only_where_btf_has_it(target):
    """Its fentry (and fexit, where it has a kretprobe) exist, only under VT_ARGS_<name>: a
    trampoline program for a function the BTF lacks would fail the whole load. fexit lists all
    VT_ARGS_<name> arguments (its return value follows them) unless the function returns void."""
    block = trampoline_block(target.name)
    assert block is not None, target.name
    kinds = dict(target.trampoline)
    # VT_ALLOCATOR(fn, buf): an allocator's fentry and its fexit over VT_ARGS_<fn> arguments.
    allocator = re.search(rf"^VT_ALLOCATOR\({target.name}, [01]\)$", block, re.M)
    assert allocator or re.search(rf"(VT_FENTRY|KFUNC_PROBE)\({target.name}\b", block)
    fexit = allocator or re.search(
        rf"(VT_FEXIT|KRETFUNC_PROBE)\({target.name}(, VT_ARGS_{target.name}\))?", block)
    assert ("fexit" in kinds) == (fexit is not None)
    programs = re.compile(
        rf"^(VT_FENTRY|VT_FEXIT|VT_ALLOCATOR|KFUNC_PROBE|KRETFUNC_PROBE)\({target.name}\b", re.M)
    assert len(programs.findall(SOURCE)) == len(programs.findall(block))  # none outside it
    assert target.trampoline_attach == "+".join(kinds)


def test_fentry_reads_no_argument_past_those_it_lists():
    """VT_FENTRY(fn, n) lists a0..a(n-1): a body that reads a(n) would not compile, and one
    listing more than the function has would be refused by the verifier (btf_ctx_access)."""
    for m in re.finditer(r"^VT_FENTRY\((\w+), (\d)\)\n\{(.*?)^\}", SOURCE, re.M | re.S):
        used = {int(a) for a in re.findall(r"\ba(\d)\b", m.group(3))}
        assert used and max(used) < int(m.group(2)), m.group(1)


def test_the_plan_attaches_by_trampoline_where_btf_has_the_function():
    names = {t.name for t in TARGETS}
    syms = Kallsyms(names - {"memmap_init_compound"},
                    {"memmap_init_compound": ["memmap_init_compound.constprop.0"]}, {})
    in_btf = frozenset(names - {"vmemmap_alloc_block", "memmap_init_compound"})
    plan = {s.name: s for s in P.build_plan(
        (7, 3, 0), syms, names, set(), kprobes=True, walk_blocker=None,
        trampolines=P.Trampolines(in_btf, None))}
    assert plan["vmemmap_populate_address"].strategy == "fentry+fexit"
    assert P.programs(plan["vmemmap_populate_address"]) == [
        ("fentry", "kfunc__vmemmap_populate_address"), ("fexit", "kretfunc__vmemmap_populate_address")]
    assert plan["vmemmap_alloc_block"].strategy == "kprobe+kretprobe"
    assert plan["vmemmap_alloc_block"].reason.endswith("not in the kernel's BTF")
    assert plan["memmap_init_compound"].strategy == P.COUNT  # a clone: BTF has no clones
    assert P.programs(plan["memmap_init_compound"]) == [("kprobe", "mic_count")]
    # A kernel without trampolines: kprobes everywhere, and why said.
    plan = {s.name: s for s in P.build_plan(
        (7, 3, 0), syms, names, set(), kprobes=True, walk_blocker=None,
        trampolines=P.Trampolines(in_btf, "no kernel BTF"))}
    assert plan["vmemmap_populate_address"].strategy == "kprobe+kretprobe"
    assert plan["vmemmap_populate_address"].reason.endswith("not a BPF trampoline: no kernel BTF")
    # Without kprobes, trampolines still attach; a clone, which only a kprobe can count, cannot.
    plan = {s.name: s for s in P.build_plan(
        (7, 3, 0), syms, names, set(), kprobes=False, walk_blocker=None,
        trampolines=P.Trampolines(in_btf, None))}
    assert plan["memmap_init_zone_device"].strategy == "fentry+fexit"
    assert plan["memmap_init_compound"].strategy == "unavailable"
    assert plan["vmemmap_alloc_block"].strategy == "unavailable"
