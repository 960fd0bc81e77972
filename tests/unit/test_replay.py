"""Ledger and verdict on event logs recorded in lab guests (real kernel output), through the
real `vmemtrace replay` command; and the same logs doctored to prove each check can fail."""

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.conftest import FIXTURES, SERIES, run_cli
from vmemtrace.judge.ledger import fold
from vmemtrace.judge.verdict import evaluate
from vmemtrace.log import events, logfile

LOGS = FIXTURES / "events"


def log_path(series: str, case: str) -> Path:
    found = [p for p in LOGS.iterdir() if p.name.startswith(series + ".") or p.name.startswith(series + "-")]
    assert len(found) == 1, found
    return found[0] / f"{case}.jsonl"


def load(series, case):
    with open(log_path(series, case)) as fh:
        return logfile.read(fh, str(log_path(series, case)))


def replay(path, *args):
    res = run_cli("replay", "--trust-unsealed", str(path), "--json", *args)
    return res, (json.loads(res.stdout) if res.stdout.strip() else None)


def checks(device):
    return {c["name"]: c for c in device["checks"]}


@pytest.mark.parametrize("case,vm_obs,init_obs", [("mem-2M", 3072, 196608), ("mem-1G", 6, 384)])
def test_6_12_optimised_cases(case, vm_obs, init_obs):
    res, doc = replay(log_path("6.12", case))
    assert res.returncode == 0, res.stderr
    (dev,) = doc["devices"]
    assert dev["device"] == "dax0.0" and dev["expected_optimized"] and dev["optimized"]
    assert dev["vmemmap_pages"] == {"naive": 12288, "expected": vm_obs, "observed": vm_obs}
    assert dev["struct_pages_initialized"]["observed"] == init_obs
    assert {n: c["status"] for n, c in checks(dev).items()} == {
        "feature-present": "pass", "eligibility": "pass", "tail-reuse": "pass",
        "init-skip": "pass", "accounting": "pass", "no-false-optimisation": "skip",
        "cross-check": "pass"}


@pytest.mark.parametrize("case", ["dev-2M", "mem-4K"])
def test_6_12_unoptimised_cases(case):
    res, doc = replay(log_path("6.12", case))
    assert res.returncode == 0, res.stderr
    (dev,) = doc["devices"]
    assert dev["expected_optimized"] is False and dev["optimized"] is False
    assert dev["vmemmap_pages"]["observed"] == 12288
    assert checks(dev)["no-false-optimisation"]["status"] == "pass"
    assert dev["altmap"] is (case == "dev-2M")


def test_6_1_reuse_is_seen_by_the_walk():
    res, doc = replay(log_path("6.1", "mem-2M"))
    assert res.returncode == 0, res.stderr
    (dev,) = doc["devices"]
    c = checks(dev)
    assert c["tail-reuse"]["status"] == "pass" and c["tail-reuse"]["detail"].endswith("(page-table walk)")
    assert c["init-skip"]["status"] == "pass"
    assert dev["struct_pages_initialized"]["observed"] == 196608
    assert dev["vmemmap_pages"]["observed"] == 3072
    assert doc["strategy"]["vmemmap_populate_address"] == "walk"


def without_walk(evs):
    """What a host without /proc/kcore would have recorded: the walk taken out."""
    evs = [e for e in evs if e["type"] != "walk" and e.get("source") != "walk"]
    for name, how in evs[0]["strategy"].items():
        if how == "walk":
            evs[0]["strategy"][name] = "unavailable"
    evs[0]["walk"], evs[0]["walk_blocker"] = None, "no /proc/kcore (doctored)"
    return evs


def write_log(tmp_path, evs, name="doctored.jsonl"):
    path = tmp_path / name
    with open(path, "w") as fh:
        logfile.write(evs, fh)
    return path


def test_6_1_without_the_walk_is_incomplete_never_passed(tmp_path):
    """Reuse and allocation unseen: the verdict is not earned, exit 2, naming what was not
    judged; the user may waive those checks by name."""
    path = write_log(tmp_path, without_walk(load("6.1", "mem-2M")))
    res, doc = replay(path)
    assert res.returncode == 2 and doc["verdict"] == "incomplete", res.stderr
    (dev,) = doc["devices"]
    c = checks(dev)
    assert c["tail-reuse"]["status"] == "skip"
    assert "the page-table walk could not run: no /proc/kcore" in c["tail-reuse"]["detail"]
    assert dev["unjudged"] == ["tail-reuse", "accounting"]
    assert dev["vmemmap_pages"]["observed"] is None
    assert "tail-reuse not judged" in res.stderr and res.stderr.count("\n") == 1
    res, doc = replay(path, "--allow-skip", "tail-reuse", "--allow-skip", "accounting")
    assert res.returncode == 0 and doc["verdict"] == "pass" and doc["waived"] == [
        "tail-reuse", "accounting"]


