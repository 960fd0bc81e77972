"""End to end on qemu's ACPI NFIT NVDIMMs (`vmemtrace lab --pmem nfit`): label-based regions as
on real PMEM servers, several namespaces in one region, two regions, and the multi case's three
devices set up by concurrent ndctl commands under one `vmemtrace verify`, by trampolines and
again by kprobes (`--attach kprobe`), which a map read from user space while another range is
being populated could make the kernel skip.
"""

import json
import re
from collections import defaultdict
from pathlib import Path

import pytest

from tests.conftest import lab_json
from vmemtrace.judge import geometry

pytestmark = pytest.mark.lab

KERNELS = ("6.12", "7.3")  # everything traceable, and the newest (inlined allocator, clones)
SIZE = 3 << 30  # each NVDIMM
PAGE = 4096


@pytest.fixture(scope="module")
def lab():
    # two vCPUs: the multi cases populate ranges from tasks that may run at the same moment
    docs = lab_json(KERNELS, "--cpus", "2", "--pmem", "nfit", "--case", "mem-2M,multi,multi-kprobe")
    assert all(doc["pmem"] == "nfit" for doc in docs.values())
    return docs


def entry(doc, name):
    return next(c for c in doc["cases"] if c["case"] == name)


def expected(dev, ppc):
    """geometry's numbers for the range verify reported (start and size are the kernel's)."""
    s = geometry.RangeShape(dev["start_pfn"], dev["nr_pages"], ppc, altmap=dev["altmap"])
    return {"naive": geometry.vmemmap_pages_naive(s), "expected": geometry.vmemmap_pages_expected(s)
            if dev["expected_optimized"] else geometry.vmemmap_pages_naive(s)}


@pytest.mark.parametrize("kernel", KERNELS)
def test_a_namespace_on_an_nvdimm_is_label_based_and_verifies(lab, kernel):
    e = entry(lab[kernel], "mem-2M")
    assert e["result"]["verdict"] == "pass" and e["audit"]["verdict"] == "pass"
    (ns,) = e["namespaces"]
    # a label gives the namespace its uuid; the memmap= region's label-less one has none
    assert re.fullmatch(r"[0-9a-f-]{36}", ns["uuid"])
    # the whole region, less the 2 MiB (one compound page) of the devdax info block, while the
    # pgmap covers all of it
    assert ns["size"] == SIZE - (2 << 20)
    (d,) = e["result"]["devices"]
    assert d["nr_pages"] * PAGE == SIZE
    assert d["vmemmap_pages"] == {"naive": 12288, "expected": 3072, "observed": 3072}
    assert d["struct_pages_initialized"]["observed"] == 196608


MULTI = ("multi", "multi-kprobe")


