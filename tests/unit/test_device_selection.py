"""-d/--device and the names ndctl and daxctl use (chardev, namespace), on real recordings."""

import json

import pytest

from tests.conftest import run_cli
from tests.unit.test_exporter import registry_for, samples
from tests.unit.test_replay import doctor, load, log_path
from vmemtrace import events
from vmemtrace.errors import VmemtraceError
from vmemtrace.ledger import fold
from vmemtrace.verdict import changed_since, evaluate


def with_namespace(evs):
    (dev,) = [e for e in evs if e["type"] == "device"]
    dev["namespace"] = "namespace0.0"  # what kernel/daxdev.py reads from the nd_dax parent
    return dev


def replay_json(path, *args):
    res = run_cli("replay", str(path), "--json", *args)
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
    assert got[("vmemtrace_device_info", (("device", "dax0.0"), ("namespace", "namespace0.0")))] == 1