def test_doctored_walk_fails_tail_reuse_on_a_notrace_kernel(tmp_path):
    def break_one(evs):
        c = [e for e in evs if e["type"] == "compound" and e["source"] == "walk"][99]
        c["fresh"], c["reused"], c["on_tail"] = 3, 5, 5
        w = next(e for e in evs if e["type"] == "walk")  # its walk as it would then count
        w["distinct"], w["reused"] = w["distinct"] + 1, w["reused"] - 1
        return c

    path, c = doctor(tmp_path, "6.1", "mem-2M", break_one)
    res, doc = replay(path)
    assert res.returncode == 1
    tail = checks(doc["devices"][0])["tail-reuse"]
    assert tail["status"] == "fail" and f"pfn {c['head_pfn']}" in tail["detail"]
    assert tail["detail"].endswith("(page-table walk)")


@pytest.mark.parametrize("case", ["mem-2M", "mem-1G", "dev-2M", "mem-4K"])
def test_6_12_cross_check_passes_and_catches_a_different_tail_page(tmp_path, case):
    res, doc = replay(log_path("6.12", case))
    assert checks(doc["devices"][0])["cross-check"]["status"] == "pass"

    def move_tail(evs):
        walked = [e for e in evs if e["type"] == "compound" and e.get("source") == "walk"]
        if walked:  # the walk found the first tail page somewhere else
            walked[-1]["tail_pfn"] += 1
            return walked[-1]
        w = next(e for e in evs if e["type"] == "walk")  # no compound layout: count differs
        w["distinct"] -= 1  # one page mapped twice
        w["reused"] += 1
        return w

    path, changed = doctor(tmp_path, "6.12", case, move_tail)
    res, doc = replay(path)
    assert res.returncode == 1
    cross = checks(doc["devices"][0])["cross-check"]
    assert cross["status"] == "fail"
    if changed["type"] == "compound":
        assert cross["detail"].startswith(f"1 compound page differs between probes and walk: "
                                          f"pfn {changed['head_pfn']} (laid out differently)")
    else:
        assert f"the walk finds {changed['distinct']} distinct pages" in cross["detail"]


@pytest.mark.parametrize("series", SERIES)
@pytest.mark.parametrize("case", ["mem-2M", "mem-1G", "dev-2M", "mem-4K"])
def test_audit_logs_replay_to_the_numbers_verify_saw(series, case):
    res, audit = replay(log_path(series, case).with_suffix(".audit.jsonl"))
    assert res.returncode == 0, res.stderr
    _, live = replay(log_path(series, case))
    (a,), (v,) = audit["devices"], live["devices"]
    assert a["vmemmap_pages"] == v["vmemmap_pages"]
    assert (a["start_pfn"], a["nr_pages"], a["altmap"]) == (v["start_pfn"], v["nr_pages"], v["altmap"])
    assert checks(a)["init-skip"]["status"] == "skip"
    assert "only visible while memmap_init_zone_device runs" in checks(a)["init-skip"]["detail"] \
        or not a["expected_optimized"]


def test_5_10_feature_absent_auto_passes_optimized_fails():
    path = log_path("5.10", "mem-2M")
    res, doc = replay(path)
    assert res.returncode == 0, res.stderr
    (dev,) = doc["devices"]
    assert checks(dev)["feature-present"]["status"] == "skip"
    assert "feature absent, nothing optimised" in checks(dev)["feature-present"]["detail"]
    res, doc = replay(path, "--expect", "optimized")
    assert res.returncode == 1
    assert checks(doc["devices"][0])["feature-present"]["status"] == "fail"
    assert "feature-present" in res.stderr and res.stderr.count("\n") == 1


