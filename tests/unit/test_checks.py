"""Each check of the registry (vmemtrace/judge/checks.py) called with the view it judges: views built from
real lab recordings, then changed in the one field the check reads, so that every status a
check can give is reached and shown to follow from that field."""

from dataclasses import replace

import pytest

from tests.conftest import FIXTURES
from vmemtrace.judge import checks, ledger, view
from vmemtrace.judge.cross_check import cross_check
from vmemtrace.judge.outcome import ERROR, FAIL, PASS, SKIP, STATUSES, Check
from vmemtrace.log import logfile
from vmemtrace.log.compounds import CompoundPages

LOGS = FIXTURES / "events"


def view_of(series: str, case: str, expect: str = "auto") -> view.DeviceView:
    (folder,) = [p for p in LOGS.iterdir() if p.name.startswith(series + ".") or
                 p.name.startswith(series + "-")]
    with open(folder / case) as fh:
        led = ledger.fold(logfile.read(fh, case))
    (d,) = led.devices
    return view.device_view(d, led, expect)


def compound_events(series: str, case: str, source=None) -> list:
    """A recording's compound events of one source, to change and fold again."""
    (folder,) = [p for p in LOGS.iterdir() if p.name.startswith(series + ".") or
                 p.name.startswith(series + "-")]
    with open(folder / case) as fh:
        return [e for e in logfile.read(fh, case)
                if e["type"] == "compound" and e.get("source") == source]


def pages(evs, source=None) -> CompoundPages:
    out = CompoundPages(source)
    for ev in evs:
        out.append(ev)
    return out


def seen(v: view.DeviceView, **changes) -> view.DeviceView:
    return replace(v, seen=replace(v.seen, **changes))


@pytest.fixture(scope="module")
def mem2m():
    return view_of("6.12", "mem-2M.jsonl")


@pytest.fixture(scope="module")
def dev2m():
    return view_of("6.12", "dev-2M.jsonl")


def test_feature_present_by_kernel_and_expectation(mem2m):
    assert checks.feature_present(mem2m).status == PASS
    old = view_of("5.10", "mem-2M.jsonl")
    assert checks.feature_present(old).status == SKIP
    assert checks.feature_present(replace(old, expect="optimized")).status == FAIL


def test_eligibility_against_the_expectation(mem2m, dev2m):
    assert checks.eligibility(mem2m).status == PASS
    assert checks.eligibility(replace(mem2m, expect="unoptimized")).status == FAIL
    assert checks.eligibility(replace(dev2m, expect="optimized")).status == FAIL
    assert checks.eligibility(dev2m).detail.startswith("not eligible: ")


def test_tail_reuse_judges_every_compound_page(mem2m):
    c = checks.tail_reuse(mem2m)
    assert c.status == PASS and "all 1536 compound pages" in c.detail
    evs = compound_events("6.12", "mem-2M.jsonl")
    for i in (0, 7, 700, 1535):  # kept whole (first and last section) or only counted
        broken = [dict(cp) for cp in evs]
        broken[i] = dict(broken[i], fresh=3, reused=broken[i]["reused"] - 1)
        c = checks.tail_reuse(seen(mem2m, compounds=pages(broken)))
        assert c.status == FAIL and f"pfn {broken[i]['head_pfn']}: 3 freshly allocated" in c.detail
    broken[9] = dict(broken[9], on_tail=0)
    c = checks.tail_reuse(seen(mem2m, compounds=pages(broken)))
    assert c.status == FAIL and "(and 1 more compound pages)" in c.detail
    for i in (0, 700, 1535):
        c = checks.tail_reuse(seen(mem2m, compounds=pages(evs[:i] + evs[i + 1:])))
        assert c.status == FAIL and "1535 compound pages, expected 1536" in c.detail
    for a, b in ((0, 1), (1, 700), (700, 900), (1535, 3)):
        shared = [dict(cp) for cp in evs]
        shared[b] = dict(shared[b], tail_pfn=shared[a]["tail_pfn"])
        c = checks.tail_reuse(seen(mem2m, compounds=pages(reversed(shared))))
        assert c.status == FAIL and "shares its first tail vmemmap page" in c.detail
        assert f"(pfn {shared[a]['tail_pfn']})" in c.detail
    c = checks.tail_reuse(seen(mem2m, compounds=None, populate_why="not probed here"))
    assert (c.status, c.detail) == (SKIP, "not probed here")


