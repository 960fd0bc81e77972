"""HVO judged (judge/hvo.py) on event logs recorded in lab guests by the hvo-* cases (real
kernel output, tests/fixtures/events/hvo), through the real `vmemtrace replay`; and the same
logs doctored to prove each check can fail."""

import copy
import json

import pytest

from tests.conftest import FIXTURES, run_cli
from vmemtrace.judge.ledger import fold
from vmemtrace.judge.verdict import evaluate
from vmemtrace.log import logfile

LOGS = FIXTURES / "events" / "hvo"


def log_path(series: str, case: str):
    found = [p for p in LOGS.iterdir() if p.name.startswith(series + ".") or p.name.startswith(series + "-")]
    assert len(found) == 1, found
    return found[0] / f"{case}.jsonl"


def load(series, case):
    path = log_path(series, case)
    with open(path) as fh:
        return logfile.read(fh, str(path))


def replay(path, *args):
    res = run_cli("replay", str(path), "--json", *args)
    return res, (json.loads(res.stdout) if res.stdout.strip() else None)


def statuses(dev):
    return {c["name"]: c["status"] for c in dev["checks"]}


def judged(evs, expect="auto"):
    (dev,) = evaluate(fold(evs), expect)["devices"]
    return dev, {c["name"]: c for c in dev["checks"]}


# series, case, device, vmemmap pages (naive, expected, observed)
OPTIMISED = [
    ("6.12", "hvo-2M", "hugetlb-2048kB", 128, 16),  # one page kept per folio
    ("6.12", "hvo-1G", "hugetlb-1048576kB", 4096, 1),
    ("7.3", "hvo-2M", "hugetlb-2048kB", 128, 17),  # and one tail page shared by all 16
    ("7.3", "hvo-1G", "hugetlb-1048576kB", 4096, 2),
    ("6.1", "hvo-2M", "hugetlb-2048kB", 128, 16),
    ("6.1", "hvo-1G", "hugetlb-1048576kB", 4096, 1),
]


@pytest.mark.parametrize("series,case,device,naive,kept", OPTIMISED)
@pytest.mark.parametrize("log", ["", ".audit"])
def test_allocated_with_hvo_on_every_folio_is_optimised(series, case, device, naive, kept, log):
    res, doc = replay(log_path(series, case + log))
    assert res.returncode == 0 and doc["verdict"] == "pass", res.stderr
    dev = next(d for d in doc["devices"] if d["device"] == device)
    assert dev["vmemmap_pages"] == {"naive": naive, "expected": kept, "observed": kept}
    assert dev["optimized"] is True and dev["expected_optimized"] is True
    want = {"feature-present": "pass", "eligibility": "pass", "folios-found": "pass",
            "tail-reuse": "pass", "accounting": "pass"}
    if not log and series != "6.1":  # verify on 6.11+: the kernel's counters beside the walk
        want["memmap-counters"] = "pass"
    assert statuses(dev) == want
    shared = series == "7.3"
    assert dev["hugetlb"]["layout"]["name"] == ("head+shared-tail" if shared else "head-page")
    assert dev["hugetlb"]["shared_tail_pages"] == int(shared)


@pytest.mark.parametrize("series", ["6.12", "7.3"])
def test_allocated_with_hvo_off_nothing_is_optimised(series):
    res, doc = replay(log_path(series, "hvo-off-2M"))
    assert res.returncode == 0 and doc["verdict"] == "pass", res.stderr
    (dev,) = doc["devices"]
    assert dev["vmemmap_pages"] == {"naive": 128, "expected": 128, "observed": 128}
    assert dev["expected_optimized"] is False and dev["optimized"] is False
    assert statuses(dev)["no-false-optimisation"] == "pass"


@pytest.mark.parametrize("series,case", [("7.3", "hvo-2M"), ("7.3", "hvo-1G"), ("6.1", "hvo-1G"),
                                         ("6.12", "hvo-off-2M")])
def test_freeing_restores_every_vmemmap_page(series, case):
    res, doc = replay(log_path(series, case + ".free"))
    assert res.returncode == 0 and doc["verdict"] == "pass", res.stderr
    (dev,) = doc["devices"]
    assert statuses(dev)["restore"] == "pass" and dev["hugetlb"]["freed"] >= 1


# 6.12's copies of the head in a freed optimised folio: one per restored vmemmap page
@pytest.mark.parametrize("case,device,copies,freed", [("hvo-1G", "hugetlb-1048576kB", 4095, 1),
                                                      ("hvo-2M", "hugetlb-2048kB", 16 * 7, 16)])