def test_5_10_kernel_log_witness_agrees_and_can_disagree(tmp_path):
    res, doc = replay(log_path("5.10", "dev-2M"))
    (dev,) = doc["devices"]
    assert dev["kernel_log"]["pages"] == dev["struct_pages_initialized"]["observed"] == 773632
    assert "the kernel's log" in checks(dev)["no-false-optimisation"]["detail"]

    def claim_fewer(evs):
        e = next(e for e in evs if e["type"] == "kmsg")
        e["pages"] = 196608
        return e

    path, _ = doctor(tmp_path, "5.10", "dev-2M", claim_fewer)
    res, doc = replay(path)
    assert res.returncode == 1
    assert "not the 773632 pfns expected" in checks(doc["devices"][0])["no-false-optimisation"]["detail"]


def test_expect_unoptimized_on_an_optimised_device_fails():
    res, doc = replay(log_path("6.12", "mem-2M"), "--expect", "unoptimized")
    assert res.returncode == 1
    assert checks(doc["devices"][0])["eligibility"]["status"] == "fail"


def test_expect_optimized_on_altmap_fails_eligibility():
    res, doc = replay(log_path("6.12", "dev-2M"), "--expect", "optimized")
    assert res.returncode == 1
    assert "altmap" in checks(doc["devices"][0])["eligibility"]["detail"]


def doctor(tmp_path, series, case, change):
    """A copy of a real log with one event changed by `change` (returns the changed event)."""
    evs = load(series, case)
    changed = change(evs)
    out = tmp_path / f"doctored-{case}.jsonl"
    with open(out, "w") as fh:
        logfile.write(evs, fh)
    return out, changed


def test_doctored_tail_not_reused_fails_naming_the_page(tmp_path):
    def break_one(evs):
        c = [e for e in evs if e["type"] == "compound" and "source" not in e][700]
        # One tail vmemmap page got its own page instead of reusing the first tail page.
        c["fresh"] += 1
        c["reused"] -= 1
        c["on_tail"] -= 1
        return c

    path, c = doctor(tmp_path, "6.12", "mem-2M", break_one)
    res, doc = replay(path)
    assert res.returncode == 1
    tail = checks(doc["devices"][0])["tail-reuse"]
    assert tail["status"] == "fail"
    assert f"compound page at pfn {c['head_pfn']}" in tail["detail"] and "3 freshly allocated" in tail["detail"]
    assert "tail-reuse" in res.stderr and str(c["head_pfn"]) in res.stderr


def test_doctored_reuse_onto_a_foreign_page_fails(tmp_path):
    def misplace(evs):
        c = [e for e in evs if e["type"] == "compound" and "source" not in e][-1]
        c["on_tail"] -= 2
        return c

    path, c = doctor(tmp_path, "6.12", "mem-1G", misplace)
    res, doc = replay(path)
    assert res.returncode == 1
    assert "4092 of 4094 tail vmemmap pages" in checks(doc["devices"][0])["tail-reuse"]["detail"]


def test_doctored_init_count_fails_init_skip(tmp_path):
    def init_all(evs):
        r = next(e for e in evs if e["type"] == "range")
        r["mic_pages"], r["mic_min"], r["mic_max"] = 786432, 512, 512
        return r

    path, _ = doctor(tmp_path, "6.12", "mem-2M", init_all)
    res, doc = replay(path)
    assert res.returncode == 1
    assert checks(doc["devices"][0])["init-skip"]["status"] == "fail"


def test_doctored_allocation_on_altmap_is_caught_by_the_account_and_the_walk(tmp_path):
    def allocate_less(evs):
        s = next(e for e in evs if e["type"] == "section")
        s["direct_bytes"] -= 4096
        return s

    path, _ = doctor(tmp_path, "6.12", "dev-2M", allocate_less)
    res, doc = replay(path)
    assert res.returncode == 1
    (dev,) = doc["devices"]
    assert "12287 of the range's 12288 vmemmap pages" in dev["probe_account"]["alloc"]
    assert dev["vmemmap_pages"]["observed"] == 12288  # the page tables answered
    cross = checks(dev)["cross-check"]
    assert cross["status"] == "fail" and "probes saw 12287 vmemmap pages allocated" in cross["detail"]