@pytest.mark.parametrize("name", MULTI)
@pytest.mark.parametrize("kernel", KERNELS)
def test_the_multi_case_verifies_each_of_three_devices_by_its_own_shape(lab, kernel, name):
    e = entry(lab[kernel], name)
    r = e["result"]
    assert r["verdict"] == "pass" and e["verify_exit"] == 0, r
    assert r["command"]["exit"] == 0 and r["command"]["argv"][:2] == ["sh", "-c"]
    # two label-based namespaces in one region, one in the other
    by_region = defaultdict(list)
    for ns in e["namespaces"]:
        by_region[ns["dev"].split(".")[0]].append((ns["map"], ns["align"]))
    assert sorted(map(sorted, by_region.values())) == [[("dev", 2 << 20), ("mem", 2 << 20)],
                                                       [("mem", 1 << 30)]]
    devices = {(d["altmap"], d["align"]): d for d in r["devices"]}
    assert len(r["devices"]) == 3 and len(devices) == 3
    for (altmap, align), d in devices.items():
        assert d["verdict"] == "pass" and d["unjudged"] == [], d
        assert d["expected_optimized"] is (not altmap) and d["optimized"] is (not altmap)
        numbers = expected(d, align // PAGE)
        assert d["vmemmap_pages"] == {**numbers, "observed": numbers["expected"]}, d
        cross = next(c for c in d["checks"] if c["name"] == "cross-check")
        assert cross["status"] == "pass", cross
    assert devices[(False, 1 << 30)]["vmemmap_pages"]["observed"] == 6  # 3 compound pages of 1 GiB
    assert devices[(False, 2 << 20)]["vmemmap_pages"]["observed"] == 1536  # 1.5 GiB at 2 MiB
    # audit afterwards walks the same three ranges and finds the same vmemmap
    walked = {d["start_pfn"]: d["vmemmap_pages"]["observed"] for d in e["audit"]["devices"]}
    assert e["audit"]["verdict"] == "pass"
    assert walked == {d["start_pfn"]: d["vmemmap_pages"]["observed"] for d in r["devices"]}


@pytest.mark.parametrize("name", MULTI)
@pytest.mark.parametrize("kernel", KERNELS)
def test_the_multi_case_devices_came_from_three_ndctl_processes(lab, kernel, name):
    """The recorded log: each range and its sections were set up by a task of its own (BPF
    keeps its state per task, so ranges set up at once cannot mix)."""
    log = Path(lab[kernel]["run_dir"], "out", f"{name}.jsonl")
    events = [json.loads(line) for line in log.read_text().splitlines()]
    ranges = [ev for ev in events if ev["type"] == "range"]
    assert len(ranges) == 3 and len({ev["pid"] for ev in ranges}) == 3
    # multi-kprobe binds the devices made before it: a shell's echo into device_dax's bind
    assert {ev["comm"] for ev in ranges} == {"ndctl" if name == "multi" else "sh"}
    for rng in ranges:
        end = rng["start_pfn"] + rng["nr_pages"]
        mine = [ev for ev in events if ev["type"] == "sections"
                and rng["start_pfn"] <= ev["runs"][0][0] < end]
        assert mine and {pid for ev in mine for pid, _ in ev["tasks"]} == {rng["pid"]}


@pytest.mark.parametrize("name", MULTI)
@pytest.mark.parametrize("kernel", KERNELS)
def test_ranges_populated_at_once_lose_nothing_by_either_way_of_attaching(lab, kernel, name):
    """No probe run was skipped: the kernel counts none (both kernels count kprobes' and
    trampolines' skipped runs) and no return probe ran without its entry. multi-kprobe binds
    the three devices at once: the memory hotplug lock lets one range populate at a time, and
    each began right as the one before it was initialised, when user space once read the
    finished range's maps (no ndctl start-up between them, as in multi)."""
    e = entry(lab[kernel], name)
    r = e["result"]
    kinds = {"multi": {"fentry+fexit"}, "multi-kprobe": {"kprobe+kretprobe"}}[name]
    assert {r["strategy"][t] for t in ("__populate_section_memmap", "vmemmap_populate_address",
                                       "memmap_init_zone_device")} == kinds, r["strategy"]
    assert r["bpf_errors"]["skipped_runs"] == 0 and not any(r["bpf_errors"].values()), r["bpf_errors"]
    assert r["events_lost"] == 0
    log = Path(lab[kernel]["run_dir"], "out", f"{name}.jsonl")
    events = [json.loads(line) for line in log.read_text().splitlines()]
    if name != "multi-kprobe":
        return
    spans = []
    for rng in (ev for ev in events if ev["type"] == "range"):
        end = rng["start_pfn"] + rng["nr_pages"]
        (sec,) = [ev for ev in events if ev["type"] == "sections"
                  and rng["start_pfn"] <= ev["runs"][0][0] < end]
        spans.append((sec["ktime"][0], rng["ktime_ns"]))
    spans.sort()
    gaps = [later[0] - earlier[1] for earlier, later in zip(spans, spans[1:])]
    assert len(gaps) == 2 and all(g < 1e9 for g in gaps), spans  # back to back: < 1 s apart