def test_init_skip_and_the_kernel_log_witness(mem2m):
    c = checks.init_skip(mem2m)
    assert c.status == PASS and "196608 struct pages initialised (128 per compound page)" in c.detail
    assert checks.init_skip(seen(mem2m, struct_pages_initialized=196609)).status == FAIL
    assert checks.init_skip(seen(mem2m, struct_pages_initialized=None)).status == SKIP
    loop = mem2m.numbers.init_loop
    agrees = checks.init_skip(replace(mem2m, kernel_log={"pages": loop, "ms": 3}))
    assert agrees.status == PASS and f"initialised {loop} pages in 3ms" in agrees.detail
    disagrees = checks.init_skip(replace(mem2m, kernel_log={"pages": loop - 512, "ms": 3}))
    assert disagrees.status == FAIL and f"not the {loop} pfns expected" in disagrees.detail


def test_accounting_and_the_vmstat_witness(mem2m):
    c = checks.accounting(mem2m)
    assert c.status == PASS and "nr_memmap_pages agrees (+3072)" in c.detail
    assert checks.accounting(seen(mem2m, vmemmap_pages=3073)).status == FAIL
    assert checks.accounting(seen(mem2m, vmemmap_pages=None)).status == SKIP
    over = checks.accounting(replace(mem2m, vmstat={"before": 0, "after": 12288}))
    assert over.status == PASS and "over-reports" in over.detail  # the counter's fault, not a fail


def test_no_false_optimisation_on_an_ineligible_range(dev2m, mem2m):
    assert checks.no_false_optimisation(dev2m).status == PASS
    c = checks.no_false_optimisation(seen(dev2m, reused=5))
    assert c.status == FAIL and "5 vmemmap PTEs reused" in c.detail
    assert checks.no_false_optimisation(seen(dev2m, vmemmap_pages=3072)).status == FAIL
    assert checks.no_false_optimisation(seen(dev2m, vmemmap_pages=None)).status == SKIP
    assert checks.no_false_optimisation(mem2m).status == SKIP  # eligible: the others judge it


def test_cross_check_only_when_asked(mem2m):
    assert mem2m.cross_check
    assert cross_check(mem2m).status == PASS
    assert cross_check(replace(mem2m, cross_check=False)) is None
    assert cross_check(replace(mem2m, walk=None)).status == FAIL
    walked = compound_events("6.12", "mem-2M.jsonl", "walk")
    assert cross_check(replace(mem2m, walk_compounds=pages(reversed(walked), "walk"))).status == PASS
    for i in (0, 600, 1535):  # each page named by the difference tables
        moved = [dict(c) for c in walked]
        moved[i] = dict(moved[i], tail_pfn=moved[i]["tail_pfn"] + 1)
        c = cross_check(replace(mem2m, walk_compounds=pages(moved, "walk")))
        assert c.status == FAIL and c.detail.startswith(
            f"1 compound page differs between probes and walk: pfn {walked[i]['head_pfn']} "
            "(laid out differently)"), c.detail
        assert "laid out as" not in c.detail  # the same layouts, one on another tail page
    few = [dict(c) for c in walked]
    for i in (7, 300, 1200):
        few[i] = dict(few[i], tail_pfn=few[i]["tail_pfn"] + 1)
    c = cross_check(replace(mem2m, walk_compounds=pages(few[:-1], "walk")))
    heads = sorted([walked[i]["head_pfn"] for i in (7, 300, 1200)])
    assert c.status == FAIL and c.detail.startswith(
        f"4 compound pages differ between probes and walk: pfn {heads[0]} (laid out differently), "
        f"pfn {heads[1]} (laid out differently), pfn {heads[2]} (laid out differently), "
        f"pfn {walked[-1]['head_pfn']} (only the probes saw it)"), c.detail
    # more than the tables can list: the parts say where to look
    everywhere = [dict(c, tail_pfn=c["tail_pfn"] + 1) if i >= 1024 else c for i, c in enumerate(walked)]
    c = cross_check(replace(mem2m, walk_compounds=pages(everywhere, "walk")))
    lo = mem2m.shape.start_pfn + 1024 * 512
    assert c.status == FAIL and f"differ in 2 of 6 parts of the range, first in pfns {lo} to " \
        f"{lo + 256 * 512}" in c.detail, c.detail
    unshared = [dict(c) for c in walked]
    unshared[5] = dict(unshared[5], reused=unshared[5]["reused"] - 1, fresh=unshared[5]["fresh"] + 1)
    c = cross_check(replace(mem2m, walk_compounds=pages(unshared, "walk")))
    assert c.status == FAIL and "(8, 2, 6, 6, 1, 1): probes 1536, walk 1535" in c.detail, c.detail