def test_6_12_keeps_freed_optimised_folios_as_bad_pages(case, device, copies, freed):
    """The kernel's doing (docs/findings.md): restore left copies of the head in the freed
    struct pages, and the memory never returned."""
    res, doc = replay(log_path("6.12", case + ".free"))
    assert res.returncode == 1 and doc["verdict"] == "fail", res.stderr
    dev = next(d for d in doc["devices"] if d["device"] == device)
    restore = next(c for c in dev["checks"] if c["name"] == "restore")
    assert restore["status"] == "fail" and "Bad page state" in restore["detail"]
    assert restore["detail"].startswith(f"{copies} struct pages in the {freed} freed folios")


def _size(evs):
    return next(e for e in evs if e["type"] == "hugetlb")


def test_a_writable_tail_fails_tail_reuse():
    evs = load("6.12", "hvo-2M")
    row = _size(evs)["rows"][0]
    row[0] -= 1
    _size(evs)["rows"].append([1, row[1] + 512, *row[2:-1], 1])  # one folio, one tail writable
    dev, c = judged(evs)
    assert dev["verdict"] == "fail" and c["tail-reuse"]["status"] == "fail"
    assert "1 tail vmemmap PTEs writable, expected read-only" in c["tail-reuse"]["detail"]


def test_one_page_more_fails_accounting():
    evs = load("7.3", "hvo-2M")
    _size(evs)["distinct"] += 1
    dev, c = judged(evs)
    assert c["accounting"]["status"] == "fail" and c["tail-reuse"]["status"] == "pass"
    assert "18 distinct vmemmap pages behind 16 folios, expected 17" in c["accounting"]["detail"]


def test_folios_sharing_a_head_page_fail_accounting():
    """A recording changed in the one field: two folios whose heads lie on one vmemmap page."""
    evs = load("6.12", "hvo-2M")
    assert _size(evs)["heads_shared"] == 0
    _size(evs)["heads_shared"] = 2
    dev, c = judged(evs)
    assert c["accounting"]["status"] == "fail" and "share the vmemmap page" in c["accounting"]["detail"]


@pytest.mark.parametrize("series", ["6.1", "6.12", "7.3"])
def test_each_nodes_pool_witnesses_the_folios_walked_there(series):
    """An audit walks every folio: per node, the folios found must be that node's pool. A
    recording changed in the one field: node 0's pool one folio larger."""
    evs = load(series, "hvo-2M.audit")
    ev = _size(evs)
    assert ev["node_pools"] == [[0, 16]]
    dev, c = judged(evs)
    assert c["folios-found"]["status"] == "pass" and "on 1 nodes" in c["folios-found"]["detail"]
    ev["node_pools"] = [[0, 17]]
    dev, c = judged(evs)
    assert c["folios-found"]["status"] == "error"
    assert c["folios-found"]["detail"] == ("found 16 folios of 2048 kB on node 0, its pool has "
                                           "17 (node0's nr_hugepages)")


# series, vmemmap pages of 4 whole folios and 16 optimised ones (7.3: and its shared tail page)
@pytest.mark.parametrize("series,pages", [("6.12", 4 * 8 + 16), ("7.3", 4 * 8 + 16 + 1)])
@pytest.mark.parametrize("case,skipped", [("mixed-2M.audit", "tail-reuse"),
                                          ("mixed-off-2M.audit", "no-false-optimisation")])
def test_an_audit_of_a_pool_grown_across_the_switch_is_incomplete_never_failed(series, pages,
                                                                              case, skipped):
    """What the walk cannot tell (when each folio came) is not judged; every number it can
    tell is: the folios in the other state than the switch says are counted as they are."""
    res, doc = replay(log_path(series, case))
    assert res.returncode == 2 and doc["verdict"] == "incomplete", res.stderr
    (dev,) = doc["devices"]
    assert dev["vmemmap_pages"] == {"naive": 160, "expected": pages, "observed": pages}
    assert statuses(dev)[skipped] == "skip" and "fail" not in statuses(dev).values()
    assert dev["hugetlb"]["optimized"] == 16 and dev["hugetlb"]["unoptimized"] == 4
    res, doc = replay(log_path(series, case), "--allow-skip", skipped)
    assert res.returncode == 0 and doc["verdict"] == "pass", res.stderr


