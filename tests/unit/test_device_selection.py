"""-d/--device and the names ndctl and daxctl use (chardev, namespace), on real recordings."""

import json

import pytest

from tests.conftest import run_cli
from tests.unit.test_exporter import registry_for, samples
from tests.unit.test_replay import doctor, load, log_path
from vmemtrace.errors import VmemtraceError
from vmemtrace.judge.ledger import fold
from vmemtrace.judge.verdict import changed_since, evaluate
from vmemtrace.log import events


def with_namespace(evs):
    (dev,) = [e for e in evs if e["type"] == "device"]
    dev["namespace"] = "namespace0.0"  # what kernel/daxdev.py reads from the nd_dax parent
    return dev


def replay_json(path, *args):
    res = run_cli("replay", "--trust-unsealed", str(path), "--json", *args)
    return res, json.loads(res.stdout)


def test_a_device_is_chosen_by_chardev_or_namespace(tmp_path):
    path, _ = doctor(tmp_path, "6.12", "mem-2M", with_namespace)
    for name in ("dax0.0", "namespace0.0"):
        res, doc = replay_json(path, "-d", name)
        assert res.returncode == 0, res.stderr
        (d,) = doc["devices"]
        assert (d["device"], d["chardev"], d["namespace"]) == ("dax0.0", "dax0.0", "namespace0.0")


def test_a_name_that_matches_nothing_is_an_error_not_an_empty_pass(tmp_path):
    res, doc = replay_json(log_path("6.12", "mem-2M"), "-d", "dax0.0", "-d", "dax9.9")
    assert res.returncode == 2 and doc["verdict"] == "error"
    assert [d["device"] for d in doc["devices"]] == ["dax0.0"]
    assert any("'dax9.9'" in p for p in doc["problems"]), doc["problems"]
    res, doc = replay_json(log_path("6.12", "mem-2M"), "--device", "namespace1.0")
    assert res.returncode == 2 and doc["devices"] == []


def test_recorded_logs_without_a_namespace_still_say_the_chardev():
    doc = evaluate(fold(load("6.1", "mem-1G")))
    (d,) = doc["devices"]
    assert d["chardev"] == d["device"] == "dax0.0" and d["namespace"] is None


def test_namespace_must_be_a_string():
    evs = load("6.12", "mem-1G")
    dev = with_namespace(evs)
    dev["namespace"] = 0
    with pytest.raises(VmemtraceError, match="namespace"):
        events.validate(dev, "line 1")


def test_stats_shows_only_what_changed_in_the_interval():
    evs = load("6.12", "mem-2M")
    cut = next(i for i, e in enumerate(evs) if e["type"] == "device")
    early, full = evaluate(fold(evs[:cut])), evaluate(fold(evs))
    assert changed_since(full, None)["devices"] == full["devices"]  # the first interval
    assert changed_since(full, full)["devices"] == []  # nothing happened
    # The device event named the range (pfn-N became dax0.0): that device changed.
    assert [d["device"] for d in early["devices"]] != [d["device"] for d in full["devices"]]
    assert [d["device"] for d in changed_since(full, early)["devices"]] == ["dax0.0"]
    assert changed_since(full, early)["verdict"] == full["verdict"]


def test_exporter_joins_devices_to_their_namespace():
    evs = load("6.12", "mem-2M")
    dev = with_namespace(evs)
    reg = registry_for(log_path("6.12", "mem-2M"), devices_now=[dev])
    got = samples(reg)
    labels = (("cxl_decoder", ""), ("cxl_memdevs", ""), ("cxl_region", ""), ("device", "dax0.0"),
              ("namespace", "namespace0.0"))
    assert got[("vmemtrace_device_info", labels)] == 1


def dax_tree(root, name, ranges, driver="device_dax", align=2 << 20):
    """A dax device as drivers/dax/bus.c lays it out in sysfs, for a device that is not
    nvdimm-backed (hmem, CXL): resource is ranges[0], size all of them, one mappingN each."""
    real = root / "sys/devices/platform/hmem.0" / name
    real.mkdir(parents=True)
    (real / "resource").write_text(f"{ranges[0][0]:#x}\n")
    (real / "size").write_text(f"{sum(size for _, size in ranges)}\n")
    (real / "align").write_text(f"{align}\n")
    for i, (start, size) in enumerate(ranges):
        m = real / f"mapping{i}"
        m.mkdir()
        (m / "start").write_text(f"{start:#x}\n")
        (m / "end").write_text(f"{start + size - 1:#x}\n")
        (m / "page_offset").write_text("0x0\n")
    if driver:
        drv = root / "sys/bus/dax/drivers" / driver
        drv.mkdir(parents=True, exist_ok=True)
        (real / "driver").symlink_to(drv)
    link = root / "sys/bus/dax/devices" / name
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(real)


GiB = 1 << 30


