"""The probe registry (vmemtrace/probes/targets.py) against the BPF program's source: every
program it names exists, every probed function has its hit counter, and every strategy the plan
can choose has programs to attach. No BCC, no root."""

import re

import pytest

from vmemtrace.kernel.kallsyms import Kallsyms
from vmemtrace.probes import plan as P
from vmemtrace.probes.loader import BPF_SOURCE
from vmemtrace.probes.targets import PROGRAMS, TARGETS

SOURCE = BPF_SOURCE.read_text()


def struct_fields(name):
    body = re.search(r"struct %s \{(.*?)\};" % name, SOURCE, re.S).group(1)
    return re.findall(r"u64 (\w+);", body)


@pytest.mark.parametrize("fn", PROGRAMS)
def test_every_program_exists(fn):
    assert re.search(rf"^int {fn}\(struct pt_regs \*ctx", SOURCE, re.M), fn


def test_every_probed_function_counts_its_hits_under_its_own_name():
    probed = [t.name for t in TARGETS if t.programs or t.count]
    assert struct_fields("hits_t") == probed


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