def test_doctored_reuse_on_altmap_fails_no_false_optimisation(tmp_path):
    def reuse(evs):
        w = next(e for e in evs if e["type"] == "walk")
        w["distinct"], w["reused"] = w["distinct"] - 5, 5  # five vmemmap pages on one page
        return w

    path, _ = doctor(tmp_path, "6.1", "dev-2M", reuse)
    res, doc = replay(path)
    assert res.returncode == 1
    c = checks(doc["devices"][0])["no-false-optimisation"]
    assert c["status"] == "fail" and "5 vmemmap PTEs reused" in c["detail"]


def test_lost_events_make_it_unverifiable(tmp_path):
    def lose(evs):
        e = next(e for e in evs if e["type"] == "lost")
        e["count"] = 3
        return e

    path, _ = doctor(tmp_path, "6.12", "mem-2M", lose)
    res, doc = replay(path)
    assert res.returncode == 2 and doc["verdict"] == "error"
    assert "3 events lost" in res.stderr


def test_junit(tmp_path):
    out = tmp_path / "junit.xml"
    res = run_cli("replay", "--trust-unsealed", str(log_path("6.12", "dev-2M")), "--junit", str(out))
    assert res.returncode == 0
    suite = ET.parse(out).getroot()
    assert suite.get("failures") == "0" and int(suite.get("tests")) == 7  # with cross-check
    assert int(suite.get("skipped")) == 2
    names = {tc.get("name") for tc in suite.iter("testcase")}
    assert {"tail-reuse", "init-skip", "no-false-optimisation"} <= names


@pytest.mark.parametrize("mangle,message", [
    (lambda text: text[:-40], "truncated line"),
    (lambda text: text.replace("\n", "\n{oops\n", 2), "not JSON"),
    (lambda text: text.replace('"schema": 2', '"schema": 99', 1), "schema 99"),
    (lambda text: "\n".join(text.splitlines()[1:]) + "\n", "first event must be the header"),
    (lambda text: text.replace('"type": "range"', '"type": "rnage"', 1), "unknown event type 'rnage'"),
    (lambda text: "", "empty event log"),
])
def test_corrupt_logs_get_one_line_naming_the_line(tmp_path, mangle, message):
    text = log_path("6.12", "mem-2M").read_text()
    bad = tmp_path / "bad.jsonl"
    bad.write_text(mangle(text))
    res = run_cli("replay", "--trust-unsealed", str(bad))
    assert res.returncode == 2
    assert message in res.stderr and res.stderr.count("\n") == 1 and "Traceback" not in res.stderr
    if message in ("not JSON", "unknown event type 'rnage'", "truncated line"):
        assert f"{bad}:" in res.stderr


def test_missing_and_binary_files(tmp_path):
    res = run_cli("replay", "--trust-unsealed", str(tmp_path / "nope.jsonl"))
    assert res.returncode == 2 and "No such file" in res.stderr
    binary = tmp_path / "bin.jsonl"
    binary.write_bytes(b"\xff\xfe\x00garbage\n")
    res = run_cli("replay", "--trust-unsealed", str(binary))
    assert res.returncode == 2 and res.stderr.count("\n") == 1


def test_ledger_fold_matches_sections():
    evs = load("6.12", "mem-2M")
    ledger = fold(evs)
    (d,) = ledger.devices
    assert len(d.sections) == 24 and len(d.compounds) == len(d.walk_compounds) == 1536
    assert d.totals()["fresh"] == 3072 and d.totals()["reused"] == 9216
    assert evaluate(ledger)["verdict"] == "pass"


@pytest.mark.parametrize("case,vm_obs,init_obs,optimised", [
    ("mem-2M", 3072, 196608, True), ("mem-1G", 6, 384, True),
    ("dev-2M", 12288, 773632, False), ("mem-4K", 12288, 786432, False)])
def test_7_3_every_case_by_its_probes(case, vm_obs, init_obs, optimised):
    """Debian 7.3: vmemmap_alloc_block_buf inlined (0 hits), memmap_init_compound and
    __init_zone_device_page only as clones: allocations by vmemmap_alloc_block and
    altmap_alloc_block_buf, struct pages initialised by counting the clone's hits."""
    log = load("7.3", case)
    hits = next(e for e in log if e["type"] == "hits")["hits"]
    assert hits["vmemmap_alloc_block_buf"] == 0 and hits["__init_zone_device_page"] == init_obs
    res, doc = replay(log_path("7.3", case))
    assert res.returncode == 0, res.stderr
    (dev,) = doc["devices"]
    assert dev["probe_account"] == {"populate": None, "alloc": None, "init": None}
    assert dev["vmemmap_pages"]["observed"] == vm_obs and dev["optimized"] is optimised
    assert dev["struct_pages_initialized"]["observed"] == init_obs
    assert checks(dev)["cross-check"]["status"] == "pass"
    assert doc["strategy"]["memmap_init_compound"] == "count"


