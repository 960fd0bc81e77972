"""End to end on CXL memory (`vmemtrace lab --pmem cxl`): qemu's cxl-type3 device behind a CXL
host bridge, a persistent region made by `cxl create-region`, namespaces on it as on NVDIMMs.
The devices are judged as any other, and each names the CXL region, root decoder and memdev it
lies in as `cxl list` does in the same guest. Then a window 256 MiB past a 1 GiB boundary, where
a 1 GiB device's compound pages cannot be naturally aligned: what the kernel does with it, and
what vmemtrace says.
"""

import json
import re

import pytest

from tests.conftest import run_cli
from vmemtrace.judge import geometry
from vmemtrace.lab.image import GUEST_OUT, GUEST_SRC

pytestmark = pytest.mark.lab

CASES = ("mem-2M", "mem-1G", "dev-2M")
PAGE, GiB, MiB = 4096, 1 << 30, 1 << 20
WINDOW = 9 * GiB  # the lab's default window: 1 GiB aligned
OFF_WINDOW = 9 * GiB + 256 * MiB
# 6.12 maps pfns, 7.3 maps folios: one kernel of each kind (about 1.5 min a boot).
FAULT_KERNELS = ("6.12", "7.3")


@pytest.fixture(scope="module")
def lab():
    res = run_cli("lab", "--json", "--pmem", "cxl", "--case", ",".join(CASES), "--kernel", "6.12")
    assert res.returncode == 0, res.stderr[-3000:]
    (doc,) = [json.loads(line) for line in res.stdout.splitlines()]
    assert doc["pmem"] == "cxl" and doc["kernel"].startswith("6.12")
    return doc


def entry(doc, name):
    return next(c for c in doc["cases"] if c["case"] == name)


@pytest.mark.parametrize("name", CASES)
def test_each_case_on_a_cxl_region_passes_with_the_kernels_numbers(lab, name):
    e = entry(lab, name)
    assert e["result"]["verdict"] == "pass" and e["audit"]["verdict"] == "pass", e
    (ns,) = e["namespaces"]
    assert re.fullmatch(r"[0-9a-f-]{36}", ns["uuid"])  # label-based: the device's label area
    (d,) = e["result"]["devices"]
    assert d["start_pfn"] * PAGE == WINDOW and d["nr_pages"] * PAGE == 3 * GiB
    s = geometry.RangeShape(d["start_pfn"], d["nr_pages"], d["align"] // PAGE, altmap=d["altmap"])
    want = geometry.vmemmap_pages_expected(s) if d["expected_optimized"] else \
        geometry.vmemmap_pages_naive(s)
    assert d["vmemmap_pages"]["observed"] == want
    assert {"mem-2M": 3072, "mem-1G": 6, "dev-2M": 12288}[name] == want
    checks = {c["name"]: c["status"] for c in d["checks"]}
    assert checks["cross-check"] == "pass" and "compound-alignment" not in checks


def test_each_device_names_the_cxl_region_cxl_list_shows(lab):
    """The second witness is cxl(1) in the same guest: the region holding the device's range,
    its root decoder and the memdev behind its endpoint decoder."""
    listing = {k: v for part in lab["cxl"] for k, v in part.items()}
    (memdev,) = listing["memdevs"]
    (root,) = listing["root decoders"]
    (endpoint,) = listing["endpoint decoders"]
    (region,) = root["regions:decoder0.0"] if "regions:decoder0.0" in root else listing["regions"]
    assert int(str(region["resource"]), 0) == WINDOW
    want = {"region": endpoint["region"], "decoder": root["decoder"],
            "memdevs": [memdev["memdev"]], "mode": "pmem"}
    for name in CASES:
        e = entry(lab, name)
        for doc in (e["result"], e["audit"]):
            (d,) = doc["devices"]
            assert d["cxl"] == want, (name, d["cxl"])


@pytest.fixture(scope="module")
def off_window():
    args = ["lab", "--pmem", "cxl", "--pmem-start", f"{OFF_WINDOW >> 20}M", "--exec",
            f"python3 {GUEST_SRC}/tests/lab/guest_cxl_fault.py {GUEST_OUT}"]
    for k in FAULT_KERNELS:
        args += ["--kernel", k]
    res = run_cli(*args)
    assert res.returncode == 0, res.stderr[-3000:]
    docs = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    assert [d["kernel"][:len(k)] for d, k in zip(docs, FAULT_KERNELS)] == list(FAULT_KERNELS)
    return dict(zip(FAULT_KERNELS, docs))


@pytest.mark.parametrize("kernel", FAULT_KERNELS)
def test_a_1g_device_off_a_1g_boundary_fails_on_its_compound_pages(off_window, kernel):
    """The region starts 256 MiB past a 1 GiB boundary; ndctl puts the device's data on the next
    one, but the pgmap starts at the region and so do the compound pages. The optimisation
    itself holds (tail-reuse, init-skip and the walk agree); the compound pages do not sit on
    the blocks the device maps, and vmemtrace fails the device for it."""
    run = off_window[kernel]
    (region,) = run["cxl_regions"]
    assert int(str(region["resource"]), 0) == OFF_WINDOW
    for doc, code in ((run["verify"]["doc"], run["verify"]["exit"]),
                      (run["audit"]["doc"], run["audit"]["exit"])):
        assert doc["verdict"] == "fail" and code == 1, run
        (d,) = doc["devices"]
        assert d["start_pfn"] * PAGE == OFF_WINDOW and d["cxl"]["region"] == "region0"
        checks = {c["name"]: c for c in d["checks"]}
        assert checks["compound-alignment"]["status"] == "fail"
        assert "pfn 2424832 (9472 MiB), 256 MiB past a 1 GiB boundary" in \
            checks["compound-alignment"]["detail"]
        assert checks["tail-reuse"]["status"] == "pass"
    checks = {c["name"]: c["status"] for c in run["verify"]["doc"]["devices"][0]["checks"]}
    assert checks["init-skip"] == checks["cross-check"] == "pass"


def test_the_kernel_that_maps_folios_refuses_the_fault(off_window):
    """Measured: 6.12 maps the 1 GiB block by pfn and the write lands; 7.3 maps it by its folio,
    which is not that block, warns in vmf_insert_folio_pud() and the program gets SIGBUS."""
    assert off_window["6.12"]["fault"] == "exit 0"
    assert off_window["7.3"]["fault"] == "SIGBUS"
    assert any("vmf_insert_folio_pud" in w for w in off_window["7.3"]["warnings"])