def test_a_device_of_several_ranges_is_one_event_per_range(tmp_path):
    from vmemtrace.kernel import daxdev

    dax_tree(tmp_path, "dax1.0", [(8 * GiB, GiB), (12 * GiB, 2 * GiB)])
    dax_tree(tmp_path, "dax2.0", [(20 * GiB, GiB)])
    evs = daxdev.inventory(tmp_path)
    assert [(e["name"], e["start_pfn"], e["nr_pages"], e.get("mapping")) for e in evs] == [
        ("dax1.0", (8 * GiB) >> 12, GiB >> 12, 0),
        ("dax1.0", (12 * GiB) >> 12, (2 * GiB) >> 12, 1),
        ("dax2.0", (20 * GiB) >> 12, GiB >> 12, None)]
    assert all(events.validate(e, "sysfs") for e in evs)
    assert {e.get("mappings") for e in evs} == {2, None}


def test_each_range_of_a_device_gets_its_own_name_and_ledger(tmp_path):
    """Real 6.12 recording (one range), its device event turned into the second mapping of a
    two-range device: the range is named for its mapping, and -d finds it by either name."""
    def second_mapping(evs):
        (dev,) = [e for e in evs if e["type"] == "device"]
        dev.update(mapping=1, mappings=2)
        return dev

    path, _ = doctor(tmp_path, "6.12", "mem-2M", second_mapping)
    for name in ("dax0.0", "dax0.0/mapping1"):
        res, doc = replay_json(path, "-d", name)
        assert res.returncode == 0, res.stderr
        (d,) = doc["devices"]
        assert (d["device"], d["chardev"]) == ("dax0.0/mapping1", "dax0.0")


def test_an_unbound_device_has_no_driver_and_is_not_audited(tmp_path):
    from vmemtrace.kernel import daxdev
    from vmemtrace.walk.audit import auditable

    dax_tree(tmp_path, "dax3.0", [(30 * GiB, GiB)], driver=None)
    dax_tree(tmp_path, "dax4.0", [(40 * GiB, GiB)], driver="kmem")
    dax_tree(tmp_path, "dax5.0", [(50 * GiB, GiB)])
    said = []
    kept = auditable(daxdev.inventory(tmp_path), said.append)
    assert [d["name"] for d in kept] == ["dax5.0"]
    assert said == ["dax3.0: skipped, no driver bound, so no vmemmap (daxctl enable-device "
                    "dax3.0 binds device_dax)",
                    "dax4.0: skipped, onlined as System RAM (kmem): not ZONE_DEVICE"]


def cxl_tree(root, base=0x240000000, size=0xC0000000):
    """The CXL part of sysfs as a 7.3.4 lab guest showed it (`--pmem cxl`): the region under its
    root decoder, its endpoint decoder under the endpoint port, whose uport links the memdev,
    and the dax device under the nvdimm bridge's region (readlink -f of each /sys/bus entry)."""
    acpi = root / "sys/devices/platform/ACPI0017:00/root0"
    region = acpi / "decoder0.0/region0"
    endpoint = acpi / "port1/endpoint2"
    memdev = root / "sys/devices/pci0000:0c/0000:0c:00.0/0000:0d:00.0/mem0"
    for d in (region, endpoint / "decoder2.0", memdev):
        d.mkdir(parents=True)
    for name, value in (("resource", f"{base:#x}"), ("size", f"{size:#x}"), ("mode", "pmem"),
                        ("target0", "decoder2.0"), ("interleave_ways", "1")):
        (region / name).write_text(value + "\n")
    (endpoint / "uport").symlink_to(memdev)
    bus = root / "sys/bus/cxl/devices"
    bus.mkdir(parents=True)
    for name, real in (("region0", region), ("decoder0.0", acpi / "decoder0.0"),
                       ("decoder2.0", endpoint / "decoder2.0"), ("mem0", memdev)):
        (bus / name).symlink_to(real)
    return base


def test_a_device_in_a_cxl_region_names_it_as_cxl_list_does(tmp_path):
    from vmemtrace.kernel import daxdev

    base = cxl_tree(tmp_path)
    dax_tree(tmp_path, "dax0.0", [(base + (2 << 20), 3 * GiB - (2 << 20))])
    dax_tree(tmp_path, "dax1.0", [(base + 3 * GiB, GiB)])  # past the region's end: in none
    inside, outside = daxdev.inventory(tmp_path)
    assert {k: inside[k] for k in events.CXL} == {
        "cxl_region": "region0", "cxl_decoder": "decoder0.0", "cxl_memdevs": ["mem0"],
        "cxl_mode": "pmem"}
    assert not set(events.CXL) & set(outside)
    assert events.validate(inside, "sysfs")
    # through the ledger to the verify document, the exporter and trace's line
    from vmemtrace.judge.device_ledger import DeviceLedger
    from vmemtrace.output.metrics import cxl_labels
    from vmemtrace.output.render import event_line

    cxl = DeviceLedger(0, 0, device=inside).cxl
    assert cxl == {"region": "region0", "decoder": "decoder0.0", "memdevs": ["mem0"],
                   "mode": "pmem"}
    assert cxl_labels(cxl) == ["region0", "decoder0.0", "mem0"] and cxl_labels(None) == [""] * 3
    assert event_line(inside, "0").endswith("in CXL region0 (pmem, decoder0.0, mem0)")


def test_a_cxl_field_of_the_wrong_type_is_refused():
    dev = {"type": "device", "name": "dax0.0", "start_pfn": 1, "nr_pages": 1, "align": 4096,
           "cxl_memdevs": "mem0"}
    with pytest.raises(VmemtraceError, match="cxl_memdevs"):
        events.validate(dev, "log")