def blind_allocators(evs):
    """The sections as a kernel whose allocators all went unseen would give them."""
    for e in evs:
        if e["type"] == "section":
            e["existing"] += e["fresh"]
            e["fresh"] = e["allocs"] = e["alloc_calls"] = e["direct_bytes"] = e["pt_pages"] = 0
    return evs


def test_blind_allocators_are_never_read_as_zero(tmp_path):
    """7.3 mem-2M with every allocation unseen: the account says blind and the page tables
    answer; without the walk, nothing is claimed: incomplete, optimised unknown."""
    evs = blind_allocators(load("7.3", "mem-2M"))
    res, doc = replay(write_log(tmp_path, evs))
    (dev,) = doc["devices"]
    assert "blind" in dev["probe_account"]["alloc"]
    assert dev["vmemmap_pages"]["observed"] == 3072 and checks(dev)["tail-reuse"]["status"] == "pass"
    assert checks(dev)["cross-check"]["status"] == "fail"  # probes 0, walk 3072: said, not hidden
    res, doc = replay(write_log(tmp_path, without_walk(evs), "nowalk.jsonl"))
    assert res.returncode == 2 and doc["verdict"] == "incomplete", res.stderr
    (dev,) = doc["devices"]
    assert dev["vmemmap_pages"]["observed"] is None
    assert dev["unjudged"] == ["tail-reuse", "accounting"]
    assert "blind" in checks(dev)["accounting"]["detail"]


def test_blind_init_probe_leaves_init_skip_unjudged_and_optimised_unknown(tmp_path):
    evs = without_walk(blind_allocators(load("7.3", "mem-2M")))
    r = next(e for e in evs if e["type"] == "range")
    r["mic_calls"] = r["izdp_calls"] = 0
    res, doc = replay(write_log(tmp_path, evs))
    (dev,) = doc["devices"]
    assert res.returncode == 2 and dev["optimized"] is None
    assert dev["struct_pages_initialized"]["observed"] is None
    assert "blind" in dev["probe_account"]["init"] and "init-skip" in dev["unjudged"]


def test_verify_and_record_want_dashes_and_a_writable_log(tmp_path):
    """Refused before anything runs, one line each, and no file left behind."""
    res = run_cli("verify", "ndctl", "list", "--json")
    assert res.returncode == 2 and "put -- before the command to run" in res.stderr
    res = run_cli("verify", "--record", str(tmp_path / "no/such/x.jsonl"), "--", "true")
    assert res.returncode == 2 and res.stderr.strip().endswith(
        f"cannot write {tmp_path}/no/such/x.jsonl: No such file or directory")
    out = tmp_path / "x.jsonl"
    res = run_cli("record", "-o", str(out), "--", "true")  # this host cannot trace
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and not out.exists()


def test_logs_are_written_0600(tmp_path):
    from vmemtrace.log.logfile import LogFile

    log = LogFile(str(tmp_path / "x.jsonl"))
    log.write({"type": "header"})
    log.seal()
    assert (tmp_path / "x.jsonl").stat().st_mode & 0o777 == 0o600


def _mangle_event(kind, key, value):
    def change(evs):
        e = next(e for e in evs if e["type"] == kind)
        e[key] = value
        return evs
    return change