def test_range_complete_error_is_the_evidence_not_the_kernel(mem2m):
    assert checks.range_complete(mem2m) is None
    c = checks.range_complete(replace(mem2m, range=None, walk=None))
    assert c.status == ERROR
    holed = dict(mem2m.walk, mapped=mem2m.walk["mapped"] - 8)
    c = checks.range_complete(replace(mem2m, walk=holed))
    assert c.status == FAIL and "8 of the range's" in c.detail


def test_verdict_from_statuses_alone():
    defining = checks.defining_checks(True, True)
    judged = [Check(n, PASS, "") for n in defining]
    assert checks.device_verdict(judged, defining) == ("pass", [])
    skipped = judged[:-1] + [Check(defining[-1], SKIP, "")]
    assert checks.device_verdict(skipped, defining) == ("incomplete", [defining[-1]])
    assert checks.device_verdict(skipped, defining, allow_skip=(defining[-1],))[0] == "pass"
    failed = skipped + [Check("eligibility", FAIL, "")]
    assert checks.device_verdict(failed, defining)[0] == "fail"
    assert checks.device_verdict(failed + [Check("range-complete", ERROR, "")],
                                 defining)[0] == "error"


@pytest.mark.parametrize("case", ["mem-2M.jsonl", "dev-2M.jsonl", "mem-4K.jsonl", "mem-1G.jsonl"])
def test_every_defining_check_is_in_the_registry(case):
    v = view_of("6.12", case)
    names = [c.name for c in checks.run_checks(v)]
    assert len(names) == len(set(names))
    assert set(checks.defining_checks(v.feature, v.eligible)) <= set(names)
    assert {c.status for c in checks.run_checks(v)} <= set(STATUSES)


def test_compound_alignment_reads_the_range_start_alone():
    """The 6.12 mem-1G recording starts on a 1 GiB boundary: nothing to say. The same view with
    its start moved 256 MiB (as a CXL window can be) fails, naming where; 2 MiB pages, whose
    ranges always start 2 MiB aligned, never do."""
    v = view_of("6.12", "mem-1G.jsonl")
    assert checks.compound_alignment(v) is None
    moved = replace(v, shape=replace(v.shape, start_pfn=v.shape.start_pfn + (256 << 8)))
    c = checks.compound_alignment(moved)
    assert c.status == FAIL and c.name == "compound-alignment"
    assert f"pfn {moved.shape.start_pfn} ({moved.shape.start_pfn >> 8} MiB), 256 MiB past a " \
           "1 GiB boundary" in c.detail
    assert checks.compound_alignment(view_of("6.12", "mem-2M.jsonl")) is None


def test_compound_alignment_counts_from_past_the_altmap():
    """With an altmap memmap_init_zone_device() starts past the pfns whose struct pages it holds:
    the real 6.12 dev-2M view moved so that only that first head is off 2 MiB fails; moved so
    that the range's start is off but the first head is not, it passes."""
    v = view_of("6.12", "dev-2M.jsonl")
    assert v.shape.altmap and v.shape.altmap_offset and checks.compound_alignment(v) is None
    off_head = replace(v, shape=replace(v.shape, altmap_offset=v.shape.altmap_offset + 256))
    c = checks.compound_alignment(off_head)
    assert c.status == FAIL and "past the altmap's pfns" in c.detail and "1 MiB past a 2 MiB" in c.detail
    off_start = replace(v, shape=replace(v.shape, start_pfn=v.shape.start_pfn - 256,
                                         altmap_offset=v.shape.altmap_offset + 256))
    assert checks.compound_alignment(off_start) is None