def test_optimised_with_hvo_off_fails_under_verify_but_not_in_an_audit():
    evs = load("6.12", "hvo-2M")
    _size(evs)["hvo"]["sysctl"] = 0
    dev, c = judged(copy.deepcopy(evs))
    assert c["no-false-optimisation"]["status"] == "fail"
    audit = load("6.12", "hvo-2M.audit")
    _size(audit)["hvo"]["sysctl"] = 0  # allocated while it was on, perhaps: a walk cannot tell
    dev, c = judged(audit)
    assert c["no-false-optimisation"]["status"] == "skip" and dev["verdict"] == "incomplete"


def test_an_unknown_layout_is_incomplete_never_failed():
    evs = load("7.3", "hvo-2M")
    _size(evs)["hvo"]["zone_vmemmap_tails"] = None  # no BTF to read the layout from
    dev, c = judged(evs)
    assert dev["verdict"] == "incomplete" and dev["unjudged"] == ["tail-reuse", "accounting"]
    assert "no BTF" in c["tail-reuse"]["detail"]


def test_a_folio_missed_by_the_walk_is_an_error():
    evs = load("6.12", "hvo-2M")
    _size(evs)["nr_hugepages"] += 1
    dev, c = judged(evs)
    assert dev["verdict"] == "error" and c["folios-found"]["status"] == "error"


def test_a_restored_folio_still_on_one_page_fails_restore():
    evs = load("6.12", "hvo-2M.free")
    size = _size(evs)
    size["restored_rows"][0][4] = 1  # 8 PTEs on one page, as before the free
    dev, c = judged(evs)
    assert c["restore"]["status"] == "fail" and "still without their own vmemmap" in c["restore"]["detail"]


def test_a_hugepage_size_is_chosen_by_name():
    res, doc = replay(log_path("6.12", "hvo-1G.audit"), "-d", "hugetlb-1048576kB")
    assert res.returncode == 0 and [d["device"] for d in doc["devices"]] == ["hugetlb-1048576kB"]


@pytest.mark.parametrize("series", ["6.12", "7.3"])
@pytest.mark.parametrize("case", ["hvo-2M", "hvo-2M.free", "hvo-1G", "hvo-off-2M"])
def test_the_kernels_memmap_counters_agree_with_the_walk(series, case):
    dev, c = judged(load(series, case))
    assert c["memmap-counters"]["status"] == "pass", c["memmap-counters"]
    per, n = (7, 16) if "2M" in case else (4095, 1)
    moved = 0 if "off" in case else per * n * (1 if case.endswith(".free") else -1)
    assert f"changed by {moved:+d} across the command" in c["memmap-counters"]["detail"]


def test_counters_that_disagree_fail_and_6_1_has_none():
    evs = load("6.12", "hvo-2M")
    after = next(e for e in evs if e["type"] == "vmstat" and e["when"] == "after")
    after["nr_memmap_boot_pages"] += 8  # one folio's boot vmemmap not freed after all
    dev, c = judged(evs)
    assert c["memmap-counters"]["status"] == "fail" and dev["verdict"] == "fail"
    _, c = judged(load("6.1", "hvo-2M"))  # before 6.11: no counters, no check
    assert "memmap-counters" not in c


def test_trace_lines_of_a_hugepage_size():
    from vmemtrace.output.render import event_line

    evs = load("7.3", "hvo-2M.free")
    line = event_line(_size(evs), "0")
    assert "HUGETLB  2048 kB  0 folios walked (pool 0), 0 distinct vmemmap pages behind them; 16 freed" in line
    vmstat = event_line(next(e for e in evs if e["type"] == "vmstat"), "0")
    assert "nr_memmap_boot_pages" in vmstat


def test_a_struct_page_that_is_no_power_of_two_is_never_eligible():
    evs = load("6.12", "hvo-off-2M")
    _size(evs)["hvo"]["sysctl"] = 1
    _size(evs)["struct_page_size"] = 80  # KMSAN-sized: HVO optimises nothing
    dev, c = judged(evs)
    assert dev["expected_optimized"] is False
    assert "sizeof(struct page) is 80, not a power of two" in c["eligibility"]["detail"]


@pytest.mark.parametrize("series,kept", [("6.12", 1), ("7.3", 2)])
def test_a_1G_page_reserved_at_boot_is_optimised(series, kept):
    """Only the walk sees it: 7.3 populates it optimised before any tracer could attach."""
    res, doc = replay(log_path(series, "boot-1G.audit"))
    assert res.returncode == 0 and doc["verdict"] == "pass", res.stderr
    (dev,) = doc["devices"]
    assert dev["vmemmap_pages"] == {"naive": 4096, "expected": kept, "observed": kept}
    assert dev["hugetlb"]["hvo"]["cmdline"] == "on"