@pytest.mark.parametrize("change,message", [
    (_mangle_event("section", "ptes", "512"), "section event's ptes is not a non-negative integer"),
    (_mangle_event("section", "ptes", None), "section event's ptes is not"),
    (_mangle_event("section", "ptes", [512]), "section event's ptes is not"),
    (_mangle_event("section", "ptes", -1), "section event's ptes is not"),
    (_mangle_event("section", "ptes", 1.5), "section event's ptes is not"),
    (_mangle_event("section", "altmap", 0), "section event's altmap is not a boolean"),
    (_mangle_event("range", "pfns_per_compound", 0), "pfns_per_compound 0 is not a power of two"),
    (_mangle_event("range", "page_size", 0), "page_size 0 is not 4, 16 or 64 KiB"),
    (_mangle_event("range", "struct_page_size", 0), "struct_page_size 0 is not"),
    (_mangle_event("range", "nr_pages", 10 ** 13), "nr_pages 10000000000000 is beyond 2^40 pages"),
    (_mangle_event("lost", "errors", []), "lost event's errors is not an object of counts"),
    (lambda evs: evs + [evs[0]], "a second header"),
    (lambda evs: [e for e in evs if e["type"] not in ("lost", "hits", "vmstat", "device", "command")]
     or evs, "truncated: the closing events (lost, hits) are missing"),
])
def test_malformed_logs_are_one_line_and_exit_2(tmp_path, change, message):
    """Each of these used to trace back (exit 1, "the kernel failed"), loop, or pass."""
    path = write_log(tmp_path, change(load("6.12", "mem-2M")))
    res = run_cli("replay", "--trust-unsealed", str(path))
    assert res.returncode == 2, res.stderr
    assert message in res.stderr and res.stderr.count("\n") == 1 and "Traceback" not in res.stderr


@pytest.mark.parametrize("text,message", [
    ("[" * (events.MAX_LINE + 1) + "\n", "a line longer than"),
    ('{"type": "range", "nr_pages": ' + "9" * 5000 + "}\n", "not JSON"),
    ('{"type": "header", "schema": 2, "kernel": "x", "version": [], "feature": {}}\n', "lacks strategy"),
])
def test_hostile_lines(tmp_path, text, message):
    path = tmp_path / "hostile.jsonl"
    path.write_text(text)
    res = run_cli("replay", "--trust-unsealed", str(path), timeout=60)
    assert res.returncode == 2 and message in res.stderr and "Traceback" not in res.stderr, res.stderr


def test_replay_of_dev_zero_stops_at_once():
    res = run_cli("replay", "--trust-unsealed", "/dev/zero", timeout=60)
    assert res.returncode == 2 and "not a regular file" in res.stderr


@pytest.mark.parametrize("number", ["Infinity", "NaN", "1e13", "786432.0"])
def test_non_integer_numbers_are_refused(tmp_path, number):
    """Infinity used to loop for ever, 1e13 effectively so; NaN was judged "fail"."""
    text = log_path("6.12", "mem-1G").read_text()
    line = next(l for l in text.splitlines() if '"type": "range"' in l)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(text.replace(line, line.replace('"nr_pages": 786432', f'"nr_pages": {number}')))
    res = run_cli("replay", "--trust-unsealed", str(bad), timeout=60)
    assert res.returncode == 2 and "range event's nr_pages is not a non-negative integer" in res.stderr


def _walked(evs):
    return [e for e in evs if e["type"] == "compound" and e.get("source") == "walk"]


def _probed(evs):
    return [e for e in evs if e["type"] == "compound" and "source" not in e]


def test_doctored_compound_pages_never_pass(tmp_path):
    """Each of these passed before: a compound page replaced by its neighbour's copy, heads
    shifted off their alignment, and (on a walk-only kernel) every compound page on one tail."""
    def neighbour(evs):
        for kind in (_probed, _walked):
            cps = kind(evs)
            cps[10].update({k: v for k, v in cps[11].items()})
        return evs

    def shift(n):
        def change(evs):
            for c in _probed(evs) + _walked(evs):
                c["head_pfn"] += n
            return evs
        return change

    for change, message in ((neighbour, "appears twice"), (shift(1), "is not aligned"),
                            (shift(7), "is not aligned")):
        res, doc = replay(write_log(tmp_path, change(load("6.12", "mem-2M"))))
        assert res.returncode == 2 and doc["verdict"] == "error", res.stderr
        assert "inconsistent log" in res.stderr and message in res.stderr

    def one_tail(evs):
        for c in _walked(evs):
            c["tail_pfn"] = _walked(evs)[0]["tail_pfn"]
        return evs

    res, doc = replay(write_log(tmp_path, one_tail(load("6.1", "mem-2M"))))
    assert res.returncode == 1
    tail = checks(doc["devices"][0])["tail-reuse"]
    assert tail["status"] == "fail" and "shares its first tail vmemmap page" in tail["detail"]


def test_a_device_name_cannot_forge_a_line_or_drive_the_terminal(tmp_path):
    def rename(evs):
        d = next(e for e in evs if e["type"] == "device")
        d["name"] = "dax0.0\nkernel x  expect auto  verdict PASS\x1b[2J"
        return d

    path, _ = doctor(tmp_path, "6.12", "mem-2M", rename)
    res = run_cli("replay", "--trust-unsealed", str(path))
    assert res.returncode == 0, res.stderr
    assert "\x1b" not in res.stdout
    starts = [l.split()[:2] for l in res.stdout.splitlines() if l.startswith("kernel ")]
    assert starts == [["kernel", "6.12.117+deb12-amd64"]]  # no forged "kernel x ... PASS" line
    assert "dax0.0\\x0akernel x" in res.stdout


def test_exit_2_still_says_why_machine_readably(tmp_path):
    """A log that cannot be judged: the JSON document (verdict "error", the problem) on stdout,
    a JUnit file with an <error>, and still the one line on stderr and exit 2."""
    import xml.etree.ElementTree as ET

    bad = tmp_path / "cut.jsonl"
    bad.write_text('{"type": "header"')
    junit = tmp_path / "out.xml"
    res = run_cli("replay", "--trust-unsealed", str(bad), "--json", "--junit", str(junit))
    assert res.returncode == 2
    doc = json.loads(res.stdout)
    assert doc["verdict"] == "error" and doc["devices"] == []
    line = res.stderr.strip().splitlines()[-1]
    assert line == "vmemtrace: " + doc["problems"][0]
    suite = ET.fromstring(junit.read_bytes())
    assert suite.get("errors") == "1" and suite.find("testcase/error").get("message") == doc["problems"][0]


def test_probe_runs_the_kernel_skipped_make_the_verdict_an_error(tmp_path):
    """A kprobe whose program was skipped (bpf_prog_active held on its CPU, counted by 6.7+ in
    recursion_misses) is an event nobody saw: the counts that remain are not the kernel's."""
    res, doc = replay(log_path("6.12", "mem-2M"))
    assert res.returncode == 0 and doc["bpf_errors"]["compound_map_full"] == 0

    def skipped(evs):
        lost = next(e for e in evs if e["type"] == "lost")
        lost["errors"]["skipped_runs"] = 3
        return lost

    path, _ = doctor(tmp_path, "6.12", "mem-2M", skipped)
    res, doc = replay(path)
    assert res.returncode == 2 and doc["verdict"] == "error"
    assert "BPF-side errors: skipped_runs=3" in " ".join(doc["problems"])


NFIT_MULTI = LOGS / "nfit" / "5.10.0-46-amd64" / "multi.jsonl"


def test_5_10_multi_device_log_pairs_each_kernel_log_line_with_its_own_call(tmp_path):
    """The lab's multi case on NFIT NVDIMMs (32 GiB each): three namespaces from concurrent
    ndctl commands, three memmap_init_zone_device lines in the kernel's log, naming no range.
    Their calls did not overlap in time, so each line goes to the call that ended in its turn,
    and agrees with that range's own count (the 1 GiB-aligned one, 8388608 pfns, ended first
    though it is logged last among the ranges)."""
    res, doc = replay(NFIT_MULTI)
    assert res.returncode == 0 and doc["verdict"] == "pass", doc
    assert len(doc["devices"]) == 3
    for dev in doc["devices"]:
        assert dev["kernel_log"]["pages"] == dev["struct_pages_initialized"]["observed"], dev["device"]
    assert sorted(d["kernel_log"]["pages"] for d in doc["devices"]) == [4128256, 4194304, 8388608]

    # Doctored: the first two calls to end made to overlap in time, as on two CPUs at once.
    evs = [json.loads(line) for line in NFIT_MULTI.read_text().splitlines()]
    ranges = sorted((e for e in evs if e["type"] == "range"), key=lambda e: e["ktime_ns"])
    ranges[1]["duration_ns"] = ranges[1]["ktime_ns"] - ranges[0]["ktime_ns"] + 1
    path = write_log(tmp_path, evs)
    res, doc = replay(path)
    assert res.returncode == 0 and doc["verdict"] == "pass"
    logged = {d["start_pfn"]: d for d in doc["devices"]}
    # which of the two lines is whose is unknown: neither gets one; the third still does
    assert [logged[r["start_pfn"]]["kernel_log"] for r in ranges[:2]] == [None, None]
    third = logged[ranges[2]["start_pfn"]]
    assert third["kernel_log"]["pages"] == third["struct_pages_initialized"]["observed"]
